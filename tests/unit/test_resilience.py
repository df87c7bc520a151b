"""An outage is retried, never a reason to stop; data refusals and bugs are not retried.

Invariants (issue 9, cases 4 and 5): every error a database or the broker raises while
it is unavailable (asyncpg's connection/interface/internal-client errors, SQLSTATE
classes 08/53/57/58, retriable Kafka errors, network OSErrors) is classified transient;
a database refusing data and a programming error are not. Retries wait an exponential,
jittered delay that never exceeds the maximum. A batch that fails half way is redone
from before every record it may not have finished. A flood of identical client errors
is logged once per interval with the count.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import random

import asyncpg
import pytest
from aiokafka import TopicPartition
from aiokafka import errors as kafka_errors

from services.shared.batches import OffsetLedger, redo_positions
from services.shared.health import HealthState
from services.shared.logs import RepeatedLogFilter, configure_logging
from services.shared.resilience import Backoff, ErrorKind, RepeatGate, RetryPolicy, classify

A = TopicPartition("cdc.crm.sales_order", 0)
B = TopicPartition("cdc.crm.transaction", 0)


def _pg(cls: type[asyncpg.PostgresError]) -> asyncpg.PostgresError:
    return cls(f"{cls.__name__} for the test")


@pytest.mark.parametrize(
    "error",
    [
        # what pg_ctl stop -m fast produced under load in issue 9 (case 4)
        asyncpg.InternalClientError(
            "cannot switch to state 12; another operation (2) is in progress"
        ),
        asyncpg.InterfaceError("connection is closed"),
        _pg(asyncpg.ConnectionDoesNotExistError),
        _pg(asyncpg.ConnectionFailureError),
        _pg(asyncpg.AdminShutdownError),
        _pg(asyncpg.CannotConnectNowError),
        _pg(asyncpg.TooManyConnectionsError),
        _pg(asyncpg.QueryCanceledError),
        ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed"),
        ConnectionResetError(errno.ECONNRESET, "reset by peer"),
        OSError("Multiple exceptions: [Errno 111] Connect call failed ('127.0.0.1', 5434)"),
        OSError(errno.EHOSTUNREACH, "No route to host"),
        TimeoutError(),
        kafka_errors.KafkaConnectionError("Unable to bootstrap"),
        kafka_errors.KafkaTimeoutError(),
        kafka_errors.NodeNotReadyError(),
        kafka_errors.RequestTimedOutError(),
        kafka_errors.NotLeaderForPartitionError(),
        kafka_errors.GroupCoordinatorNotAvailableError(),
        kafka_errors.CommitFailedError("rebalanced"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_unavailable_databases_and_brokers_are_transient(error: BaseException) -> None:
    assert classify(error) is ErrorKind.UNAVAILABLE
    assert classify(error).transient


@pytest.mark.parametrize(
    "error",
    [_pg(asyncpg.DeadlockDetectedError), _pg(asyncpg.SerializationError),
     _pg(asyncpg.LockNotAvailableError)],
    ids=lambda e: type(e).__name__,
)
def test_lost_races_are_conflicts(error: BaseException) -> None:
    assert classify(error) is ErrorKind.CONFLICT


@pytest.mark.parametrize(
    "error",
    [_pg(asyncpg.ForeignKeyViolationError), _pg(asyncpg.CheckViolationError),
     _pg(asyncpg.UniqueViolationError), _pg(asyncpg.UndefinedTableError),
     _pg(asyncpg.NumericValueOutOfRangeError)],
    ids=lambda e: type(e).__name__,
)
def test_a_database_refusing_the_data_is_not_retried(error: BaseException) -> None:
    assert classify(error) is ErrorKind.REFUSED
    assert not classify(error).transient


@pytest.mark.parametrize(
    "error",
    [KeyError("x"), ValueError("bad"), TypeError("bug"), FileNotFoundError(errno.ENOENT, "x"),
     OSError(errno.ENOSPC, "No space left on device"),
     kafka_errors.MessageSizeTooLargeError(), kafka_errors.TopicAuthorizationFailedError()],
    ids=lambda e: type(e).__name__,
)
def test_bugs_and_permanent_client_errors_are_not_transient(error: BaseException) -> None:
    assert classify(error) is ErrorKind.BUG


def test_an_error_raised_from_an_outage_is_an_outage() -> None:
    try:
        try:
            raise asyncpg.InterfaceError("connection is closed")
        except asyncpg.InterfaceError as inner:
            raise RuntimeError("while writing the batch") from inner
    except RuntimeError as outer:
        assert classify(outer) is ErrorKind.UNAVAILABLE


def test_a_group_of_outages_is_an_outage_but_not_with_a_bug_in_it() -> None:
    outages = ExceptionGroup("x", [ConnectionResetError(), kafka_errors.KafkaTimeoutError()])
    assert classify(outages) is ErrorKind.UNAVAILABLE
    assert classify(ExceptionGroup("x", [ConnectionResetError(), KeyError()])) is ErrorKind.BUG


def test_backoff_grows_exponentially_to_its_bound() -> None:
    backoff = Backoff(initial=0.1, maximum=5.0)
    ceilings = [backoff.ceiling(n) for n in range(1, 10)]
    assert ceilings[:6] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2])
    assert ceilings[6:] == [5.0, 5.0, 5.0]
    assert backoff.ceiling(10_000) == 5.0  # no overflow however long the outage


def test_jitter_stays_within_the_upper_half_of_each_step() -> None:
    backoff = Backoff(initial=0.1, maximum=5.0)
    assert backoff.delay(3, 0.0) == pytest.approx(0.2)
    assert backoff.delay(3, 1.0) == pytest.approx(0.4)
    delays = list(zip(range(200), backoff.delays(random.Random(7)), strict=False))
    for attempt, delay in delays:
        assert backoff.ceiling(attempt + 1) / 2 <= delay <= backoff.ceiling(attempt + 1) <= 5.0
    assert len({round(d, 6) for _, d in delays[20:]}) > 1  # jittered, not one fixed value


def test_an_invalid_backoff_is_refused() -> None:
    with pytest.raises(ValueError):
        Backoff(initial=0, maximum=1)
    with pytest.raises(ValueError):
        Backoff(initial=2, maximum=1)


async def test_a_call_is_retried_through_an_outage_and_readiness_reports_it() -> None:
    health = HealthState()
    slept: list[float] = []
    seen: list[ErrorKind] = []

    async def sleep(delay: float) -> None:
        slept.append(delay)
        ok, body = await health.readiness()
        assert not ok and "retrying" in body["checks"]["writes"]["detail"]

    policy = RetryPolicy(health, Backoff(0.1, 1.0), sleep=sleep, on_retry=seen.append,
                         rng=random.Random(1))
    failures = [asyncpg.InternalClientError("cannot switch to state 12"),
                ConnectionRefusedError(), kafka_errors.KafkaTimeoutError()]

    async def operation() -> str:
        if failures:
            raise failures.pop(0)
        return "done"

    assert await policy.call(operation, check="writes") == "done"
    assert len(slept) == 3 and all(d <= 1.0 for d in slept)
    assert seen == [ErrorKind.UNAVAILABLE] * 3
    assert (await health.readiness())[0]


async def test_a_refusal_after_an_outage_is_raised_and_clears_the_outage() -> None:
    health = HealthState()
    policy = RetryPolicy(health, sleep=_no_sleep)
    failures: list[BaseException] = [ConnectionResetError(),
                                      _pg(asyncpg.ForeignKeyViolationError)]

    async def operation() -> None:
        raise failures.pop(0)

    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await policy.call(operation, check="writes")
    assert (await health.readiness())[0]


async def test_caller_conflicts_are_retried_without_failing_readiness() -> None:
    health = HealthState()
    policy = RetryPolicy(health, sleep=_no_sleep).derive(asyncpg.UniqueViolationError)
    failures = [_pg(asyncpg.UniqueViolationError)]

    async def operation() -> None:
        if failures:
            raise failures.pop(0)

    async def check_ready(_: float) -> None:
        assert (await health.readiness())[0]

    policy._sleep = check_ready
    await policy.call(operation, check="writes")


async def test_a_bug_is_raised_at_once() -> None:
    calls = 0

    async def operation() -> None:
        nonlocal calls
        calls += 1
        raise KeyError("missing")

    with pytest.raises(KeyError):
        await RetryPolicy(sleep=_no_sleep).call(operation)
    assert calls == 1


async def _no_sleep(_: float) -> None:
    return None


def test_a_failed_batch_is_redone_from_before_everything_it_may_not_have_finished() -> None:
    ledger = OffsetLedger()
    ledger.fetched(A, 100)  # earlier batches handled up to 99
    ledger.hold(A, 40)  # ... with 40 still held (its transaction incomplete)
    ledger.fetched(B, 7)
    # the failed batch: A 100..199 (handler held 150 before failing), C first seen
    c = TopicPartition("cdc.crm.account", 0)
    ledger.hold(A, 150)
    assert redo_positions(ledger, {A: 100, c: 12}) == {A: 40, B: 7, c: 12}


def test_a_hold_taken_in_the_failed_batch_does_not_skip_its_first_records() -> None:
    ledger = OffsetLedger()
    ledger.fetched(A, 100)
    ledger.hold(A, 150)  # taken by the failed batch, 100..149 maybe unfinished
    assert redo_positions(ledger, {A: 100}) == {A: 100}


def test_a_repeat_gate_admits_once_per_interval_with_the_count() -> None:
    gate = RepeatGate(10.0)
    assert gate.admit("x", 0.0) == 0
    assert [gate.admit("x", t) for t in (1.0, 2.0, 9.9)] == [None, None, None]
    assert gate.admit("y", 5.0) == 0  # another message is not held back
    assert gate.admit("x", 10.0) == 3
    assert gate.admit("x", 10.5) is None


def test_a_flood_of_kafka_client_errors_is_logged_once_per_interval_with_a_count() -> None:
    stream = io.StringIO()
    handler = configure_logging("json", "INFO", service="s", stream=stream,
                                repeat_interval=3600)
    try:
        client = logging.getLogger("aiokafka.conn")
        for node in range(200):
            client.error("Unable connect to node with id %s: %s", node, "refused")
        logging.getLogger("aiokafka").warning("another message")
        logging.getLogger("services.order_sync.app").error("ours, %s", 1)
        logging.getLogger("services.order_sync.app").error("ours, %s", 2)
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        logging.getLogger().removeHandler(handler)
    assert [line["message"] for line in lines] == [
        "Unable connect to node with id 0: refused", "another message", "ours, 1", "ours, 2",
    ]


def test_the_next_one_after_the_interval_carries_the_count() -> None:
    now = [0.0]
    gate = RepeatedLogFilter(10.0, clock=lambda: now[0])

    def record(level: int = logging.ERROR, name: str = "kafka.client") -> logging.LogRecord:
        return logging.LogRecord(name, level, "f", 1, "Unable to update metadata from %s",
                                 ([1],), None)

    assert gate.filter(record())
    assert not any(gate.filter(record()) for _ in range(5))
    assert gate.filter(record(logging.INFO))  # information is never held back
    now[0] = 11.0
    later = record()
    assert gate.filter(later)
    assert later.repeated == 5  # type: ignore[attr-defined]
    assert "5 more like this" in later.getMessage()


async def test_probes_are_asked_live_and_cached_briefly() -> None:
    health = HealthState(probe_cache=3600)
    answers = [(True, "up"), (False, "down")]
    asked = 0

    async def probe() -> tuple[bool, str]:
        nonlocal asked
        asked += 1
        return answers[asked - 1]

    health.add_probe("kafka", probe)
    assert (await health.readiness())[0]
    assert (await health.readiness())[0] and asked == 1  # cached
    health.probe_cache = 0
    ok, body = await health.readiness()
    assert not ok and body["checks"]["kafka"]["detail"] == "down" and asked == 2

"""The one transient-error policy of every service: what is worth retrying, and how.

A database or broker that goes away (a restart, a failover, ``pg_ctl stop -m fast``)
is an outage, not a bug: the work that failed is retried with exponential backoff and
jitter (bounded by a maximum delay) until the component is back, readiness reports the
outage meanwhile, and the process never exits on it. Everything else keeps its meaning:
bad input is dead-lettered (:class:`~services.shared.errors.BadInput`), a database
refusing data (a constraint, a check) is answered by the caller, and an unexpected
error is a bug that stops the worker for its supervisor to restart.

:func:`classify` is pure (unit-tested on the exception types the drivers raise);
:class:`Backoff` computes delays from an attempt number and a random draw (pure);
:class:`RetryPolicy` is the small async loop every caller shares (the batch sources,
the sinks, order-sync's in-place retries), so there is one answer to "is this
transient?" in the whole code base.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import logging
import random
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, TypeVar

import asyncpg
from aiokafka import errors as kafka_errors

if TYPE_CHECKING:
    from services.shared.health import HealthState

log = logging.getLogger(__name__)

T = TypeVar("T")


class ErrorKind(enum.Enum):
    """What an exception means for the work that raised it."""

    #: lost a race with another writer (deadlock, serialization): redo at once
    CONFLICT = "conflict"
    #: a database or the broker is not reachable or shutting down: an outage
    UNAVAILABLE = "unavailable"
    #: the database refused this data (constraint, check, type): retrying cannot help
    REFUSED = "refused"
    #: anything else: a bug, not the environment
    BUG = "bug"

    @property
    def transient(self) -> bool:
        return self in (ErrorKind.CONFLICT, ErrorKind.UNAVAILABLE)


#: SQLSTATE classes of an unavailable server: 08 connection exception, 53 insufficient
#: resources (too many connections, disk full), 57 operator intervention (admin
#: shutdown, cannot connect now, query canceled), 58 system error (I/O)
_UNAVAILABLE_SQLSTATE: Final = ("08", "53", "57", "58")
#: 40001 serialization failure, 40P01 deadlock detected, 55P03 lock not available
_CONFLICT_SQLSTATE: Final = frozenset({"40001", "40P01", "55P03"})

#: errno of network failures (an OSError with another errno, e.g. a missing file or a
#: full local disk, is not an outage of a remote component)
_NETWORK_ERRNO: Final = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNREFUSED", "ECONNRESET", "ECONNABORTED", "EPIPE", "ETIMEDOUT", "EHOSTUNREACH",
        "ENETUNREACH", "ENETDOWN", "EHOSTDOWN", "ENOTCONN", "ESHUTDOWN", "EADDRNOTAVAIL",
    )
    if hasattr(errno, name)
)

#: Kafka errors that are not flagged ``retriable`` by aiokafka but mean "the broker or
#: the group is not there right now"
_KAFKA_UNAVAILABLE: Final = (
    kafka_errors.KafkaTimeoutError,
    kafka_errors.KafkaUnavailableError,
    kafka_errors.BrokerNotAvailableError,
    kafka_errors.CommitFailedError,
    kafka_errors.RebalanceInProgressError,
    kafka_errors.IllegalGenerationError,
    kafka_errors.UnknownMemberIdError,
    kafka_errors.ReplicaNotAvailableError,
)


def classify(error: BaseException) -> ErrorKind:
    """The :class:`ErrorKind` of ``error`` (or of the error it was raised from).

    asyncpg: connection and interface errors (``InterfaceError``: "connection is
    closed", "another operation is in progress"; ``InternalClientError``: "cannot switch
    to state ..." when the server goes away mid-protocol, as ``pg_ctl stop -m fast``
    does) and the SQLSTATE classes above are outages; other ``PostgresError``s are the
    database refusing the data. Kafka: every ``retriable`` aiokafka error plus timeouts
    and group churn. Plain ``ConnectionError``/``TimeoutError`` and network ``OSError``s
    (also ``OSError("Multiple exceptions: ...")`` with no errno, as asyncio reports
    refused connections to several addresses) are outages.
    """
    kind = _classify_one(error)
    if kind is ErrorKind.BUG:
        cause = error.__cause__
        if cause is not None and cause is not error:
            inner = classify(cause)
            if inner.transient:
                return inner
    if kind is ErrorKind.BUG and isinstance(error, BaseExceptionGroup):
        kinds = {classify(inner) for inner in error.exceptions}
        if kinds and all(k.transient for k in kinds):
            return ErrorKind.UNAVAILABLE if ErrorKind.UNAVAILABLE in kinds else ErrorKind.CONFLICT
    return kind


def _classify_one(error: BaseException) -> ErrorKind:
    if isinstance(error, asyncpg.PostgresError):
        sqlstate = str(getattr(error, "sqlstate", "") or "")
        if sqlstate in _CONFLICT_SQLSTATE:
            return ErrorKind.CONFLICT
        if sqlstate.startswith(_UNAVAILABLE_SQLSTATE):
            return ErrorKind.UNAVAILABLE
        return ErrorKind.REFUSED
    if isinstance(error, asyncpg.InterfaceError | asyncpg.InternalClientError):
        return ErrorKind.UNAVAILABLE
    if isinstance(error, kafka_errors.KafkaError):
        if getattr(error, "retriable", False) or isinstance(error, _KAFKA_UNAVAILABLE):
            return ErrorKind.UNAVAILABLE
        return ErrorKind.BUG  # e.g. a record too large, an authorization failure
    if isinstance(error, ConnectionError | TimeoutError | socket.gaierror):
        return ErrorKind.UNAVAILABLE
    if isinstance(error, OSError) and (error.errno is None or error.errno in _NETWORK_ERRNO):
        return ErrorKind.UNAVAILABLE
    return ErrorKind.BUG


def is_transient(error: BaseException) -> bool:
    return classify(error).transient


# ----------------------------------------------------------------------- backoff


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter, bounded by ``maximum``.

    Attempt ``n`` (1-based) waits between half and all of
    ``min(maximum, initial * factor ** (n - 1))``: the upper half of the exponential
    step ("equal jitter"), so retries of many workers spread out yet never come faster
    than half the schedule.
    """

    initial: float = 0.1
    maximum: float = 5.0
    factor: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum or self.factor < 1:
            raise ValueError(f"invalid backoff {self!r}")

    def ceiling(self, attempt: int) -> float:
        """The un-jittered delay of ``attempt`` (1-based)."""
        exponent = max(0, attempt - 1)
        # cap the exponent: factor ** 1000 overflows long before the cap matters
        if exponent > 64:
            return self.maximum
        return min(self.maximum, self.initial * self.factor**exponent)

    def delay(self, attempt: int, draw: float) -> float:
        """The delay of ``attempt`` for a uniform ``draw`` in [0, 1]."""
        ceiling = self.ceiling(attempt)
        return ceiling / 2 + ceiling / 2 * min(1.0, max(0.0, draw))

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """An endless schedule (attempt 1, 2, ...)."""
        draw = (rng or random.Random()).random
        attempt = 0
        while True:
            attempt += 1
            yield self.delay(attempt, draw())


# ---------------------------------------------------------------------- reporting


@dataclass
class RepeatGate:
    """Lets one message per key through per ``interval`` seconds and counts the rest.

    ``admit(key, now)`` returns None to suppress, or how many were suppressed since the
    last admitted one (0 for the first). Pure: the caller passes the clock.
    """

    interval: float = 10.0
    _last: dict[object, float] = field(default_factory=dict)
    _suppressed: dict[object, int] = field(default_factory=dict)

    def admit(self, key: object, now: float) -> int | None:
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        self._last[key] = now
        if len(self._last) > 1024:  # keys are message templates: a handful in practice
            oldest = min(self._last, key=self._last.__getitem__)
            self._last.pop(oldest, None)
            self._suppressed.pop(oldest, None)
        return self._suppressed.pop(key, 0)


# ------------------------------------------------------------------------ retrying


class RetryPolicy:
    """Retries an operation while it fails transiently, reporting the outage.

    While a call waits out an outage the readiness check named by the caller fails with
    the error (``health.set_check(check, False, ...)``) and passes again after the
    first success; conflicts (lost races) are retried without touching readiness. A
    warning per outage kind is logged at most once per ``log_interval`` with the count
    of retries in between, so a long outage cannot flood the logs.
    """

    def __init__(
        self,
        health: HealthState | None = None,
        backoff: Backoff | None = None,
        *,
        log_interval: float = 10.0,
        conflicts: tuple[type[BaseException], ...] = (),
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_retry: Callable[[ErrorKind], None] | None = None,
    ) -> None:
        self.health = health
        self.backoff = backoff or Backoff()
        self.conflicts = conflicts
        self._rng = rng or random.Random()
        self._sleep = sleep
        self._gate = RepeatGate(log_interval)
        self._on_retry = on_retry

    def classify(self, error: BaseException) -> ErrorKind:
        if self.conflicts and isinstance(error, self.conflicts):
            return ErrorKind.CONFLICT
        return classify(error)

    def derive(
        self, *conflicts: type[BaseException],
        on_retry: Callable[[ErrorKind], None] | None = None,
    ) -> RetryPolicy:
        """The same policy, also treating ``conflicts`` as lost races (caller-specific
        errors such as a unique violation from two workers creating one row) and also
        telling ``on_retry`` (e.g. a service's own retry metric) of each retry."""
        hooks = [h for h in (self._on_retry, on_retry) if h is not None]

        def both(kind: ErrorKind) -> None:
            for hook in hooks:
                hook(kind)

        policy = RetryPolicy(
            self.health, self.backoff, log_interval=self._gate.interval,
            conflicts=(*self.conflicts, *conflicts), rng=self._rng, sleep=self._sleep,
            on_retry=both,
        )
        policy._gate = self._gate
        return policy

    async def call(
        self, operation: Callable[[], Awaitable[T]], *, check: str | None = None,
        what: str = "operation",
    ) -> T:
        """``await operation()`` until it returns; a non-transient error is raised."""
        attempt = 0
        while True:
            try:
                result = await operation()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                kind = self.classify(error)
                if not kind.transient:
                    if attempt and check is not None:
                        self.recovered(check, what)  # reachable again: not an outage
                    raise
                attempt += 1
                delay = self.backoff.delay(attempt, self._rng.random())
                self.report(error, kind, delay, check=check, what=what)
                await self._sleep(delay)
                continue
            if attempt and check is not None:
                self.recovered(check, what)
            return result

    def delay(self, attempt: int) -> float:
        return self.backoff.delay(attempt, self._rng.random())

    def report(
        self, error: BaseException, kind: ErrorKind, delay: float, *, check: str | None,
        what: str,
    ) -> None:
        """Count the retry, fail ``check`` (outages only), log at most once an interval."""
        if self._on_retry is not None:
            self._on_retry(kind)
        detail = f"{what}: {type(error).__name__}: {error}"
        if kind is ErrorKind.UNAVAILABLE and check is not None and self.health is not None:
            self.health.set_check(check, False, f"retrying, {detail}"[:500])
        repeated = self._gate.admit((what, kind, type(error)), time.monotonic())
        if repeated is None:
            return
        level = logging.INFO if kind is ErrorKind.CONFLICT else logging.WARNING
        log.log(
            level, "%s failed (%s), retrying in %.2fs: %s: %s", what, kind.value, delay,
            type(error).__name__, error,
            extra={"retry_kind": kind.value, "repeated": repeated},
        )

    def recovered(self, check: str, what: str) -> None:
        if self.health is not None:
            self.health.set_check(check, True, "ok")
        log.info("%s succeeded again", what, extra={"check": check})

"""order-sync writes the CRM status behind the ERP without losing or reordering it.

Invariant (services.order_sync.syncing, "written behind the ERP"): a chunk's records are
released only once its CRM status is written; the status writes land in the order the
chunks were decided (a direct write waits for the one in flight); the next chunk's ERP
transaction runs while the last status is written; a bug in the write in flight fails
the next batch instead of vanishing. Fakes for the stores: this is the ordering logic.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from services.order_sync.codec import StatusRow
from services.order_sync.domain.outcomes import BatchResult, OrderOutcome
from services.order_sync.syncing import Syncing
from services.shared.changes import ChangeEvent
from services.shared.position import SourcePosition
from services.shared.resilience import Backoff, RetryPolicy


class _Count:
    def labels(self, *_: Any) -> _Count:
        return self

    def inc(self, *_: Any) -> None:
        return None


class _Metrics:
    orders = customers = status_changes = retries = _Count()


class _ServiceMetrics:
    @contextlib.contextmanager
    def sink_timer(self, _: str) -> Iterator[None]:
        yield


class _Service:
    metrics = _ServiceMetrics()


class Status:
    """The CRM status table: each write takes ``delay`` seconds and is logged."""

    def __init__(self, log: list[str], delay: float = 0.02) -> None:
        self.log = log
        self.delay = delay
        self.fail: BaseException | None = None

    async def write_sync(self, outcomes: Sequence[OrderOutcome]) -> int:
        self.log.append("status start " + ",".join(str(o.crm_order_id) for o in outcomes))
        await asyncio.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        self.log.append("status done " + ",".join(str(o.crm_order_id) for o in outcomes))
        return len(outcomes)


class _Stores:
    def __init__(self, status: Status) -> None:
        self.status = status


class ErpFake(Syncing):
    """The ERP step faked: the chunk's first event's ``id`` is the order decided."""

    def __init__(self, log: list[str]) -> None:
        super().__init__(_Service(), _Metrics(), RetryPolicy(backoff=Backoff(0.001, 0.002)),  # type: ignore[arg-type]
                         transaction_topic="cdc.crm.transaction")
        self.log = log
        self.status = Status(log)
        self.attach(_Stores(self.status))  # type: ignore[arg-type]

    async def apply_events(self, events: Sequence[ChangeEvent], *,
                           only: frozenset[int] | None = None) -> BatchResult:
        order_id = int(events[0].key["id"])
        self.log.append(f"erp start {order_id}")
        await asyncio.sleep(0.01)
        self.log.append(f"erp done {order_id}")
        return _result(order_id)


def _result(order_id: int) -> BatchResult:
    return BatchResult(outcomes=[OrderOutcome(
        order_id, "create", StatusRow(order_id, "synced", None, None, 1, None, None),
        SourcePosition(order_id, order_id))])


def _chunk(order_id: int) -> list[Any]:
    event = type("E", (), {"key": {"id": order_id}})()
    transaction = type("T", (), {"events": [event]})()
    return [(transaction, [])]


async def test_the_next_erp_step_runs_while_the_status_is_written() -> None:
    log: list[str] = []
    syncing = ErpFake(log)
    released: list[int] = []
    await syncing.apply_transactions(_chunk(1), then=lambda: released.append(1))
    assert released == []  # not before its status is written
    await syncing.apply_transactions(_chunk(2), then=lambda: released.append(2))
    await syncing.settle()
    assert released == [1, 2]
    # chunk 2's ERP step overlapped chunk 1's status write; statuses in decision order
    assert log.index("erp start 2") < log.index("status done 1")
    assert [e for e in log if e.startswith("status done")] == ["status done 1", "status done 2"]
    # one status write in flight at a time
    assert log.index("status done 1") < log.index("status start 2")


async def test_a_direct_write_waits_for_the_one_in_flight() -> None:
    log: list[str] = []
    syncing = ErpFake(log)
    await syncing.apply_transactions(_chunk(1), then=lambda: None)
    await syncing.write_back(_result(7))  # e.g. the ERP side re-deciding an order
    assert [e for e in log if e.startswith("status")] == [
        "status start 1", "status done 1", "status start 7", "status done 7"]


async def test_without_then_the_status_is_written_before_returning() -> None:
    log: list[str] = []
    syncing = ErpFake(log)
    await syncing.apply_transactions(_chunk(3))
    assert log[-1] == "status done 3"


async def test_a_bug_in_the_write_in_flight_fails_the_next_batch() -> None:
    log: list[str] = []
    syncing = ErpFake(log)
    syncing.status.fail = KeyError("a bug")
    released: list[int] = []
    await syncing.apply_transactions(_chunk(1), then=lambda: released.append(1))
    with pytest.raises(KeyError):
        await syncing.apply_transactions(_chunk(2), then=lambda: released.append(2))
    assert released == []  # its records stay held: redone after the restart


async def test_a_reset_or_stop_waits_for_the_write_and_logs_its_failure(
        caplog: pytest.LogCaptureFixture) -> None:
    log: list[str] = []
    syncing = ErpFake(log)
    syncing.status.fail = KeyError("a bug")
    await syncing.apply_transactions(_chunk(1), then=lambda: None)
    await syncing.settle(quiet=True)
    assert "the CRM status write in flight failed" in caplog.text
    await syncing.settle()  # nothing in flight any more

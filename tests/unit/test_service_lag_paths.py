"""order-sync and inventory-projection observe their own lag, not only the end-to-end lag.

Invariant protected (issue 16 follow-up): every path a service observes
``ambidex_end_to_end_lag_seconds`` for also gets ``ambidex_service_lag_seconds`` with the
same path label, measured from when the source transaction's newest record reached
Kafka (the records' timestamps, milliseconds) to its effect: order-sync's
``crm_to_erp`` (the single process per transaction; a scale-out worker per slice, from
the CDC rows the slice carries, not from the route record) and ``erp_to_crm`` (per
batch, its newest change); inventory-projection's ``crm_write_back`` and
``feasibility_answer`` (a request held for its order too, answered in a later step).
The Grafana panel "Service's own lag p99" reads this histogram.

The clock of the effects is frozen (``NOW``), so each observation is exact: the
records' append times are set apart from the source commit times and from the route
records' timestamps, so a lag measured from either would not match.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord

import services.inventory_projection.demand_effects as demand_effects_module
import services.inventory_projection.effects as effects_module
import services.order_sync.erp_intake as erp_intake_module
import services.order_sync.syncing as syncing_module
from services.inventory_projection.app import Shell
from services.inventory_projection.demand_signals import demand_side
from services.inventory_projection.projector import Projector
from services.inventory_projection.source_rows import UNKNOWN_REFERENCE_GRACE
from services.shared.batches import OffsetLedger, RecordBatch
from services.shared.changes import RecordOrigin
from services.shared.runtime import build_service
from services.shared.settings import load_settings
from services.shared.state.store import MemoryState
from services.shared.transactions import TransactionMarker, TransactionStatus
from tests.builders import change_event
from tests.unit.test_order_sync_handlers import FakeUnitOfWork
from tests.unit.test_order_sync_scale_out import (
    Crm,
    FakeStatus,
    deliver,
    process,
    route,
    route_records,
    scenario,
)

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
#: the effects' clock: an hour after the first source commit
NOW = T0.timestamp() + 3_600.0
#: the records reached Kafka 20 s after T0, 7 ms apart (the source commit times differ)
APPENDED_MS = int(T0.timestamp() * 1000) + 20_000


def freeze(monkeypatch: pytest.MonkeyPatch, *modules: ModuleType) -> None:
    """The effects of ``modules`` read the clock at ``NOW``."""
    clock = SimpleNamespace(time=lambda: NOW, monotonic=lambda: NOW)
    for module in modules:
        monkeypatch.setattr(module, "time", clock)


def lag_samples(registry: Any, service: str, path: str) -> tuple[float | None, float | None]:
    """(count, sum) of ``ambidex_service_lag_seconds{service, path}``."""
    labels = {"service": service, "path": path}
    return (registry.get_sample_value("ambidex_service_lag_seconds_count", labels),
            registry.get_sample_value("ambidex_service_lag_seconds_sum", labels))


def since(appended_ms: Sequence[int]) -> float:
    """The service lag at ``NOW`` of a transaction whose records have these timestamps."""
    return NOW - max(appended_ms) / 1000


# ------------------------------------------------------------------------ order-sync


class StampedCrm(Crm):
    """The CRM's CDC topics, each record appended 7 ms after the one before."""

    def __init__(self) -> None:
        super().__init__()
        self._appended = itertools.count(APPENDED_MS, 7)

    def _record(self, topic: str) -> ConsumerRecord[bytes, bytes]:
        return dataclasses.replace(super()._record(topic), timestamp=next(self._appended))


async def test_crm_to_erp_lag_of_the_single_process_starts_at_each_transactions_last_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    freeze(monkeypatch, syncing_module)
    crm = StampedCrm()
    scenario(crm)
    uow = FakeUnitOfWork()
    sync = process(crm, "single", uow, FakeStatus())
    await sync.crm.on_batch(RecordBatch(crm.all_records(), OffsetLedger()))
    await sync.syncing.settle()  # observed once the CRM status, written behind, is
    assert len(uow.erp_orders_by_crm) == 2  # applied (the test can fail)

    # each transaction's newest record is its END marker
    expected = [since([r.timestamp for r in records]) for records in crm.transactions]
    count, total = lag_samples(sync.service.registry, sync.service.name, "crm_to_erp")
    assert count == len(crm.transactions) == 3
    assert total == pytest.approx(sum(expected))


async def test_crm_to_erp_lag_of_a_worker_starts_at_its_slices_newest_cdc_row(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    freeze(monkeypatch, syncing_module)
    crm = StampedCrm()
    scenario(crm)
    slices = route(crm, crm.all_records())
    # the route records' own timestamps are 0 here (the router sets the source commit):
    # a lag measured from them would be NOW, not the one expected
    records = route_records(slices)
    assert {r.timestamp for r in records} == {0}
    uow = FakeUnitOfWork()
    worker = process(crm, "worker", uow, FakeStatus())
    await deliver(worker, records)
    assert len(uow.erp_orders_by_crm) == 2

    expected = [since([row.timestamp for row in piece.rows]) for piece in slices]
    count, total = lag_samples(worker.service.registry, worker.service.name, "crm_to_erp")
    assert count == len(slices) == 6  # one per slice: each is applied on its own
    assert total == pytest.approx(sum(expected))


async def test_erp_to_crm_lag_starts_at_the_batchs_newest_change_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    freeze(monkeypatch, erp_intake_module)
    crm = Crm()
    sync = process(crm, "single", FakeUnitOfWork(), FakeStatus())
    records = []
    for offset, appended in enumerate((APPENDED_MS + 40, APPENDED_MS + 90, APPENDED_MS + 10)):
        record = ConsumerRecord("cdc.erp.item", 0, offset, appended, 0, b"k", b"v", None,
                                1, 1, ())
        crm.items[(record.topic, offset)] = change_event(
            "erp", "item", after={"id": offset + 1, "sku": f"S{offset}"},
            commit_lsn=100 + offset, commit_time=T0,
            origin=RecordOrigin(record.topic, 0, offset))
        records.append(record)
    await sync.erp.on_batch(RecordBatch(records, OffsetLedger()))

    count, total = lag_samples(sync.service.registry, sync.service.name, "erp_to_crm")
    assert count == 1  # one a batch, as its end-to-end lag
    assert total == pytest.approx(since([APPENDED_MS + 90]))


# -------------------------------------------------------------- inventory-projection

_lsn = itertools.count(1000, 10)
_xid = itertools.count(1)
_offsets: Counter[str] = Counter()


def _record(topic: str, appended_ms: int) -> ConsumerRecord[bytes, bytes]:
    offset = _offsets[topic]
    _offsets[topic] += 1
    return ConsumerRecord(topic, 0, offset, appended_ms, 0, b"k", b"v", None, 1, 1, ())


class Tx:
    """One source transaction: its changes and END marker as Kafka records appended
    ``appended`` seconds after T0 (the newest: the marker, 5 ms after its changes)."""

    def __init__(self, db: str, seconds: float, appended: float,
                 *rows: tuple[str, dict[str, Any]]) -> None:
        self.db = db
        self.xid = f"{db}-{next(_xid)}"
        when = T0 + timedelta(seconds=seconds)
        at = int((T0.timestamp() + appended) * 1000)
        self.events = [
            (change_event(db, table, after=row, commit_lsn=next(_lsn), transaction_id=self.xid,
                          order=i, commit_time=when), _record(f"cdc.{db}.{table}", at))
            for i, (table, row) in enumerate(rows, start=1)]
        self.end = _record(f"cdc.{db}.transaction", at + 5)
        self.commit_time = when
        self.last_appended = (at + 5) / 1000

    def send(self, p: Projector[Any]) -> None:
        for event, record in self.events:
            p.change(event, record)
        counts = Counter(e.data_collection for e, _ in self.events)
        p.marker(self.db, TransactionMarker(TransactionStatus.END, self.xid, f"{self.xid}:1",
                                            len(self.events), counts, T0), self.end)


def heartbeat(p: Projector[Any], seconds: float) -> None:
    for db in ("crm", "erp"):
        p.heartbeat(db, T0 + timedelta(seconds=seconds), _record(f"hb.{db}", 0))


def catalogue() -> list[Tx]:
    return [
        Tx("erp", 0, 20, ("item", {"id": 1, "sku": "A", "lead_time_days": 4}),
           ("warehouse", {"id": 7, "code": "W"}),
           ("stock_quant", {"id": 1, "item_id": 1, "warehouse_id": 7,
                            "quantity": Decimal("50")})),
        Tx("crm", 0.5, 21, ("product", {"id": 3, "sku": "A"})),
    ]


def order(oid: int, seconds: float, appended: float) -> Tx:
    header = {"id": oid, "number": f"SO{oid}", "account_id": 9, "state": "confirmed",
              "warehouse_code": "W", "version": 1,
              "confirmed_at": T0 + timedelta(seconds=seconds)}
    line = {"id": oid * 10, "order_id": oid, "line_no": 1, "product_id": 3,
            "quantity": Decimal("10")}
    return Tx("crm", seconds, appended, ("sales_order", header), ("sales_order_line", line))


def request(rid: int, oid: int, seconds: float, appended: float) -> Tx:
    row = {"id": rid, "sales_order_id": oid, "requested_date": None, "warehouse_code": None,
           "lines": '[{"line_no": 1, "product_id": 3, "quantity": "5"}]'}
    return Tx("crm", seconds, appended, ("feasibility_request", row))


def shell() -> tuple[Shell, Projector[Any]]:
    """inventory-projection's shell with its I/O faked (write-back, publishing, sinks)
    and the projector its runner loads (over an empty state)."""
    service = build_service(load_settings("inventory-projection", {}))
    service.intake = SimpleNamespace()  # type: ignore[assignment]
    it = Shell(service)

    async def nothing(*_: Any) -> None:
        return None

    it.effects.write_back = nothing  # type: ignore[method-assign]
    it.effects.publish_availability = nothing  # type: ignore[method-assign]
    sink = SimpleNamespace(apply=nothing)
    it.demand.crm = it.demand.erp = sink  # type: ignore[assignment]
    return it, it.runner._load(MemoryState())


async def test_inventory_paths_lag_from_each_transactions_last_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    freeze(monkeypatch, effects_module, demand_effects_module)
    it, p = shell()
    sent = [*catalogue(), order(5, 1, 22), request(1, 5, 2, 23)]
    for tx in sent:
        tx.send(p)
    heartbeat(p, 3)
    step = p.step()
    await it.apply(step, p)

    registry, name = it.service.registry, it.service.name
    # the projection: every transaction it folded (the request is the companion's)
    last = {tx.commit_time: tx.last_appended for tx in sent}
    assert step.commit_times and step.availability
    count, total = lag_samples(registry, name, "crm_write_back")
    assert count == len(step.commit_times)
    assert total == pytest.approx(sum(NOW - last[t] for t in step.commit_times))
    # the request answered: from its own transaction's last record
    count, total = lag_samples(registry, name, "feasibility_answer")
    assert count == 1
    assert total == pytest.approx(NOW - sent[-1].last_appended)


def test_a_request_held_for_its_order_keeps_its_own_append_time() -> None:
    _, p = shell()
    sent = [*catalogue(), request(1, 99, 1, 30)]  # in commit order (LSNs rise)
    held = sent[-1]
    for tx in sent:
        tx.send(p)
    heartbeat(p, 1 + UNKNOWN_REFERENCE_GRACE.total_seconds() + 1)
    side = demand_side(p)
    p.step(caught_up=("erp",))  # the CRM's topics not read to their end: held
    assert side.take().appended_times == [] and side.holding == 1
    p.step(caught_up=("crm", "erp"))  # answered unknown_order in a later step
    answered = side.take()
    assert list(answered.outcome.answers) == [1]
    assert answered.appended_times == [held.last_appended]

"""production-status's fold in-process: CPU per change of a replay (no stack, no Kafka).

Not a test: it prints figures and the command that reproduces them.

    uv run python -m bench.production_status_fold                  # 60,000 changes
    uv run python -m bench.production_status_fold --changes 20000 --batch 5000

The synthetic orders of :mod:`bench.production_status` (per order: its CRM order, ERP
order and line, a production order confirmed, in progress, done, its inspection pending
then passed — every 5th order's first one fails and a second one passes — a shipment
shipped then delivered and its line; each change its own source transaction; each
order's identity as order-sync publishes it), as decoded change events without a
transaction block (as the stack benchmark produces them), read in batches of
``--batch`` records taken from the topics in turn (as a consumer fetches them), folded
by the service's :class:`~services.production_status.service_fold.StatusFold` over the
checkpoint's overlay on a :class:`~services.shared.state.rocks.RocksState` (the runner's step, then
the output check, the records' Avro encoding, the overlay drained into RocksDB).

Two clocks: ``backlog`` (the source clock far behind the wall clock, the sources not
read to their end: statuses are deferred until the end, as in a replay) and ``live``
(the source clock is the wall clock: every step builds the statuses it touched). The
rate is changes / CPU seconds of the whole run (fold + output check + encoding).

A third, ``latency``, mimics the stack benchmark's latency phase (its phase 2): ``--orders``
ERP orders of one line and 10 production orders in progress each, folded untimed; then
``--changes`` updates of ``qty_produced`` alone (+1), 10 per source transaction (with its
END marker), each transaction one order's production orders, orders round robin, steps
of ``--step`` changes (a CRM heartbeat each step), the clock live. Only that phase is
timed.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from aiokafka.structs import ConsumerRecord

from bench.common import reproduce_line
from bench.production_status import Identities
from services.production_status.app import IDENTITY_TOPIC
from services.production_status.effects import outputs
from services.production_status.service_fold import StatusFold
from services.shared.avro import AvroCodec, SchemaCatalogue
from services.shared.changes import ChangeEvent, ChangeOp
from services.shared.cooperative import run_to_end
from services.shared.output_check import first_refused
from services.shared.state.rocks import RocksState
from services.shared.state.store import Overlay
from services.shared.stateful import Handle
from services.shared.transactions import TransactionMarker, TransactionStatus
from tests.builders import change_event

T0 = datetime(2026, 11, 2, 8, tzinfo=UTC)
BASE_ID = 30_000_000
WAREHOUSE, ITEM = 1, 1
#: changes per synthetic order, every 5th order's one more
CHANGES_PER_ORDER = 11
D = Decimal

#: a feed item: (the record's value, what to hand the fold)
Item = tuple[bytes, Callable[[StatusFold, Handle], None]]


class Orders:
    """The synthetic source: per topic, its records in order."""

    def __init__(self, codec: AvroCodec) -> None:
        self.topics: dict[str, list[Item]] = {}
        self.identities = Identities()
        self.identities.codec = codec
        self.lsn = 1 << 42
        self.at = T0
        self.changes = 0

    def _put(self, topic: str, feed: Callable[[StatusFold, Handle], None],
             value: bytes = b"v") -> None:
        self.topics.setdefault(topic, []).append((value, feed))

    def commit(self, database: str, table: str, row: dict[str, Any]) -> None:
        """One change, its own source transaction: as the stack benchmark's envelopes,
        without a transaction block (applied alone, no END marker to wait for)."""
        self.lsn += 1
        self.at += timedelta(milliseconds=2)
        event = change_event(database, table, after=row, commit_lsn=self.lsn,
                             transaction_id=None, order=None, commit_time=self.at)
        self._put(f"cdc.{database}.{table}", lambda fold, h: fold.change(event, h))
        self.changes += 1

    def identity(self, oid: int) -> None:
        value = self.identities.record(oid, oid)
        self._put(IDENTITY_TOPIC, StatusFold.published, value)

    def order(self, n: int) -> None:
        oid = BASE_ID + n
        started, inspected = self.at - timedelta(hours=30), self.at - timedelta(hours=20)
        shipped, delivered = self.at - timedelta(hours=10), self.at - timedelta(hours=2)
        today = self.at.date()
        self.commit("crm", "sales_order", {
            "id": oid, "number": f"BSO{oid}", "state": "confirmed",
            "requested_date": today + timedelta(days=30), "version": 1})
        self.identity(oid)
        self.commit("erp", "sales_order", {
            "id": oid, "name": f"BS{oid}", "state": "in_production", "warehouse_id": WAREHOUSE,
            "requested_date": today + timedelta(days=30), "crm_order_id": oid})
        self.commit("erp", "sales_order_line", {
            "id": oid, "order_id": oid, "line_no": 1, "item_id": ITEM, "quantity": D("10.000")})
        mo = {"id": oid, "name": f"BMO{oid}", "item_id": ITEM, "warehouse_id": WAREHOUSE,
              "sales_order_id": oid, "sales_order_line_id": oid, "quantity": D("10.000"),
              "qty_produced": D("0.000"), "state": "confirmed",
              "date_planned_start": today - timedelta(days=2),
              "date_planned_finish": today + timedelta(days=5), "date_started": None,
              "date_finished": None}
        self.commit("erp", "production_order", mo)
        self.commit("erp", "production_order", {**mo, "state": "in_progress",
                                                 "date_started": started})
        first = {"id": 2 * oid, "production_order_id": oid, "state": "pending",
                 "inspector": None, "inspected_at": None, "notes": None, "created_at": started}
        self.commit("erp", "quality_inspection", first)
        if n % 5 == 0:
            self.commit("erp", "quality_inspection", {
                **first, "state": "failed", "inspector": "ann", "notes": "crack",
                "inspected_at": inspected})
            first = {**first, "id": 2 * oid + 1}
        self.commit("erp", "quality_inspection", {**first, "state": "passed",
                                                   "inspector": "bo", "inspected_at": inspected})
        self.commit("erp", "production_order", {**mo, "state": "done",
                                                 "qty_produced": D("10.000"),
                                                 "date_started": started,
                                                 "date_finished": inspected})
        shipment = {"id": oid, "name": f"BOUT{oid}", "sales_order_id": oid,
                    "warehouse_id": WAREHOUSE, "state": "shipped", "scheduled_date": today,
                    "shipped_at": shipped, "delivered_at": None, "carrier": "DHL",
                    "tracking_ref": f"BT{oid}"}
        self.commit("erp", "shipment", shipment)
        self.commit("erp", "shipment_line", {"id": oid, "shipment_id": oid,
                                             "sales_order_line_id": oid, "item_id": ITEM,
                                             "quantity": D("10.000")})
        self.commit("erp", "shipment", {**shipment, "state": "delivered",
                                        "delivered_at": delivered})

    def batches(self, size: int) -> Iterator[list[tuple[Handle, Item]]]:
        """Batches of ``size`` records, a slice of each topic in turn (a fetch)."""
        cursors = {t: 0 for t in self.topics}
        share = max(size // len(self.topics), 1)
        offsets = dict.fromkeys(self.topics, 0)
        while any(cursors[t] < len(items) for t, items in self.topics.items()):
            batch: list[tuple[Handle, Item]] = []
            for topic, items in self.topics.items():
                taken = items[cursors[topic]:cursors[topic] + share]
                cursors[topic] += len(taken)
                for item in taken:
                    offsets[topic] += 1
                    batch.append((ConsumerRecord(topic, 0, offsets[topic], 0, 0, b"k", item[0],
                                                 None, 1, len(item[0]), ()), item))
            yield batch


def fold_step(fold: StatusFold, overlay: Overlay, store: RocksState, codec: AvroCodec,
              counts: dict[str, int], caught_up: tuple[str, ...]) -> None:
    """One runner step as the service takes it: fold, output check, the records' Avro
    encoding, the overlay drained into RocksDB; the counts moved."""
    out = run_to_end(fold.steps(caught_up))
    fold.held.drained = []
    fold.held.record_progress(overlay)
    items = outputs(out.outcome)
    error = first_refused(codec, ((schema, r) for _, schema, _, r in items))
    assert error is None, error
    for _, schema, _, record in items:
        codec.encode(schema, record)
    changes = overlay.drain()
    counts["entries"] += len(changes)
    store.write(changes)
    counts["statuses"] += len(out.outcome.statuses)
    counts["risks"] += len(out.outcome.risks)
    counts["triages"] += len(out.outcome.triages)
    counts["steps"] += 1


def run(changes: int, batch: int, mode: str, folder: Path) -> dict[str, Any]:
    codec = AvroCodec(SchemaCatalogue.load())
    source = Orders(codec)
    for n in range(max(changes // CHANGES_PER_ORDER, 1)):
        source.order(n)
    batches = list(source.batches(batch))
    end = source.at
    store = RocksState(folder)
    overlay = Overlay(store)
    wall: Callable[[], datetime] = (
        (lambda: end + timedelta(days=1)) if mode == "backlog" else (lambda: fold.now))
    fold = StatusFold(overlay, lambda value: codec.decode(value).record, wall=wall)
    caught: tuple[str, ...] = () if mode == "backlog" else ("crm", "erp")
    counts = {"statuses": 0, "risks": 0, "triages": 0, "steps": 0, "entries": 0}

    def step(caught_up: tuple[str, ...]) -> None:
        fold_step(fold, overlay, store, codec, counts, caught_up)

    begin, wall_begin = time.process_time(), time.perf_counter()
    for records in batches:
        for handle, (_, feed) in records:
            feed(fold, handle)
        step(caught)
    while True:  # read to the end: what was deferred is built
        step(("crm", "erp"))
        if not fold.meta.deferred:
            break
    cpu, elapsed = time.process_time() - begin, time.perf_counter() - wall_begin
    delivered = fold.meta.stages.get("delivered", 0)
    store.close()
    return {"mode": mode, "changes": source.changes, "cpu": cpu, "elapsed": elapsed,
            "delivered": delivered, **counts}


def run_latency(changes: int, step_size: int, orders: int, folder: Path) -> dict[str, Any]:
    """The ``latency`` mode (module docstring)."""
    codec = AvroCodec(SchemaCatalogue.load())
    source = Orders(codec)
    mos: list[list[dict[str, Any]]] = []
    today = source.at.date()
    for n in range(orders):
        oid = BASE_ID + n
        source.commit("crm", "sales_order", {
            "id": oid, "number": f"BSO{oid}", "state": "confirmed",
            "requested_date": today + timedelta(days=60), "version": 1})
        source.identity(oid)
        source.commit("erp", "sales_order", {
            "id": oid, "name": f"BS{oid}", "state": "in_production", "warehouse_id": WAREHOUSE,
            "requested_date": today + timedelta(days=60), "crm_order_id": oid})
        source.commit("erp", "sales_order_line", {
            "id": oid, "order_id": oid, "line_no": 1, "item_id": ITEM, "quantity": D("10.000")})
        rows = []
        for m in range(10):
            mo = {"id": oid * 10 + m, "name": f"BMO{oid}-{m}", "item_id": ITEM,
                  "warehouse_id": WAREHOUSE, "sales_order_id": oid,
                  "sales_order_line_id": oid, "quantity": D("1000000.000"),
                  "qty_produced": D("0.000"), "state": "in_progress",
                  "date_planned_start": today, "date_planned_finish": today + timedelta(days=30),
                  "date_started": source.at, "date_finished": None}
            source.commit("erp", "production_order", mo)
            rows.append(mo)
        mos.append(rows)
    setup = list(source.batches(5_000))
    store = RocksState(folder)
    overlay = Overlay(store)
    fold = StatusFold(overlay, lambda value: codec.decode(value).record, wall=lambda: fold.now)
    counts = {"statuses": 0, "risks": 0, "triages": 0, "steps": 0, "entries": 0}

    def step() -> None:
        fold_step(fold, overlay, store, codec, counts, ("crm", "erp"))

    for records in setup:
        for handle, (_, feed) in records:
            feed(fold, handle)
        step()
    # the timed phase's feed, made beforehand
    transactions: list[list[ChangeEvent]] = []
    markers: list[TransactionMarker] = []
    at, lsn, n = source.at, source.lsn, 0
    while n < changes:
        rows = mos[len(transactions) % orders]
        lsn += 100
        at += timedelta(milliseconds=10)  # 1,000 changes/s
        xid = str(lsn)
        events = []
        for order, mo in enumerate(rows, start=1):
            mo["qty_produced"] += 1
            events.append(change_event("erp", "production_order", op=ChangeOp.UPDATE,
                                       after=dict(mo), commit_lsn=lsn, lsn=lsn + order,
                                       transaction_id=xid, order=order, commit_time=at))
        transactions.append(events)
        markers.append(TransactionMarker(TransactionStatus.END, xid, f"{xid}:{lsn}",
                                         len(events), {"erp.production_order": len(events)},
                                         at))
        n += len(events)
    offset = 0

    def handle(topic: str) -> Handle:
        nonlocal offset
        offset += 1
        return ConsumerRecord(topic, 0, offset, 0, 0, b"k", b"v", None, 1, 1, ())

    per_step = max(step_size // 10, 1)
    begin, wall_begin = time.process_time(), time.perf_counter()
    for first in range(0, len(transactions), per_step):
        for events, marker in zip(transactions[first:first + per_step],
                                  markers[first:first + per_step], strict=True):
            for event in events:
                fold.change(event, handle("cdc.erp.production_order"))
            fold.marker("erp", marker, handle("erp.transaction"))
        fold.heartbeat("crm", marker.ts or at, handle("crm.heartbeat"))
        step()
    cpu, elapsed = time.process_time() - begin, time.perf_counter() - wall_begin
    store.close()
    return {"mode": "latency", "changes": n, "cpu": cpu, "elapsed": elapsed,
            "delivered": 0, **{k: v for k, v in counts.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--changes", type=int, default=60_000)
    parser.add_argument("--batch", type=int, default=5_000, help="records a batch (a fetch)")
    parser.add_argument("--mode", choices=("backlog", "live", "both", "latency"),
                        default="both")
    parser.add_argument("--step", type=int, default=500,
                        help="latency mode: changes a step")
    parser.add_argument("--orders", type=int, default=100, help="latency mode: ERP orders")
    args = parser.parse_args()
    for mode in ("backlog", "live") if args.mode == "both" else (args.mode,):
        with tempfile.TemporaryDirectory() as folder:
            if mode == "latency":
                r = run_latency(args.changes, args.step, args.orders, Path(folder))
            else:
                r = run(args.changes, args.batch, mode, Path(folder))
        print(f"{r['mode']:>7}: {r['changes']:,} changes in {r['steps']:,} steps, "
              f"{r['changes'] / r['cpu']:>8,.0f} changes/s of CPU "
              f"({1e6 * r['cpu'] / r['changes']:.0f} us a change; {r['elapsed']:.1f} s); "
              f"{r['entries'] / r['changes']:.1f} state entries written a change; "
              f"{r['statuses']:,} statuses, {r['risks']:,} risk events sent; "
              f"{r['delivered']:,} orders delivered")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak:,.0f} MB (the synthetic changes included)")
    print(f"reproduce: {reproduce_line('bench.production_status_fold')}")


if __name__ == "__main__":
    main()

"""receivables' live step in-process: CPU per ERP payment at the latency benchmark's load.

Not a test: it prints figures and the command that reproduces them.

    uv run python -m bench.receivables_live                      # 20,000 payments
    uv run python -m bench.receivables_live --payments 5000 --step 250 --profile

The in-process twin of :mod:`bench.receivables_latency`'s payment phase (no stack, no
Kafka): ``--contracts`` active CRM contracts of one customer, 12 monthly installments
each (a contract and its plan one CRM transaction), every installment invoiced (a
contract's invoices one ERP transaction), folded untimed; then ``--payments`` payments
of 0.01, one per ERP transaction (with its END marker), round robin over the invoices,
in steps of ``--step`` payments with a CRM heartbeat each, the source clock the wall
clock (1,000 payments/s). Each step is the runner's: the service's fold
(:class:`~services.receivables.source_fold.ReceivablesFold` over the checkpoint's
overlay on RocksDB), the output check, the published records' Avro encoding, the
integration rows built, the overlay drained into RocksDB. Only the payment phase is
timed: CPU seconds per payment (the service keeps up with 1,000 payments/s only well
under 1 ms, beside Kafka, Connect and PostgreSQL on the same cores).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from aiokafka.structs import ConsumerRecord

from bench.common import reproduce_line
from services.receivables import tables
from services.receivables.emit import (
    DISCREPANCY_SCHEMA,
    POSITION_SCHEMA,
    alerts,
    discrepancy_record,
    position_record,
)
from services.receivables.source_fold import ReceivablesFold
from services.shared.avro import AvroCodec, SchemaCatalogue
from services.shared.changes import ChangeEvent
from services.shared.cooperative import run_to_end
from services.shared.output_check import first_refused
from services.shared.state.rocks import RocksState
from services.shared.state.store import Overlay
from services.shared.stateful import Handle
from services.shared.transactions import TransactionMarker, TransactionStatus
from tests.builders import change_event

INSTALLMENTS = 12
ACCOUNT, CUSTOMER = 7, 70
CONTRACT_BASE, INVOICE_BASE, PAYMENT_BASE = 1_000_000, 5_000_000, 9_000_000


class Feed:
    """Whole source transactions handed to the fold as the runner reads them."""

    def __init__(self, fold: ReceivablesFold) -> None:
        self.fold = fold
        self.lsn = 1 << 40
        self.offset = 0

    def handle(self, topic: str) -> Handle:
        self.offset += 1
        return ConsumerRecord(topic, 0, self.offset, 0, 0, b"k", b"v", None, 1, 1, ())

    def transaction(self, database: str, rows: list[tuple[str, dict[str, Any]]],
                    at: datetime) -> None:
        self.lsn += 100
        xid = str(self.lsn)
        events: list[ChangeEvent] = [
            change_event(database, table, after=row, commit_lsn=self.lsn, lsn=self.lsn + n,
                         transaction_id=xid, order=n, commit_time=at)
            for n, (table, row) in enumerate(rows, start=1)]
        for event in events:
            self.fold.change(event, self.handle(f"cdc.{database}.{event.table}"))
        counts: dict[str, int] = {}
        for event in events:
            name = f"{database}.{event.table}"
            counts[name] = counts.get(name, 0) + 1
        self.fold.marker(database, TransactionMarker(
            TransactionStatus.END, xid, f"{xid}:{self.lsn}", len(events), counts, at),
            self.handle(f"{database}.transaction"))

    def heartbeat(self, database: str, at: datetime) -> None:
        self.fold.heartbeat(database, at, self.handle(f"{database}.heartbeat"))


def outputs_cpu(step: Any, fold: ReceivablesFold, codec: AvroCodec, now: datetime) -> int:
    """What the shell does with a step besides I/O: check, encode, build rows; records."""
    out, as_of = step.outcome, fold.core.as_of
    positions = [p for p in out.contracts.values() if p is not None]
    raised = [a for _, a in out.discrepancies.values() if a is not None]
    error = first_refused(codec, (
        *((POSITION_SCHEMA, position_record(p, as_of)) for p in positions),
        *((DISCREPANCY_SCHEMA, discrepancy_record(d, "raised", now)) for d in raised)))
    assert error is None, error
    records = [(DISCREPANCY_SCHEMA, r) for _, r in alerts(out, {}, now)]
    records += [(POSITION_SCHEMA, position_record(p, as_of)) for p in positions]
    for schema, record in records:
        codec.encode(schema, record)
    for p in positions:
        tables.position_row(p, as_of)
    for i in out.installments.values():
        if i is not None:
            tables.installment_row(i, as_of)
    for c in out.customers.values():
        if c is not None:
            tables.customer_row(c, as_of)
    for e in out.plan.values():
        if e is not None:
            tables.plan_row(e)
    return len(records)


def run(contracts: int, payments: int, step_size: int, folder: Path,
        profile: bool) -> dict[str, Any]:
    codec = AvroCodec(SchemaCatalogue.load())
    store = RocksState(folder)
    overlay = Overlay(store)
    fold = ReceivablesFold(overlay)
    feed = Feed(fold)
    counts = {"steps": 0, "records": 0, "entries": 0, "contracts": 0, "installments": 0,
              "customers": 0}

    def step(at: datetime) -> None:
        feed.heartbeat("crm", at)
        out = run_to_end(fold.steps(("crm", "erp")))
        fold.held.drained = []
        fold.held.record_progress(overlay)
        counts["records"] += outputs_cpu(out, fold, codec, at)
        counts["contracts"] += len(out.outcome.contracts)
        counts["installments"] += len(out.outcome.installments)
        counts["customers"] += len(out.outcome.customers)
        changes = overlay.drain()
        counts["entries"] += len(changes)
        store.write(changes)
        counts["steps"] += 1

    at = datetime.now(UTC) - timedelta(hours=1)
    today = at.date()
    invoices: list[int] = []
    for c in range(contracts):
        cid = CONTRACT_BASE + c
        rows: list[tuple[str, dict[str, Any]]] = [("contract", {
            "id": cid, "number": f"BENCH-LAT-{c}", "account_id": ACCOUNT, "state": "active",
            "currency_code": "EUR", "total_amount": Decimal(100 * INSTALLMENTS),
            "start_date": today - timedelta(days=30)})]
        rows += [("installment", {
            "id": cid * 100 + s, "contract_id": cid, "seq": s,
            "due_date": today + timedelta(days=30 * (s - 1)), "amount": Decimal(100),
            "currency_code": "EUR", "state": "due"}) for s in range(1, INSTALLMENTS + 1)]
        feed.transaction("crm", rows, at)
        invoice_rows: list[tuple[str, dict[str, Any]]] = []
        for s in range(1, INSTALLMENTS + 1):
            iid = INVOICE_BASE + c * INSTALLMENTS + s
            invoices.append(iid)
            invoice_rows.append(("invoice", {
                "id": iid, "name": f"INV{iid}", "customer_id": CUSTOMER,
                "crm_contract_id": cid, "installment_seq": s, "state": "posted",
                "currency_code": "EUR", "amount_untaxed": Decimal(100), "amount_tax": 0,
                "amount_total": Decimal(100), "amount_residual": Decimal(100),
                "invoice_date": today, "due_date": today + timedelta(days=30 * (s - 1))}))
        feed.transaction("erp", invoice_rows, at)
        if (c + 1) % 100 == 0:
            step(at)
    step(at)
    # the payment phase: the same clock as the stack benchmark's (1,000/s)
    profiler = cProfile.Profile() if profile else None
    setup = dict(counts)
    begin, wall_begin = time.process_time(), time.perf_counter()
    if profiler is not None:
        profiler.enable()
    for n in range(payments):
        at += timedelta(milliseconds=1)
        feed.transaction("erp", [("payment", {
            "id": PAYMENT_BASE + n, "reference": f"BENCH-PAY-{n}", "customer_id": CUSTOMER,
            "invoice_id": invoices[n % len(invoices)], "amount": Decimal("0.01"),
            "currency_code": "EUR", "state": "posted", "paid_at": at})], at)
        if (n + 1) % step_size == 0:
            step(at)
    step(at)
    if profiler is not None:
        profiler.disable()
    cpu, elapsed = time.process_time() - begin, time.perf_counter() - wall_begin
    store.close()
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(45)
    timed = {k: counts[k] - setup[k] for k in counts}
    return {"payments": payments, "cpu": cpu, "elapsed": elapsed, **timed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--contracts", type=int, default=500)
    parser.add_argument("--payments", type=int, default=20_000)
    parser.add_argument("--step", type=int, default=500, help="payments a step")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ambidex-recv-live-") as folder:
        r = run(args.contracts, args.payments, args.step, Path(folder), args.profile)
    n = r["payments"]
    print()
    print("Ambidex receivables live step, in-process (no stack)")
    print(f"  payments        {n:,} one-payment ERP transactions over {args.contracts:,} "
          f"contracts of one customer, {args.step:,} a step ({r['steps']:,} steps)")
    print(f"  CPU             {r['cpu'] * 1e6 / n:,.0f} µs a payment "
          f"({n / r['cpu']:,.0f} payments per CPU second; wall {r['elapsed']:.1f} s)")
    print(f"  a step wrote    {r['contracts'] / r['steps']:,.0f} positions, "
          f"{r['installments'] / r['steps']:,.0f} installments, "
          f"{r['customers'] / r['steps']:,.1f} customers, "
          f"{r['records'] / r['steps']:,.0f} records, {r['entries'] / r['steps']:,.0f} "
          "state entries")
    print(f"  reproduce: {reproduce_line('bench.receivables_live')}")


if __name__ == "__main__":
    main()

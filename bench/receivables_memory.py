"""receivables' fold over the real local state: RSS and CPU a change (no stack, no Kafka).

Not a test: it prints figures and the command that reproduces them.

    uv run python -m bench.receivables_memory                   # 200,000 changes
    uv run python -m bench.receivables_memory --changes 400000 --batch 20000

Synthetic source changes shaped like :mod:`bench.receivables`' (contracts of 12
installments, each invoiced and paid once; one change a transaction) go through
:class:`~services.receivables.source_fold.ReceivablesFold` over a
:class:`~services.shared.state.rocks.RocksState` in a temporary directory, through an
:class:`~services.shared.state.store.Overlay` drained into the state after every step of
``--batch`` changes, as the checkpoint does (no changelog, no effects). The process's
RSS is printed every few steps: it must stay flat with the changes replayed (issue 11:
the overlay held orjson's 4 KiB buffers, ~200 MB a step), and so must the CPU a change
since the last line (issue 11: a customer's next due date read all its contracts, and
RocksDB reloaded whole filter blocks once the state was compacted), and the entries a
customer's next due date reads a change. The full service benchmark
is :mod:`bench.receivables`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from services.receivables.source_fold import ReceivablesFold
from services.shared.changes import ChangeEvent, ChangeOp, RecordOrigin
from services.shared.cooperative import run_to_end
from services.shared.position import SourcePosition
from services.shared.state.rocks import RocksState
from services.shared.state.store import Overlay

BASE_ID = 20_000_000
#: the key prefixes a customer's next due date is read from (``Q``: one entry per
#: contract, the old layout; ``W``: one per due date)
NEXT_DUE_PREFIXES = (b"Q", b"W")


class CountingOverlay(Overlay):
    """The overlay, counting the entries the fold's scans of the customers' next due
    dates hand out (the other scans are passed through untouched, not slowed)."""

    def __init__(self, base: RocksState) -> None:
        super().__init__(base)
        self.next_due_entries = 0

    def scan(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        entries = super().scan(prefix, start)
        return self._counted(entries) if prefix[:1] in NEXT_DUE_PREFIXES else entries

    def _counted(self, entries: Iterator[tuple[bytes, bytes]]
                 ) -> Iterator[tuple[bytes, bytes]]:
        for entry in entries:
            self.next_due_entries += 1
            yield entry


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Handle:
    """A consumed record's stand-in (the fold only hands handles back)."""

    __slots__ = ("offset", "partition", "topic")

    def __init__(self, topic: str, offset: int) -> None:
        self.topic, self.partition, self.offset = topic, 0, offset


def changes(count: int, installments: int) -> Iterator[ChangeEvent]:
    lsn = 1 << 41
    today = date.today()
    at = datetime.now(UTC)

    def event(database: str, table: str, row: dict[str, Any]) -> ChangeEvent:
        nonlocal lsn
        lsn += 1
        return ChangeEvent(database, database, table, ChangeOp.CREATE, {"id": row["id"]}, None,
                           row, SourcePosition(lsn, lsn), None, None, None, at, False,
                           RecordOrigin(f"cdc.{database}.{table}", 0, lsn))

    produced = 0
    contract = 0
    amount = Decimal("100.00")
    while produced < count:
        cid = BASE_ID + contract
        yield event("crm", "contract", {
            "id": cid, "number": f"BC{cid}", "account_id": 1 + contract % 50,
            "sales_order_id": None, "state": "active", "currency_code": "EUR",
            "total_amount": amount * installments, "start_date": today - timedelta(400)})
        for s in range(1, installments + 1):
            n = contract * installments + s
            due = today - timedelta(360 - 30 * s)
            yield event("crm", "installment", {
                "id": BASE_ID + n, "contract_id": cid, "seq": s, "due_date": due,
                "amount": amount, "currency_code": "EUR", "state": "scheduled"})
            yield event("erp", "invoice", {
                "id": BASE_ID + n, "name": f"BINV/{n}", "customer_id": 1, "sales_order_id": None,
                "crm_contract_id": cid, "installment_seq": s, "state": "posted",
                "currency_code": "EUR", "amount_untaxed": amount, "amount_tax": Decimal("0.00"),
                "amount_total": amount, "amount_residual": amount, "invoice_date": None,
                "due_date": due})
            yield event("erp", "payment", {
                "id": BASE_ID + n, "reference": f"BPAY/{n}", "customer_id": 1,
                "invoice_id": BASE_ID + n, "amount": amount if n % 4 else Decimal("60.00"),
                "currency_code": "EUR", "state": "posted", "paid_at": None})
        produced += 1 + 3 * installments
        contract += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--changes", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=20_000)
    parser.add_argument("--installments", type=int, default=12)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="receivables-memory-") as directory:
        state = RocksState(Path(directory) / "state")
        overlay = CountingOverlay(state)
        fold = ReceivablesFold.load(overlay)
        feed = changes(args.changes, args.installments)
        done = steps = 0
        start_rss, begin = rss_mb(), time.process_time()
        since, since_done, since_read = begin, 0, 0
        print(f"start: RSS {start_rss:.0f} MB")
        while done < args.changes:
            for event in feed:
                fold.change(event, Handle(event.origin.topic, done))
                done += 1
                if done % args.batch == 0:
                    break
            now = datetime.now(UTC)
            for database in ("crm", "erp"):
                fold.heartbeat(database, now, Handle(f"heartbeat.cdc.{database}", 0))
            run_to_end(fold.steps(("crm", "erp")))
            state.write(overlay.drain())
            steps += 1
            if steps % 5 == 0 or done >= args.changes:
                now_cpu = time.process_time()
                print(f"{done:>10,} changes: RSS {rss_mb():6.0f} MB, CPU "
                      f"{1e6 * (now_cpu - begin) / done:.0f} us a change, "
                      f"{1e6 * (now_cpu - since) / (done - since_done):.0f} since the last "
                      "line; next-due entries scanned a change "
                      f"{(overlay.next_due_entries - since_read) / (done - since_done):.2f} "
                      "since the last line", flush=True)
                since, since_done, since_read = now_cpu, done, overlay.next_due_entries
            if done % args.batch:
                break  # the feed ran out
        state.close()
    print(f"command: uv run python -m bench.receivables_memory --changes {args.changes} "
          f"--batch {args.batch} --installments {args.installments}")


if __name__ == "__main__":
    main()

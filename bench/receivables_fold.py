"""receivables' pure fold: CPU time per change, by contract size (no stack, no I/O).

Not a test: it prints figures and the command that reproduces them.

    uv run python -m bench.receivables_fold                  # 36,000 changes a size
    uv run python -m bench.receivables_fold --changes 10000 --batch 1

Each contract is signed with its plan (one CRM transaction: contract + installments),
then every installment is invoiced and paid in part, in batches of ``--batch`` changes
folded with ``Receivables.apply_all`` over an in-memory ordered key-value map, and the
as-of date moves a year. Contracts of 12 and of 1,200 installments: the CPU time per
change must stay flat with the contract's size (DESIGN.md 4). The full service
benchmark (replay through Kafka, ERP payment -> CRM write-back latency, RSS) comes with
the service shell.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from services.receivables.fold import Change, Receivables
from services.receivables.records import Table
from services.shared.position import SourcePosition

START = date(2026, 1, 1)


class SortedMap:
    """An ordered ``bytes -> bytes`` map (the fold's KeyValue port), in memory."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.keys: list[bytes] = []

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        if key not in self.data:
            bisect.insort(self.keys, key)
        self.data[key] = value

    def delete(self, key: bytes) -> None:
        if self.data.pop(key, None) is not None:
            self.keys.pop(bisect.bisect_left(self.keys, key))

    def scan(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        i = bisect.bisect_left(self.keys, prefix if start is None else max(prefix, start))
        while i < len(self.keys) and self.keys[i].startswith(prefix):
            yield self.keys[i], self.data[self.keys[i]]
            i += 1


def _changes(contracts: int, installments: int) -> list[Change]:
    lsn = itertools.count(100, 10)

    def at() -> SourcePosition:
        return SourcePosition(next(lsn), 0)

    changes: list[Change] = []
    amount = Decimal("100.00")
    for c in range(1, contracts + 1):
        changes.append((Table.CONTRACT, c, at(), {
            "id": c, "number": f"CT{c:07d}", "account_id": c % 50, "state": "active",
            "currency_code": "EUR", "total_amount": amount * installments,
            "start_date": START}))
        for s in range(1, installments + 1):
            i = c * 10_000 + s
            due = START + timedelta(days=30 * (s % 24))
            changes.append((Table.INSTALLMENT, i, at(), {
                "id": i, "contract_id": c, "seq": s, "due_date": due, "amount": amount,
                "currency_code": "EUR", "state": "scheduled"}))
        for s in range(1, installments + 1):
            i = c * 10_000 + s
            due = START + timedelta(days=30 * (s % 24))
            changes.append((Table.INVOICE, i, at(), {
                "id": i, "name": f"INV/{i}", "customer_id": c % 50, "crm_contract_id": c,
                "installment_seq": s, "state": "posted", "currency_code": "EUR",
                "amount_total": amount, "amount_residual": amount, "due_date": due}))
            changes.append((Table.PAYMENT, i, at(), {
                "id": i, "reference": f"PAY/{i}", "customer_id": c % 50, "invoice_id": i,
                "amount": Decimal("60.00"), "currency_code": "EUR", "state": "posted",
                "paid_at": datetime(2026, 1, 15, tzinfo=UTC)}))
    return changes


def measure(installments: int, changes: int, batch: int) -> dict[str, Any]:
    contracts = max(1, changes // (1 + 3 * installments))
    steps = _changes(contracts, installments)
    fold = Receivables(SortedMap())
    fold.advance(START)
    begin = time.process_time()
    for k in range(0, len(steps), batch):
        fold.apply_all(steps[k:k + batch])
    cpu = time.process_time() - begin
    begin = time.process_time()
    moved = fold.advance(START + timedelta(days=365))
    advance = time.process_time() - begin
    return {"installments": installments, "contracts": contracts, "changes": len(steps),
            "us_per_change": 1e6 * cpu / len(steps), "changes_per_s": len(steps) / cpu,
            "advance_s": advance, "moved": len(moved.installments)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--changes", type=int, default=36_000)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    for size in (12, 1_200):
        r = measure(size, args.changes, args.batch)
        print(f"{r['installments']:>5} installments x {r['contracts']:>5} contracts: "
              f"{r['changes']:,} changes, {r['us_per_change']:.0f} us CPU a change "
              f"({r['changes_per_s']:,.0f}/s); as-of date +1 year: {r['advance_s']:.2f} s "
              f"CPU, {r['moved']:,} installment positions moved")
    print(f"command: uv run python -m bench.receivables_fold --changes {args.changes} "
          f"--batch {args.batch}")


if __name__ == "__main__":
    main()

"""Test helpers for receivables: an ordered in-memory key-value state and row builders."""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any


class MemoryKV:
    """Ordered ``bytes -> bytes`` map (the fold's :class:`KeyValue` port), counting reads."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.keys: list[bytes] = []
        self.reads = 0

    def get(self, key: bytes) -> bytes | None:
        self.reads += 1
        return self.data.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        if key not in self.data:
            bisect.insort(self.keys, key)
        self.data[key] = value

    def delete(self, key: bytes) -> None:
        if self.data.pop(key, None) is not None:
            self.keys.pop(bisect.bisect_left(self.keys, key))

    def scan(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        low = prefix if start is None else max(prefix, start)
        i = bisect.bisect_left(self.keys, low)
        while i < len(self.keys):
            key = self.keys[i]
            if not key.startswith(prefix):
                break
            self.reads += 1
            yield key, self.data[key]
            i += 1


def contract(cid: int, *, total: str = "300.00", state: str = "active", currency: str = "EUR",
             account: int = 1) -> dict[str, Any]:
    return {"id": cid, "number": f"CT{cid:07d}", "account_id": account, "sales_order_id": None,
            "state": state, "currency_code": currency, "total_amount": Decimal(total),
            "start_date": date(2026, 1, 1)}


def installment(iid: int, cid: int, seq: int, due: date, amount: str = "100.00",
                currency: str = "EUR", state: str = "scheduled") -> dict[str, Any]:
    return {"id": iid, "contract_id": cid, "seq": seq, "due_date": due,
            "amount": Decimal(amount), "currency_code": currency, "state": state}


def invoice(iid: int, cid: int | None, seq: int | None, total: str = "100.00", *,
            state: str = "posted", currency: str = "EUR", residual: str | None = None,
            due: date | None = None, customer: int = 1) -> dict[str, Any]:
    return {"id": iid, "name": f"INV/{iid:07d}", "customer_id": customer,
            "sales_order_id": None, "crm_contract_id": cid, "installment_seq": seq,
            "state": state, "currency_code": currency, "amount_untaxed": Decimal(total),
            "amount_tax": Decimal("0.00"), "amount_total": Decimal(total),
            "amount_residual": Decimal(total if residual is None else residual),
            "invoice_date": None, "due_date": due}


def payment(pid: int, invoice_id: int | None, amount: str, *, currency: str = "EUR",
            state: str = "posted", paid_on: date | None = None,
            customer: int = 1) -> dict[str, Any]:
    paid_at = None if paid_on is None else datetime(paid_on.year, paid_on.month, paid_on.day,
                                                    9, 30, tzinfo=UTC)
    return {"id": pid, "reference": f"PAY/{pid:07d}", "customer_id": customer,
            "invoice_id": invoice_id, "amount": Decimal(amount), "currency_code": currency,
            "state": state, "paid_at": paid_at}

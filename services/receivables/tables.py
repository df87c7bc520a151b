"""The integration tables' rows, and the differences between two sets of them (pure).

Column names are those of ``deploy/sql/crm/050_receivables.sql`` and
``deploy/sql/erp/050_receivables.sql`` (checked in ``tests/unit/test_receivables_tables.py``).
The shell writes these rows with the position-guarded sink (plus
``source_commit_lsn``/``source_lsn``/``deleted``); ``ambidex reconcile receivables``
reads the live rows back, builds the expected ones from :func:`~.recompute.recompute`
and prints :func:`differences` (exit 1 if any).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

import orjson

from services.receivables.effects import PlanEntry, PlanHeader
from services.receivables.recompute import Recomputed
from services.receivables.rules import (
    ContractPosition,
    CustomerPosition,
    Discrepancy,
    InstallmentPosition,
)

Row = dict[str, Any]

#: table -> its key columns
KEYS: dict[str, tuple[str, ...]] = {
    "crm_integration.receivable_position": ("contract_id",),
    "crm_integration.receivable_installment": ("contract_id", "seq"),
    "crm_integration.receivable_customer": ("account_id", "currency_code"),
    "crm_integration.receivable_discrepancy": ("discrepancy_id",),
    "erp_integration.expected_receivable_plan": ("crm_contract_id",),
    "erp_integration.expected_receivable": ("crm_contract_id", "installment_seq"),
}


def _ids(values: Iterable[Any]) -> str:
    """A jsonb array column's value as JSON text (the sink writes no array columns)."""
    return orjson.dumps(list(values)).decode()


def position_row(p: ContractPosition, as_of: date) -> Row:
    a = p.aging
    return {"contract_id": p.contract_id, "contract_number": p.number,
            "account_id": p.account_id, "state": p.state, "currency_code": p.currency,
            "contracted": p.contracted, "installments": p.installments,
            "scheduled": p.scheduled, "invoiced": p.invoiced, "paid": p.paid,
            "outstanding": p.outstanding, "overdue": p.overdue, "overdue_1_30": a[0],
            "overdue_31_60": a[1], "overdue_61_90": a[2], "overdue_over_90": a[3],
            "next_due_date": p.next_due_date, "next_due_amount": p.next_due_amount,
            "incomplete": _ids(p.incomplete), "as_of": as_of}


def installment_row(p: InstallmentPosition, as_of: date) -> Row:
    return {"contract_id": p.contract_id, "seq": p.seq, "installment_id": p.installment_id,
            "due_date": p.due_date, "currency_code": p.currency, "scheduled": p.scheduled,
            "invoiced": p.invoiced, "paid": p.paid, "outstanding": p.outstanding,
            "overdue": p.overdue, "aging_bucket": p.aging_bucket, "waived": p.waived,
            "last_paid_on": p.last_paid_on, "erp_invoice_ids": _ids(p.invoice_ids),
            "as_of": as_of}


def customer_row(p: CustomerPosition, as_of: date) -> Row:
    a = p.aging
    return {"account_id": p.account_id, "currency_code": p.currency,
            "contracts": p.contracts, "contracted": p.contracted, "scheduled": p.scheduled,
            "invoiced": p.invoiced, "paid": p.paid, "outstanding": p.outstanding,
            "overdue": p.overdue, "overdue_1_30": a[0], "overdue_31_60": a[1],
            "overdue_61_90": a[2], "overdue_over_90": a[3], "next_due_date": p.next_due_date,
            "next_due_amount": p.next_due_amount, "as_of": as_of}


def discrepancy_row(d: Discrepancy) -> Row:
    """(``raised_at`` is the shell's: when it first wrote the row.)"""
    return {"discrepancy_id": d.identity, "kind": d.kind.value, "reason": d.reason,
            "currency_code": d.currency, "crm_amount": d.crm_amount,
            "erp_amount": d.erp_amount, "contract_id": d.contract_id,
            "installment_seq": d.installment_seq, "crm_installment_id": d.crm_installment_id,
            "erp_invoice_ids": _ids(d.erp_invoice_ids),
            "erp_payment_ids": _ids(d.erp_payment_ids), "erp_customer_id": d.erp_customer_id,
            "due_date": d.due_date}


def plan_header_row(h: PlanHeader) -> Row:
    return {"crm_contract_id": h.contract_id, "status": h.status,
            "crm_contract_number": h.number, "crm_account_id": h.account_id,
            "currency_code": h.currency, "contract_total": h.total}


def plan_row(e: PlanEntry) -> Row:
    return {"crm_contract_id": e.contract_id, "installment_seq": e.seq,
            "crm_installment_id": e.installment_id, "due_date": e.due_date,
            "amount": e.amount, "currency_code": e.currency, "waived": e.waived}


def expected_rows(result: Recomputed, as_of: date) -> dict[str, list[Row]]:
    """Every live integration row the recomputation says there should be."""
    return {
        "crm_integration.receivable_position": [
            position_row(p, as_of) for p in result.contracts.values()],
        "crm_integration.receivable_installment": [
            installment_row(p, as_of) for p in result.installments.values()],
        "crm_integration.receivable_customer": [
            customer_row(p, as_of) for p in result.customers.values()],
        "crm_integration.receivable_discrepancy": [
            discrepancy_row(d) for d in result.discrepancies.values()],
        "erp_integration.expected_receivable_plan": [
            plan_header_row(h) for h in result.plan_headers.values()],
        "erp_integration.expected_receivable": [plan_row(e) for e in result.plan.values()],
    }


def _normal(value: Any) -> Any:
    if isinstance(value, str) and value[:1] == "[":
        try:
            return orjson.loads(value)  # jsonb read back as text or as a list: compare lists
        except orjson.JSONDecodeError:
            return value
    return value


@dataclass(frozen=True, slots=True)
class RowDifference:
    """One key whose row differs: ``missing``, ``not expected``, or the columns that
    disagree (``column: written != expected recomputed``, ``; ``-joined)."""

    table: str
    key: dict[str, Any]
    problem: str

    def __str__(self) -> str:
        return f"{self.table} {self.key}: {self.problem}"

    def as_json(self) -> dict[str, Any]:
        return {"table": self.table, "key": self.key, "difference": self.problem}


def differences(table: str, expected: Iterable[Mapping[str, Any]],
                actual: Iterable[Mapping[str, Any]]) -> list[RowDifference]:
    """One entry per key whose row differs (missing, extra, or columns that disagree);
    only the columns of the expected rows are compared."""
    keys = KEYS[table]
    want = {tuple(r[k] for k in keys): r for r in expected}
    have = {tuple(r[k] for k in keys): r for r in actual}
    found: list[RowDifference] = []
    for key in sorted(set(want) | set(have), key=repr):
        named = dict(zip(keys, key, strict=True))
        if key not in have:
            found.append(RowDifference(table, named, "missing"))
        elif key not in want:
            found.append(RowDifference(table, named, "not expected"))
        else:
            bad = [f"{c}: {have[key].get(c)!r} != expected {v!r}"
                   for c, v in want[key].items()
                   if _normal(have[key].get(c)) != _normal(v)]
            if bad:
                found.append(RowDifference(table, named, "; ".join(bad)))
    return found

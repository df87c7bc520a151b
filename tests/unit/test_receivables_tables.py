"""receivables: the integration tables' rows (services.receivables.tables) match the
migrations, and the reconcile comparison finds every difference.

Invariants protected here: every column the service writes exists in
``deploy/sql/{crm,erp}/050_receivables.sql`` and every value column of those tables is
written (a renamed column fails here, not in production); :func:`differences` reports a
missing row, an extra row and a changed figure, and nothing for equal rows (jsonb id
lists compare as lists).
"""

from __future__ import annotations

import re
from datetime import date
from decimal import Decimal
from pathlib import Path

from services.receivables import tables
from services.receivables.recompute import recompute
from services.receivables.records import Table
from tests.unit.receivables_support import contract, installment, invoice, payment

SQL = Path(__file__).resolve().parents[2] / "deploy" / "sql"
BOOKKEEPING = {"source_commit_lsn", "source_lsn", "deleted", "updated_at", "raised_at"}


def _columns(path: Path) -> dict[str, set[str]]:
    text = path.read_text()
    result = {}
    for name, body in re.findall(r"CREATE TABLE IF NOT EXISTS (\S+) \((.*?)\n\);", text, re.S):
        result[name] = {m for m in re.findall(r"^\s{4}(\w+)\s", body, re.M)
                        if m not in ("PRIMARY", "CHECK", "UNIQUE")}
    return result


def _result() -> tables.Recomputed:
    rows = {
        Table.CONTRACT: [contract(1, total="300.00")],
        Table.INSTALLMENT: [installment(1, 1, 1, date(2026, 1, 10)),
                            installment(2, 1, 2, date(2026, 2, 10))],
        Table.INVOICE: [invoice(1, 1, 1, "100.00", due=date(2026, 1, 10)),
                        invoice(2, 1, 2, "90.00")],
        Table.PAYMENT: [payment(1, 1, "60.00"), payment(2, None, "5.00")],
    }
    return recompute(rows, date(2026, 3, 1))


def test_rows_have_exactly_the_columns_of_the_migrations() -> None:
    columns = _columns(SQL / "crm" / "050_receivables.sql")
    columns |= _columns(SQL / "erp" / "050_receivables.sql")
    expected = tables.expected_rows(_result(), date(2026, 3, 1))
    assert set(expected) == set(columns) == set(tables.KEYS)
    for table, rows in expected.items():
        assert rows, table
        for row in rows:
            assert set(row) == columns[table] - BOOKKEEPING, table


def test_differences_finds_missing_extra_and_changed_rows() -> None:
    expected = tables.expected_rows(_result(), date(2026, 3, 1))
    name = "crm_integration.receivable_installment"
    live = [dict(r) for r in expected[name]]
    assert tables.differences(name, expected[name], live) == []
    live[0]["paid"] = Decimal("59.99")
    live[0]["erp_invoice_ids"] = [1]  # jsonb read back as a list: equal
    extra = {**live[1], "seq": 9}
    lines = tables.differences(name, expected[name], [live[0], extra])
    assert [str(line) for line in lines] == [
        f"{name} {{'contract_id': 1, 'seq': 1}}: paid: Decimal('59.99') != expected "
        "Decimal('60.00')",
        f"{name} {{'contract_id': 1, 'seq': 2}}: missing",
        f"{name} {{'contract_id': 1, 'seq': 9}}: not expected",
    ]
    discrepancies = tables.expected_rows(_result(), date(2026, 3, 1))[
        "crm_integration.receivable_discrepancy"]
    assert {r["kind"] for r in discrepancies} == {
        "invoice_amount_mismatch", "payment_short", "payment_without_invoice",
        "installments_total_mismatch"}

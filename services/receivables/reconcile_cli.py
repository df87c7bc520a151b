"""`ambidex reconcile receivables`: the service's six integration tables against a
recomputation from the two databases' rows.

Reads ``crm.contract``, ``crm.installment``, ``erp.invoice`` and ``erp.payment``, runs
:func:`~services.receivables.recompute.recompute` as of the service's as-of date (the
newest ``as_of`` it wrote; today, UTC, before it wrote any), and compares every live row
of ``crm_integration.receivable_position`` / ``_installment`` / ``_customer`` /
``_discrepancy`` and ``erp_integration.expected_receivable_plan`` / ``expected_receivable``
with what the recomputation says, printing each difference (:func:`~.tables.differences`)
and exiting 1 if there is any. The ``as_of`` column itself is not compared: it says when
a row was last written, and a row the as-of date did not change is not rewritten. The
grace is the service's (``--grace-days``, default ``AMBIDEX_RECEIVABLES_GRACE_DAYS``). On a
live system a row touched between the reads may differ once; ``--retries`` compares
again. The command's shape (DSNs, ``--retries``, ``--json``, exit code) is the kit's
:func:`~services.shared.reconcile_cli.reconcile_command`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import asyncpg
import click

from services.receivables.recompute import recompute
from services.receivables.records import Table
from services.receivables.rules import Rules
from services.receivables.tables import KEYS, RowDifference, expected_rows
from services.receivables.tables import differences as table_differences
from services.shared.reconcile_cli import reconcile_command

SOURCES = {Table.CONTRACT: "crm", Table.INSTALLMENT: "crm", Table.INVOICE: "erp",
           Table.PAYMENT: "erp"}
AS_OF = """
SELECT max(as_of) FROM (
  SELECT max(as_of) AS as_of FROM crm_integration.receivable_position WHERE NOT deleted
  UNION ALL
  SELECT max(as_of) FROM crm_integration.receivable_installment WHERE NOT deleted) t"""
#: the column naming a row's contract, per table (to compare some contracts only)
CONTRACT_COLUMN = {
    "crm_integration.receivable_position": "contract_id",
    "crm_integration.receivable_installment": "contract_id",
    "crm_integration.receivable_discrepancy": "contract_id",
    "erp_integration.expected_receivable_plan": "crm_contract_id",
    "erp_integration.expected_receivable": "crm_contract_id",
}


async def reconcile_once(crm_dsn: str, erp_dsn: str, contracts: Collection[int] | None = None,
                         accounts: Collection[int] | None = None, rules: Rules | None = None
                         ) -> tuple[int, list[RowDifference]]:
    """``(rows compared, differences)``; ``contracts``/``accounts``: compare only the
    rows of these contracts (and these accounts' customer rows); ``rules``: the
    service's (its grace days)."""
    crm = await asyncpg.connect(crm_dsn)
    erp = await asyncpg.connect(erp_dsn)
    try:
        dbs = {"crm": crm, "erp": erp}
        rows = {t: [dict(r) for r in await dbs[db].fetch(f"SELECT * FROM {t.value}")]
                for t, db in SOURCES.items()}
        as_of: date = await crm.fetchval(AS_OF) or datetime.now(UTC).date()
        actual: dict[str, list[dict[str, Any]]] = {}
        for table in KEYS:
            db = dbs[table.split("_", 1)[0]]
            live = "" if table.endswith("_plan") else " WHERE NOT deleted"
            actual[table] = [dict(r) for r in await db.fetch(f"SELECT * FROM {table}{live}")]
    finally:
        await crm.close()
        await erp.close()
    expected = expected_rows(recompute(rows, as_of, rules), as_of)
    compared = 0
    lines: list[RowDifference] = []
    for table in KEYS:
        want = [{k: v for k, v in r.items() if k != "as_of"} for r in expected[table]]
        have = actual[table]
        if contracts is not None or accounts is not None:
            want = [r for r in want if _chosen(table, r, contracts, accounts)]
            have = [r for r in have if _chosen(table, r, contracts, accounts)]
        compared += len(want) + len(have)
        lines += table_differences(table, want, have)
    return compared, lines


def _chosen(table: str, row: dict[str, Any], contracts: Collection[int] | None,
            accounts: Collection[int] | None) -> bool:
    column = CONTRACT_COLUMN.get(table)
    if column is not None:
        return contracts is not None and row.get(column) in contracts
    return accounts is not None and row.get("account_id") in accounts


@dataclass(frozen=True)
class ReceivablesReport:
    compared: int
    lines: Sequence[RowDifference]

    @property
    def summary(self) -> str:
        return f"{self.compared} rows compared, {len(self.lines)} differences"

    def failing(self, options: Mapping[str, Any]) -> bool:
        return bool(self.lines)


async def compare(crm_dsn: str, erp_dsn: str, options: Mapping[str, Any]) -> ReceivablesReport:
    rules = Rules(grace_days=options["grace_days"])
    return ReceivablesReport(*await reconcile_once(crm_dsn, erp_dsn, rules=rules))


reconcile_receivables = reconcile_command("receivables", compare, options=[
    click.option("--grace-days", type=click.IntRange(0, 365), default=5, show_default=True,
                 envvar="AMBIDEX_RECEIVABLES_GRACE_DAYS",
                 help="The service's grace (default: AMBIDEX_RECEIVABLES_GRACE_DAYS)."),
])
reconcile_receivables.help = (
    "Compare receivables' positions, plan and open discrepancies with a recomputation "
    "from the source databases; print every difference (exit code 1 if any)."
)

"""`ambidex reconcile receivables`: the service's six integration tables against a
recomputation from the two databases' rows.

Reads ``crm.contract``, ``crm.installment``, ``erp.invoice`` and ``erp.payment``, runs
:func:`~services.receivables.recompute.recompute` as of the service's as-of date (the
newest ``as_of`` it wrote; today, UTC, before it wrote any), and compares every live row
of ``crm_integration.receivable_position`` / ``_installment`` / ``_customer`` /
``_discrepancy`` and ``erp_integration.expected_receivable_plan`` / ``expected_receivable``
with what the recomputation says, printing each difference (:func:`~.tables.differences`)
and exiting 1 if there is any. The ``as_of`` column itself is not compared: it says when
a row was last written, and a row the as-of date did not change is not rewritten. On a
live system a row touched between the reads may differ once; ``--retries`` compares
again.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Collection
from datetime import UTC, date, datetime
from typing import Any

import asyncpg
import click

from ambidex.targets import database_targets
from services.receivables.recompute import recompute
from services.receivables.records import Table
from services.receivables.tables import KEYS, expected_rows
from services.receivables.tables import differences as table_differences

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
                         accounts: Collection[int] | None = None) -> tuple[int, list[str]]:
    """``(rows compared, differences)``; ``contracts``/``accounts``: compare only the
    rows of these contracts (and these accounts' customer rows)."""
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
    expected = expected_rows(recompute(rows, as_of), as_of)
    compared = 0
    lines: list[str] = []
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


async def reconcile_all(crm_dsn: str, erp_dsn: str, retries: int = 0,
                        **only: Any) -> tuple[int, list[str]]:
    compared, lines = await reconcile_once(crm_dsn, erp_dsn, **only)
    for _ in range(retries):
        if not lines:
            break
        await asyncio.sleep(2.0)
        compared, lines = await reconcile_once(crm_dsn, erp_dsn, **only)
    return compared, lines


@click.command("receivables")
@click.option("--crm-dsn", default=None,
              help="CRM DSN (default: AMBIDEX_CRM_DSN, else the local stack).")
@click.option("--erp-dsn", default=None,
              help="ERP DSN (default: AMBIDEX_ERP_DSN, else the local stack).")
@click.option("--retries", type=int, default=0, show_default=True,
              help="Compare again this many times (2 s apart) while there are differences.")
def reconcile_receivables(crm_dsn: str | None, erp_dsn: str | None, retries: int) -> None:
    """Compare receivables' positions, plan and open discrepancies with a recomputation
    from the source databases; print every difference (exit code 1 if any)."""
    crm_dsn, erp_dsn = database_targets(crm_dsn, erp_dsn)
    compared, lines = asyncio.run(reconcile_all(crm_dsn, erp_dsn, retries))
    for line in lines:
        click.echo(line)
    click.echo(f"{compared} rows compared, {len(lines)} differences", err=True)
    sys.exit(1 if lines else 0)

"""`ambidex reconcile production-status`: the write-back against a recomputation.

Compares what production-status wrote into ``crm_integration.fulfilment_status`` and
``fulfilment_line`` with a recomputation from both source databases
(:mod:`.reconcile`), prints every difference, one per line, and exits 1 if there is any
(0 when they agree). Source rows the service refuses (impossible dates, a bad value:
their transactions are dead-lettered whole) are listed too and also make it exit 1. On
a live system an order changed between the reads may differ once; run it again
(``--retries``) before calling it a defect.
"""

from __future__ import annotations

import asyncio
import json
import sys

import click

from ambidex.targets import database_targets
from services.production_status.reconcile import Difference, RefusedRow, reconcile_once


async def reconcile_all(crm_dsn: str, erp_dsn: str, retries: int
                        ) -> tuple[int, list[Difference], list[RefusedRow]]:
    orders, differences, refused = await reconcile_once(crm_dsn, erp_dsn)
    for _ in range(retries):
        if not differences:
            break
        await asyncio.sleep(2.0)
        orders, differences, refused = await reconcile_once(crm_dsn, erp_dsn)
    return orders, differences, refused


@click.command("production-status")
@click.option("--crm-dsn", default=None,
              help="CRM DSN (default: AMBIDEX_CRM_DSN, else the local stack).")
@click.option("--erp-dsn", default=None,
              help="ERP DSN (default: AMBIDEX_ERP_DSN, else the local stack).")
@click.option("--retries", type=int, default=0, show_default=True,
              help="Compare again this many times (2 s apart) while there are differences.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per difference.")
def reconcile_production_status(crm_dsn: str | None, erp_dsn: str | None, retries: int,
                                as_json: bool) -> None:
    """Compare production-status's fulfilment statuses with a recomputation from both
    databases; print every difference (exit code 1 if any)."""
    crm_dsn, erp_dsn = database_targets(crm_dsn, erp_dsn)
    orders, differences, refused = asyncio.run(reconcile_all(crm_dsn, erp_dsn, retries))
    for row in refused:
        click.echo(json.dumps({"table": row.table, "id": row.row_id, "refused": row.reason})
                   if as_json else str(row))
    for d in differences:
        click.echo(json.dumps({"crm_order_id": d.crm_order_id, "field": d.field,
                               "written": str(d.written), "recomputed": str(d.recomputed)})
                   if as_json else str(d))
    click.echo(f"{orders} orders compared, {len(differences)} differences, "
               f"{len(refused)} source rows refused", err=True)
    sys.exit(1 if differences or refused else 0)

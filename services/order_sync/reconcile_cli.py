"""`ambidex reconcile order-sync`: print every difference between the CRM's orders and
the ERP's (:mod:`services.order_sync.reconcile`); exit 1 if there is any defect.

A difference the CRM has been told about (status ``rejected``/``conflict`` for that
order version) is printed as *known* and does not fail the run unless ``--strict``.
Orders changed while it runs may differ once: ``--retries`` compares again.
"""

from __future__ import annotations

import asyncio
import json
import sys

import click

from ambidex.targets import database_targets
from services.order_sync.reconcile import Report, reconcile_orders


@click.command("order-sync")
@click.option(
    "--crm-dsn", default=None,
    help="CRM DSN (default: AMBIDEX_CRM_DSN, else the local stack).",
)
@click.option(
    "--erp-dsn", default=None,
    help="ERP DSN (default: AMBIDEX_ERP_DSN, else the local stack).",
)
@click.option("--order", "orders", type=int, multiple=True,
              help="Compare only these CRM order ids (repeatable); default all.")
@click.option("--retries", type=int, default=0, show_default=True,
              help="Compare again this many times (2 s apart) while there are defects.")
@click.option("--strict", is_flag=True,
              help="Known differences (rejected/conflict orders) fail the run too.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per difference.")
def reconcile_order_sync(
    crm_dsn: str | None, erp_dsn: str | None, orders: tuple[int, ...], retries: int,
    strict: bool, as_json: bool,
) -> None:
    """Compare every CRM order with its ERP order (lines, quantities, prices, totals,
    state); print every difference (exit code 1 if any)."""
    crm_dsn, erp_dsn = database_targets(crm_dsn, erp_dsn)

    def progress(done: int, total: int) -> None:
        click.echo(f"> {done}/{total} orders compared", err=True)

    def failing(report: Report) -> bool:
        return bool(report.differences if strict else report.defects)

    async def run() -> Report:
        selected = list(orders) or None
        report = await reconcile_orders(crm_dsn, erp_dsn, order_ids=selected,
                                        progress=progress)
        for _ in range(retries):
            if not failing(report):
                break
            await asyncio.sleep(2.0)
            report = await reconcile_orders(crm_dsn, erp_dsn, order_ids=selected,
                                            progress=progress)
        return report

    report = asyncio.run(run())
    for difference in report.differences:
        if as_json:
            click.echo(json.dumps({
                "crm_order_id": difference.crm_order_id, "erp_order": difference.erp_order,
                "field": difference.field, "crm": difference.crm, "erp": difference.erp,
                "status": difference.status, "known": difference.known,
            }))
        else:
            click.echo(str(difference))
    click.echo(
        f"{report.orders} orders compared, {len(report.differences)} differences "
        f"({len(report.defects)} not known to the CRM)", err=True,
    )
    sys.exit(1 if failing(report) else 0)

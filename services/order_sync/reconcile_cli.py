"""`ambidex reconcile order-sync`: print every difference between the CRM's orders and
the ERP's (:mod:`services.order_sync.reconcile`); exit 1 if there is any defect.

A difference the CRM has been told about (status ``rejected``/``conflict`` for that
order version) is printed as *known* and does not fail the run unless ``--strict``.
Orders changed while it runs may differ once: ``--retries`` compares again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import click

from services.order_sync.reconcile import Report, reconcile_orders
from services.shared.reconcile_cli import reconcile_command


def _progress(done: int, total: int) -> None:
    click.echo(f"> {done}/{total} orders compared", err=True)


async def compare(crm_dsn: str, erp_dsn: str, options: Mapping[str, Any]) -> Report:
    selected = list(options.get("orders") or ()) or None
    return await reconcile_orders(crm_dsn, erp_dsn, order_ids=selected, progress=_progress)


reconcile_order_sync = reconcile_command(
    "order-sync",
    compare,
    options=[
        click.option("--order", "orders", type=int, multiple=True,
                     help="Compare only these CRM order ids (repeatable); default all."),
        click.option("--strict", is_flag=True,
                     help="Known differences (rejected/conflict orders) fail the run too."),
    ],
)
reconcile_order_sync.help = (
    "Compare every CRM order with its ERP order (lines, quantities, prices, totals, "
    "state); print every difference (exit code 1 if any)."
)

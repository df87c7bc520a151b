"""`ambidex reconcile`: the projection's write-back against a batch recomputation.

Compares :func:`~services.inventory_projection.recompute.read_projection` (what the
service wrote into ``crm_integration.availability``) with
:func:`~services.inventory_projection.recompute.recompute_availability` (what the two
source databases say now), prints every difference, one per line, and exits 1 if there
is any (0 when they agree). Source rows holding NaN or ±Infinity in a quantity are
listed too (they are left out of the recomputation) and also make it exit 1. On a live
system a key touched between the reads may differ once; run it again (``--retries``)
before calling it a defect.
"""

from __future__ import annotations

import asyncio
import json
import sys

import click

from ambidex.targets import database_targets
from services.inventory_projection.recompute import (
    Difference,
    NonFiniteRow,
    diff_availability,
    non_finite_rows,
    read_projection,
    recompute_availability,
)


async def reconcile_once(crm_dsn: str, erp_dsn: str) -> tuple[int, list[Difference]]:
    """``(keys compared, differences)``."""
    recomputed = await recompute_availability(crm_dsn, erp_dsn)
    projected = await read_projection(crm_dsn)
    return len(set(recomputed) | set(projected)), diff_availability(projected, recomputed)


async def reconcile_all(
    crm_dsn: str, erp_dsn: str, retries: int = 0
) -> tuple[int, list[Difference], list[NonFiniteRow]]:
    """:func:`reconcile_once` (again up to ``retries`` times, 2 s apart, while there are
    differences), and the source rows left out because a quantity is not a number."""
    keys, differences = await reconcile_once(crm_dsn, erp_dsn)
    for _ in range(retries):
        if not differences:
            break
        await asyncio.sleep(2.0)
        keys, differences = await reconcile_once(crm_dsn, erp_dsn)
    return keys, differences, await non_finite_rows(crm_dsn, erp_dsn)


@click.command("reconcile")
@click.option(
    "--crm-dsn", default=None,
    help="CRM DSN (default: AMBIDEX_CRM_DSN, else the local stack).",
)
@click.option(
    "--erp-dsn", default=None,
    help="ERP DSN (default: AMBIDEX_ERP_DSN, else the local stack).",
)
@click.option(
    "--retries",
    type=int,
    default=0,
    show_default=True,
    help="Compare again this many times (2 s apart) while there are differences.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per difference.")
def reconcile(crm_dsn: str | None, erp_dsn: str | None, retries: int, as_json: bool) -> None:
    """Compare inventory-projection's availability with a recomputation from the
    source databases; print every difference (exit code 1 if any)."""
    crm_dsn, erp_dsn = database_targets(crm_dsn, erp_dsn)

    keys, differences, bad_rows = asyncio.run(reconcile_all(crm_dsn, erp_dsn, retries))
    for row in bad_rows:
        if as_json:
            click.echo(json.dumps({"table": row.table, "id": row.row_id,
                                   "field": row.column, "value": row.value}))
        else:
            click.echo(str(row))
    for difference in differences:
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "item_id": difference.key.item_id,
                        "warehouse_id": difference.key.warehouse_id,
                        "sku": difference.sku,
                        "warehouse_code": difference.warehouse_code,
                        "field": difference.field,
                        "projected": str(difference.projected),
                        "recomputed": str(difference.recomputed),
                    }
                )
            )
        else:
            click.echo(str(difference))
    click.echo(
        f"{keys} keys compared, {len(differences)} differences, "
        f"{len(bad_rows)} source rows not a number",
        err=True,
    )
    sys.exit(1 if differences or bad_rows else 0)

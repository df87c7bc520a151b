"""Helpers of the production-status integration tests: a CRM order synced to the ERP by
order-sync (its identity published), the ERP's production steps, and readers of the
CRM write-back and the service's topics."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

from ambidex.stack.local import StackAddresses
from tests.conftest import wait_until
from tests.integration.test_order_sync import catalogue, new_account, wait_status

SERVICE = "production-status"
GROUP = "ambidex-production-status.changes"  # its BatchSource's consumer group


@dataclass(frozen=True)
class Order:
    """A confirmed CRM order with one line, synced to its ERP order."""

    crm_id: int
    account_id: int
    erp_id: int
    line_id: int
    item_id: int
    warehouse_id: int


async def synced_order(stack: StackAddresses, crm: asyncpg.Connection, erp: asyncpg.Connection,
                       tag: str, *, promised_in_days: int = 60, quantity: int = 5) -> Order:
    cat = await catalogue(stack)
    account = await new_account(crm, tag)
    product, _, item = cat.products[0]
    async with crm.transaction():
        crm_id = int(await crm.fetchval(
            """INSERT INTO crm.sales_order (account_id, state, currency_code, requested_date,
                   warehouse_code, amount_total, confirmed_at)
               VALUES ($1, 'confirmed', 'EUR', current_date + $2::int, $3, 0, now())
               RETURNING id""", account, promised_in_days, cat.warehouse_code))
        await crm.execute(
            """INSERT INTO crm.sales_order_line (order_id, line_no, product_id, quantity,
                   unit_price) VALUES ($1, 1, $2, $3, 10)""", crm_id, product, quantity)
    await wait_status(crm, crm_id, "synced")
    header = await erp.fetchrow(
        "SELECT id, warehouse_id FROM erp.sales_order WHERE crm_order_id = $1", crm_id)
    line = await erp.fetchval(
        "SELECT id FROM erp.sales_order_line WHERE order_id = $1 AND line_no = 1", header["id"])
    return Order(crm_id, account, header["id"], line, item, header["warehouse_id"])


async def production_order(erp: asyncpg.Connection, order: Order, *, finish_in_days: int = 3,
                           quantity: int = 5, state: str = "confirmed") -> int:
    return int(await erp.fetchval(
        """INSERT INTO erp.production_order (item_id, warehouse_id, sales_order_id,
               sales_order_line_id, quantity, state, date_planned_start, date_planned_finish)
           VALUES ($1, $2, $3, $4, $5, $6, current_date, current_date + $7::int)
           RETURNING id""", order.item_id, order.warehouse_id, order.erp_id, order.line_id,
        quantity, state, finish_in_days))


async def start_production(erp: asyncpg.Connection, mo: int) -> None:
    await erp.execute("UPDATE erp.production_order SET state = 'in_progress', "
                      "date_started = now() WHERE id = $1", mo)


async def inspect(erp: asyncpg.Connection, mo: int, state: str, *,
                  inspector: str = "I. Inspector", notes: str | None = None) -> int:
    return int(await erp.fetchval(
        """INSERT INTO erp.quality_inspection (production_order_id, state, inspector,
               inspected_at, notes)
           VALUES ($1, $2, $3, CASE WHEN $2 = 'pending' THEN NULL ELSE now() END, $4)
           RETURNING id""", mo, state, inspector, notes))


async def ship(erp: asyncpg.Connection, order: Order, quantity: int, *,
               carrier: str = "DHL", tracking: str = "TRK-1", shipped: str = "now()") -> int:
    """A shipment sent (``shipped``: an SQL instant) with one line, in one transaction."""
    async with erp.transaction():
        shipment = int(await erp.fetchval(
            f"""INSERT INTO erp.shipment (sales_order_id, warehouse_id, state, scheduled_date,
                   shipped_at, carrier, tracking_ref)
               VALUES ($1, $2, 'shipped', current_date, {shipped}, $3, $4) RETURNING id""",
            order.erp_id, order.warehouse_id, carrier, tracking))
        await erp.execute(
            """INSERT INTO erp.shipment_line (shipment_id, sales_order_line_id, item_id,
                   quantity) VALUES ($1, $2, $3, $4)""", shipment, order.line_id, order.item_id,
            quantity)
    return shipment


async def deliver(erp: asyncpg.Connection, shipment: int) -> None:
    await erp.execute("UPDATE erp.shipment SET state = 'delivered', delivered_at = now() "
                      "WHERE id = $1", shipment)


async def status_row(crm: asyncpg.Connection, crm_id: int) -> dict[str, Any] | None:
    row = await crm.fetchrow("SELECT * FROM crm_integration.fulfilment_status "
                             "WHERE crm_order_id = $1 AND NOT deleted", crm_id)
    return None if row is None else dict(row)


async def wait_row(crm: asyncpg.Connection, crm_id: int, check: Callable[[dict[str, Any]], bool],
                   timeout: float = 90.0) -> dict[str, Any]:
    """Wait until the order's status row satisfies ``check``; the row."""
    seen: list[dict[str, Any] | None] = [None]

    async def reached() -> bool:
        seen[0] = await status_row(crm, crm_id)
        return seen[0] is not None and check(seen[0])

    try:
        await wait_until(reached, timeout=timeout, interval=0.5)
    except AssertionError:
        raise AssertionError(f"CRM order {crm_id}: last status {seen[0]}") from None
    assert seen[0] is not None
    return seen[0]


def stage(name: str) -> Callable[[dict[str, Any]], bool]:
    return lambda row: row["stage"] == name


def production_orders(row: dict[str, Any]) -> dict[str, int]:
    return {e["stage"]: e["count"] for e in json.loads(row["production_orders"])}

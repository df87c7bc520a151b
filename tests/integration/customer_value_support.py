"""Helpers of the customer-value integration tests: a fresh CRM account with its linked
ERP customer and an ERP order, the rows that carry revenue and cost, and readers of
the write-back and the reconcile comparison."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg

from ambidex.stack.local import StackAddresses
from services.customer_value.reconcile import Difference, reconcile_once
from tests.conftest import wait_until
from tests.integration.test_receivables import Party, new_party

SERVICE = "customer-value"
GROUP = "ambidex-customer-value.changes"  # its BatchSource's consumer group
D = Decimal


@dataclass(frozen=True)
class Customer:
    """A fresh CRM account, its linked ERP customer and one ERP order with a line."""

    party: Party
    order_id: int
    line_id: int
    item_id: int
    warehouse_id: int

    @property
    def account_id(self) -> int:
        return self.party.account_id


async def new_customer(crm: asyncpg.Connection, erp: asyncpg.Connection, tag: str) -> Customer:
    party = await new_party(crm, erp, f"value {tag}")
    item = int(await erp.fetchval("SELECT min(id) FROM erp.item WHERE active"))
    warehouse = int(await erp.fetchval("SELECT min(id) FROM erp.warehouse"))
    async with erp.transaction():
        order = int(await erp.fetchval(
            """INSERT INTO erp.sales_order (customer_id, state, currency_code, warehouse_id,
                   amount_total) VALUES ($1, 'open', 'EUR', $2, 500) RETURNING id""",
            party.customer_id, warehouse))
        line = int(await erp.fetchval(
            """INSERT INTO erp.sales_order_line (order_id, line_no, item_id, quantity,
                   unit_price) VALUES ($1, 1, $2, 10, 50) RETURNING id""", order, item))
    return Customer(party, order, line, item, warehouse)


async def book(crm: asyncpg.Connection, customer: Customer, amount: str) -> int:
    """A confirmed CRM order (revenue booked this month)."""
    return int(await crm.fetchval(
        """INSERT INTO crm.sales_order (account_id, state, currency_code, amount_total,
               confirmed_at) VALUES ($1, 'confirmed', 'EUR', $2, now()) RETURNING id""",
        customer.account_id, D(amount)))


async def produce(erp: asyncpg.Connection, customer: Customer, *, standard: str,
                  material: str, labour: str, machine: str) -> int:
    """A production order of the customer's order, done with its costs."""
    return int(await erp.fetchval(
        """INSERT INTO erp.production_order (item_id, warehouse_id, sales_order_id,
               sales_order_line_id, quantity, qty_produced, state, date_started,
               date_finished, standard_cost, material_cost, labour_cost, machine_cost,
               cost_currency_code)
           VALUES ($1, $2, $3, $4, 5, 5, 'done', now() - interval '1 minute', now(),
                   $5, $6, $7, $8, 'EUR') RETURNING id""",
        customer.item_id, customer.warehouse_id, customer.order_id, customer.line_id,
        D(standard), D(material), D(labour), D(machine)))


async def fail_inspection(erp: asyncpg.Connection, production_order: int, rework: str) -> int:
    return int(await erp.fetchval(
        """INSERT INTO erp.quality_inspection (production_order_id, state, inspected_at,
               rework_cost, cost_currency_code)
           VALUES ($1, 'failed', now(), $2, 'EUR') RETURNING id""",
        production_order, D(rework)))


async def ship(erp: asyncpg.Connection, customer: Customer, *, freight: str, quantity: int,
               unit_cost: str) -> int:
    """A shipment sent with its freight and one line at its unit cost (one transaction)."""
    async with erp.transaction():
        shipment = int(await erp.fetchval(
            """INSERT INTO erp.shipment (sales_order_id, warehouse_id, state, shipped_at,
                   carrier, freight_cost, freight_currency_code)
               VALUES ($1, $2, 'shipped', now(), 'DHL', $3, 'EUR') RETURNING id""",
            customer.order_id, customer.warehouse_id, D(freight)))
        await erp.execute(
            """INSERT INTO erp.shipment_line (shipment_id, sales_order_line_id, item_id,
                   quantity, unit_cost, cost_currency_code)
               VALUES ($1, $2, $3, $4, $5, 'EUR')""",
            shipment, customer.line_id, customer.item_id, quantity, D(unit_cost))
    return shipment


async def return_goods(erp: asyncpg.Connection, customer: Customer, shipment: int, *,
                       quantity: int, credit: str, handling: str) -> int:
    """A return of the shipment's line as the ERP keeps it: requested, the goods
    received, then credited with its handling cost (one transaction each)."""
    returned = int(await erp.fetchval(
        """INSERT INTO erp.return_order (sales_order_id, sales_order_line_id,
               shipment_line_id, quantity, reason)
           SELECT $1, sales_order_line_id, id, $3, 'damaged' FROM erp.shipment_line
           WHERE shipment_id = $2 RETURNING id""",
        customer.order_id, shipment, quantity))
    await erp.execute("""UPDATE erp.return_order SET state = 'received', received_at = now()
                         WHERE id = $1""", returned)
    await erp.execute(
        """UPDATE erp.return_order SET state = 'credited', closed_at = now(),
               credit_amount = $2, handling_cost = $3, currency_code = 'EUR'
           WHERE id = $1""", returned, D(credit), D(handling))
    return returned


async def open_case(crm: asyncpg.Connection, customer: Customer) -> int:
    return int(await crm.fetchval(
        "INSERT INTO crm.service_case (account_id, subject) VALUES ($1, 'late') RETURNING id",
        customer.account_id))


def this_month() -> str:
    now = datetime.now(UTC)
    return f"{now.year:04d}-{now.month:02d}"


async def value_rows(crm: asyncpg.Connection, account: int) -> dict[str, dict[str, Any]]:
    """The account's live rows of crm_integration.customer_value, by ``YYYY-MM``."""
    rows = await crm.fetch("SELECT * FROM crm_integration.customer_value "
                           "WHERE account_id = $1 AND NOT deleted", account)
    return {f"{r['month']:%Y-%m}": dict(r) for r in rows}


async def until_value(crm: asyncpg.Connection, account: int, month: str,
                      **figures: Any) -> dict[str, Any]:
    """Wait until the account's month shows ``figures``; its row."""
    seen: list[dict[str, Any] | None] = [None]

    async def shows() -> bool:
        seen[0] = (await value_rows(crm, account)).get(month)
        row = seen[0]
        return row is not None and all(row[k] == v for k, v in figures.items())

    try:
        await wait_until(shows, timeout=120, interval=0.5)
    except AssertionError:
        raise AssertionError(f"account {account} {month}: last row {seen[0]}") from None
    assert seen[0] is not None
    return seen[0]


async def reconciled(stack: StackAddresses, accounts: set[int], timeout: float = 180) -> None:
    """Wait until the recomputation finds no difference for these accounts."""
    last: list[Difference] = []

    async def agree() -> bool:
        _, differences, _ = await reconcile_once(stack.crm_admin_dsn, stack.erp_admin_dsn,
                                                 accounts)
        last[:] = differences
        return not differences

    try:
        await wait_until(agree, timeout=timeout, interval=2.0)
    except AssertionError:
        raise AssertionError("differs from the recomputation:\n"
                             + "\n".join(map(str, last[:20]))) from None

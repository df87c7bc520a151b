"""order-sync against the real stack (Debezium -> Kafka -> the service process -> ERP/CRM).

Invariants shown here, each on fresh CRM accounts and orders:

* a confirmed CRM order becomes exactly one ERP order with all its lines, for the ERP
  customer of its account, created when missing (identity in erp_integration and on
  ambidex.order-identity, CRM status 'synced');
* amendments and cancellation propagate while the ERP order is open; after shipping a
  conflicting amendment changes nothing in the ERP and becomes a conflict (CRM status
  with the reason, event on ambidex.order-conflicts);
* an unsyncable order is never half-written: status 'rejected' with the reason, and it
  is re-decided (and synced) once the cause is fixed;
* ERP progress flows back to the CRM status; order-sync's own ERP writes do not echo;
* malformed and schema-invalid records reach dlq.order-sync and later orders still sync;
* an amendment the ERP cannot take (a line on a shipment removed) is a conflict in
  business words, not a dead letter.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer

from ambidex.stack.local import StackAddresses
from services.shared.deadletter_tools import read_dead_letters
from tests.conftest import ServiceProcess, wait_until
from tests.integration.conftest import Dbs
from tests.integration.support import metric, values_with_key

SERVICE = "order-sync"


# --------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class Catalogue:
    """Seeded master data both databases agree on."""

    products: list[tuple[int, str, int]]  # (crm product id, sku, erp item id)
    warehouse_code: str


async def catalogue(stack: StackAddresses) -> Catalogue:
    crm = await asyncpg.connect(stack.crm_admin_dsn)
    erp = await asyncpg.connect(stack.erp_admin_dsn)
    try:
        items = {
            r["sku"]: r["id"]
            for r in await erp.fetch("SELECT id, sku FROM erp.item WHERE active ORDER BY id")
        }
        products = [
            (r["id"], r["sku"], items[r["sku"]])
            for r in await crm.fetch("SELECT id, sku FROM crm.product ORDER BY id")
            if r["sku"] in items
        ]
        warehouse = await erp.fetchval("SELECT code FROM erp.warehouse ORDER BY id LIMIT 1")
    finally:
        await crm.close()
        await erp.close()
    assert len(products) >= 5, "the seed has too few products with an ERP item"
    return Catalogue(products, warehouse)


async def new_account(crm: asyncpg.Connection, tag: str, currency: str = "EUR") -> int:
    return int(
        await crm.fetchval(
            """INSERT INTO crm.account (name, street, city, postal_code, country_code,
                   vat_number, currency_code)
               VALUES ($1, 'Hauptstrasse 1', 'Bern', '3000', 'CH', $2, $3) RETURNING id""",
            f"Order Sync {tag}",
            f"CHE-{tag}",
            currency,
        )
    )


Line = tuple[int, int, str, str]  # (line_no, crm product id, quantity, unit price)


async def new_order(
    crm: asyncpg.Connection,
    account_id: int,
    lines: Sequence[Line],
    *,
    warehouse_code: str,
    currency: str = "EUR",
    state: str = "confirmed",
) -> int:
    """Header and lines in ONE CRM transaction, as the CRM does it."""
    async with crm.transaction():
        order_id = int(
            await crm.fetchval(
                """INSERT INTO crm.sales_order (account_id, state, currency_code,
                       requested_date, warehouse_code, amount_total, confirmed_at)
                   VALUES ($1, $2, $3, current_date + 14, $4, 0,
                           CASE WHEN $2 = 'draft' THEN NULL ELSE now() END) RETURNING id""",
                account_id,
                state,
                currency,
                warehouse_code,
            )
        )
        await crm.executemany(
            """INSERT INTO crm.sales_order_line (order_id, line_no, product_id, quantity,
                   unit_price) VALUES ($1, $2, $3, $4, $5)""",
            [(order_id, no, product, Decimal(q), Decimal(p)) for no, product, q, p in lines],
        )
    return order_id


async def erp_order(erp: asyncpg.Connection, crm_order_id: int) -> dict[str, Any] | None:
    header = await erp.fetchrow(
        "SELECT * FROM erp.sales_order WHERE crm_order_id = $1", crm_order_id
    )
    if header is None:
        return None
    lines = await erp.fetch(
        "SELECT * FROM erp.sales_order_line WHERE order_id = $1 ORDER BY line_no", header["id"]
    )
    return {"header": dict(header), "lines": [dict(line) for line in lines]}


async def erp_order_count(erp: asyncpg.Connection, crm_order_id: int) -> int:
    return int(
        await erp.fetchval(
            "SELECT count(*) FROM erp.sales_order WHERE crm_order_id = $1", crm_order_id
        )
    )


async def sync_status(crm: asyncpg.Connection, crm_order_id: int) -> dict[str, Any] | None:
    row = await crm.fetchrow(
        "SELECT * FROM crm_integration.order_sync_status WHERE crm_order_id = $1", crm_order_id
    )
    return None if row is None else dict(row)


async def wait_status(
    crm: asyncpg.Connection, crm_order_id: int, *statuses: str, timeout: float = 90.0
) -> dict[str, Any]:
    found: dict[str, Any] = {}

    async def reached() -> bool:
        row = await sync_status(crm, crm_order_id)
        if row is not None and row["status"] in statuses:
            found.update(row)
            return True
        return False

    try:
        await wait_until(reached, timeout=timeout)
    except AssertionError:
        raise AssertionError(
            f"order {crm_order_id} never reached {statuses}: {await sync_status(crm, crm_order_id)}"
        ) from None
    return found


def lines_of(order: dict[str, Any]) -> list[tuple[int, int, Decimal, Decimal]]:
    return [
        (ln["line_no"], ln["item_id"], ln["quantity"], ln["unit_price"]) for ln in order["lines"]
    ]


# --------------------------------------------------------------------------- tests


async def test_confirmed_order_becomes_one_erp_order_for_a_new_customer(
    order_sync: ServiceProcess, dbs: Dbs, stack: StackAddresses, unique: str
) -> None:
    crm, erp = dbs
    cat = await catalogue(stack)
    (p1, _, item1), (p2, _, item2), (p3, _, item3) = cat.products[:3]
    account = await new_account(crm, unique)
    assert await erp.fetchval(
        "SELECT count(*) FROM erp.customer WHERE crm_account_id = $1", account
    ) == 0
    order_id = await new_order(
        crm, account, [(1, p1, "2", "10.50"), (2, p2, "1.5", "99.99"), (3, p3, "7", "0.10")],
        warehouse_code=cat.warehouse_code,
    )

    status = await wait_status(crm, order_id, "synced")
    order = await erp_order(erp, order_id)
    assert order is not None
    header = order["header"]
    assert header["origin"] == "ambidex" and header["state"] == "open"
    assert header["crm_order_version"] == 1 and header["currency_code"] == "EUR"
    assert lines_of(order) == [
        (1, item1, Decimal("2.000"), Decimal("10.50")),
        (2, item2, Decimal("1.500"), Decimal("99.99")),
        (3, item3, Decimal("7.000"), Decimal("0.10")),
    ]
    # 1.5 x 99.99 = 149.985: the ERP's round() says 149.99 (half away from zero)
    assert header["amount_total"] == Decimal("21.00") + Decimal("149.99") + Decimal("0.70")
    customer = await erp.fetchrow(
        "SELECT * FROM erp.customer WHERE crm_account_id = $1", account
    )
    assert customer is not None and customer["id"] == header["customer_id"]
    assert customer["origin"] == "ambidex" and customer["name"] == f"Order Sync {unique}"
    assert customer["vat_number"] == f"CHE-{unique}"
    identity = await erp.fetchrow(
        "SELECT * FROM erp_integration.order_identity WHERE crm_order_id = $1", order_id
    )
    assert identity is not None and identity["erp_order_id"] == header["id"]
    assert status["erp_order_id"] == header["id"] and status["erp_order_name"] == header["name"]
    published = await values_with_key(
        stack.kafka_bootstrap, "ambidex.order-identity", str(order_id).encode()
    )
    assert published and published[-1]["erp_order_id"] == header["id"]
    assert await erp_order_count(erp, order_id) == 1

    # billing changes of the account follow to the (now linked) ERP customer
    await crm.execute("UPDATE crm.account SET city = 'Zürich' WHERE id = $1", account)

    async def moved() -> bool:
        city = await erp.fetchval(
            "SELECT city FROM erp.customer WHERE crm_account_id = $1", account
        )
        return bool(city == "Zürich")

    await wait_until(moved, timeout=60)


async def test_amendment_and_cancellation_propagate_while_open(
    order_sync: ServiceProcess, dbs: Dbs, stack: StackAddresses, unique: str
) -> None:
    crm, erp = dbs
    cat = await catalogue(stack)
    (p1, _, item1), (p2, _, _), (p3, _, item3) = cat.products[3:6]
    account = await new_account(crm, unique)
    order_id = await new_order(
        crm, account, [(1, p1, "5", "20.00"), (2, p2, "1", "30.00")],
        warehouse_code=cat.warehouse_code,
    )
    await wait_status(crm, order_id, "synced")

    # amend: raise line 1, drop line 2, add line 3 — one CRM transaction
    async with crm.transaction():
        await crm.execute(
            "UPDATE crm.sales_order_line SET quantity = 8 WHERE order_id = $1 AND line_no = 1",
            order_id,
        )
        await crm.execute(
            "DELETE FROM crm.sales_order_line WHERE order_id = $1 AND line_no = 2", order_id
        )
        await crm.execute(
            """INSERT INTO crm.sales_order_line (order_id, line_no, product_id, quantity,
                   unit_price) VALUES ($1, 3, $2, 2, 15.25)""",
            order_id,
            p3,
        )
        await crm.execute(
            "UPDATE crm.sales_order SET state = 'amended', version = 2 WHERE id = $1", order_id
        )

    async def amended() -> bool:
        order = await erp_order(erp, order_id)
        return order is not None and order["header"]["crm_order_version"] == 2

    await wait_until(amended, timeout=90)
    order = await erp_order(erp, order_id)
    assert order is not None
    assert lines_of(order) == [
        (1, item1, Decimal("8.000"), Decimal("20.00")),
        (3, item3, Decimal("2.000"), Decimal("15.25")),
    ]
    assert order["header"]["amount_total"] == Decimal("190.50")
    assert await erp_order_count(erp, order_id) == 1

    await crm.execute(
        "UPDATE crm.sales_order SET state = 'cancelled', cancelled_at = now() WHERE id = $1",
        order_id,
    )
    await wait_status(crm, order_id, "cancelled")
    order = await erp_order(erp, order_id)
    assert order is not None and order["header"]["state"] == "cancelled"
    assert await erp_order_count(erp, order_id) == 1


async def test_unsyncable_order_is_rejected_whole_and_synced_once_fixed(
    order_sync: ServiceProcess, dbs: Dbs, stack: StackAddresses, unique: str
) -> None:
    crm, erp = dbs
    cat = await catalogue(stack)
    p1, _, _ = cat.products[6]
    sku = f"OS-{unique}"
    product = int(
        await crm.fetchval(
            """INSERT INTO crm.product (sku, name, list_price, currency_code)
               VALUES ($1, 'Not in the ERP yet', 10, 'EUR') RETURNING id""",
            sku,
        )
    )
    account = await new_account(crm, unique)
    order_id = await new_order(
        crm, account, [(1, p1, "1", "5.00"), (2, product, "3", "10.00")],
        warehouse_code=cat.warehouse_code,
    )
    status = await wait_status(crm, order_id, "rejected")
    assert f"SKU {sku} has no ERP item" in status["reason"]
    assert await erp_order(erp, order_id) is None  # nothing half-written
    assert await erp.fetchval(
        "SELECT count(*) FROM erp.customer WHERE crm_account_id = $1", account
    ) == 0
    conflicts = await values_with_key(
        stack.kafka_bootstrap, "ambidex.order-conflicts", str(order_id).encode()
    )
    assert [c["kind"] for c in conflicts][-1:] == ["rejected"]

    # an order in a currency the ERP does not accept is rejected too, and later orders flow
    jpy_account = await new_account(crm, unique + "j", "JPY")
    jpy_order = await new_order(
        crm, jpy_account, [(1, p1, "1", "500")], warehouse_code=cat.warehouse_code,
        currency="JPY",
    )
    jpy_status = await wait_status(crm, jpy_order, "rejected")
    assert "currency JPY is not accepted" in jpy_status["reason"]

    # the cause is fixed in the ERP: the rejected order is re-decided and synced whole
    await erp.execute(
        """INSERT INTO erp.item (sku, name, list_price, currency_code)
           VALUES ($1, 'Now in the ERP', 10, 'EUR')""",
        sku,
    )
    await wait_status(crm, order_id, "synced")
    order = await erp_order(erp, order_id)
    assert order is not None and [ln["line_no"] for ln in order["lines"]] == [1, 2]


async def test_erp_progress_flows_back_and_own_writes_do_not_echo(
    order_sync: ServiceProcess, dbs: Dbs, stack: StackAddresses, unique: str
) -> None:
    crm, erp = dbs
    cat = await catalogue(stack)
    (p1, _, _), (p2, _, _) = cat.products[7:9]
    echoes_before = await metric(order_sync, "ambidex_order_sync_echoes_total")
    account = await new_account(crm, unique)
    order_id = await new_order(
        crm, account, [(1, p1, "4", "12.00"), (2, p2, "2", "8.00")],
        warehouse_code=cat.warehouse_code,
    )
    await wait_status(crm, order_id, "synced")

    # the ERP change stream of order-sync's own insert (header + 2 lines) is an echo:
    async def echoed() -> bool:
        return await metric(order_sync, "ambidex_order_sync_echoes_total") >= echoes_before + 3

    await wait_until(echoed, timeout=60)
    status = await sync_status(crm, order_id)
    assert status is not None and status["status"] == "synced" and status["progress"] is None
    assert status["erp_commit_lsn"] == 0  # nothing came back from the ERP side

    order = await erp_order(erp, order_id)
    assert order is not None
    async with erp.transaction():  # the warehouse reserves everything
        await erp.execute(
            "UPDATE erp.sales_order_line SET qty_reserved = quantity WHERE order_id = $1",
            order["header"]["id"],
        )
        await erp.execute(
            "UPDATE erp.sales_order SET state = 'reserved' WHERE id = $1", order["header"]["id"]
        )
    await wait_status(crm, order_id, "reserved")
    await erp.execute(  # part of line 1 ships
        "UPDATE erp.sales_order_line SET qty_delivered = 1 WHERE order_id = $1 AND line_no = 1",
        order["header"]["id"],
    )
    await wait_status(crm, order_id, "partially_shipped")
    published = await values_with_key(
        stack.kafka_bootstrap, "ambidex.order-status", str(order_id).encode()
    )
    assert [p["status"] for p in published] == ["synced", "reserved", "partially_shipped"]


async def test_conflicting_change_after_shipment_is_a_conflict(
    order_sync: ServiceProcess, dbs: Dbs, stack: StackAddresses, unique: str
) -> None:
    crm, erp = dbs
    cat = await catalogue(stack)
    (p1, _, _), (p2, _, _) = cat.products[9:11]
    account = await new_account(crm, unique)
    order_id = await new_order(
        crm, account, [(1, p1, "3", "40.00"), (2, p2, "1", "5.00")],
        warehouse_code=cat.warehouse_code,
    )
    await wait_status(crm, order_id, "synced")
    order = await erp_order(erp, order_id)
    assert order is not None
    erp_id = order["header"]["id"]
    async with erp.transaction():  # the ERP ships everything
        await erp.execute(
            "UPDATE erp.sales_order_line SET qty_delivered = quantity WHERE order_id = $1", erp_id
        )
        await erp.execute("UPDATE erp.sales_order SET state = 'shipped' WHERE id = $1", erp_id)
    await wait_status(crm, order_id, "shipped")

    async with crm.transaction():  # the sales rep lowers a quantity afterwards
        await crm.execute(
            "UPDATE crm.sales_order_line SET quantity = 1 WHERE order_id = $1 AND line_no = 1",
            order_id,
        )
        await crm.execute(
            "UPDATE crm.sales_order SET state = 'amended', version = 2 WHERE id = $1", order_id
        )
    status = await wait_status(crm, order_id, "conflict")
    assert "already shipped" in status["reason"]
    after = await erp_order(erp, order_id)
    assert after is not None and lines_of(after) == lines_of(order)  # ERP unchanged
    assert after["header"]["crm_order_version"] == 1
    conflicts = await values_with_key(
        stack.kafka_bootstrap, "ambidex.order-conflicts", str(order_id).encode()
    )
    assert conflicts and conflicts[-1]["kind"] == "conflict"
    assert conflicts[-1]["crm_order_version"] == 2 and conflicts[-1]["erp_order_id"] == erp_id


async def test_bad_records_are_dead_lettered_and_later_orders_still_sync(
    order_sync: ServiceProcess, dbs: Dbs, stack: StackAddresses, unique: str
) -> None:
    crm, _ = dbs
    cat = await catalogue(stack)
    p1, _, _ = cat.products[11]
    garbage_key = json.dumps({"id": f"garbage-{unique}"}).encode()
    invalid_key = json.dumps({"id": int(uuid.uuid4().int % 10**12) + 10**12}).encode()
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(
            "cdc.crm.sales_order", key=garbage_key, value=b"\x00not json at all" + unique.encode()
        )
        await producer.send_and_wait(
            "cdc.crm.sales_order", key=invalid_key,
            value=json.dumps({"op": "c", "before": None, "after": {"id": "x"}}).encode(),
        )
    finally:
        await producer.stop()

    account = await new_account(crm, unique)
    order_id = await new_order(
        crm, account, [(1, p1, "1", "1.00")], warehouse_code=cat.warehouse_code
    )
    await wait_status(crm, order_id, "synced")

    async def both_dead_lettered() -> bool:
        keys = {
            letter.key
            async for _, letter in read_dead_letters(stack.kafka_bootstrap, SERVICE, limit=None)
        }
        return garbage_key in keys and invalid_key in keys

    await wait_until(both_dead_lettered, timeout=60)
    letters = [
        letter
        async for _, letter in read_dead_letters(stack.kafka_bootstrap, SERVICE, limit=None)
        if letter.key in (garbage_key, invalid_key)
    ]
    by_key = {letter.key: letter for letter in letters}
    assert by_key[garbage_key].source_topic == "cdc.crm.sales_order"
    assert by_key[garbage_key].value is not None and unique.encode() in by_key[garbage_key].value
    assert "JSON" in by_key[garbage_key].reason
    assert by_key[invalid_key].reason


async def test_removing_a_line_on_a_draft_shipment_is_a_conflict_in_business_words(
    order_sync: ServiceProcess, dbs: Dbs, stack: StackAddresses, unique: str
) -> None:
    """Invariant 4 for effects: an amendment the ERP cannot take (a line still on a
    draft shipment cannot be deleted) is known before writing: the CRM status says
    conflict, in words a salesperson understands (not the database's error), nothing
    is dead-lettered, the ERP order stays as it was, and later orders still sync."""
    crm, erp = dbs
    cat = await catalogue(stack)
    (p1, _, item1), (p2, _, item2), (p3, _, _) = cat.products[16:19]
    account = await new_account(crm, unique)
    order_id = await new_order(
        crm, account, [(1, p1, "2", "10.00"), (2, p2, "3", "5.00")],
        warehouse_code=cat.warehouse_code,
    )
    await wait_status(crm, order_id, "synced")
    order = await erp_order(erp, order_id)
    assert order is not None
    line_two = next(line for line in order["lines"] if line["line_no"] == 2)
    # an ERP user plans a shipment of line 2 (draft: nothing shipped yet)
    async with erp.transaction():
        shipment = await erp.fetchval(
            """INSERT INTO erp.shipment (sales_order_id, warehouse_id)
               VALUES ($1, $2) RETURNING id""",
            order["header"]["id"], order["header"]["warehouse_id"],
        )
        await erp.execute(
            """INSERT INTO erp.shipment_line (shipment_id, sales_order_line_id, item_id,
                   quantity) VALUES ($1, $2, $3, 3)""",
            shipment, line_two["id"], item2,
        )
    shipment_name = await erp.fetchval("SELECT name FROM erp.shipment WHERE id = $1", shipment)
    async with crm.transaction():
        await crm.execute(
            "DELETE FROM crm.sales_order_line WHERE order_id = $1 AND line_no = 2", order_id
        )
        await crm.execute(
            "UPDATE crm.sales_order SET state = 'amended', version = 2 WHERE id = $1", order_id
        )
    later = await new_order(crm, account, [(1, p3, "1", "1.00")],
                            warehouse_code=cat.warehouse_code)
    await wait_status(crm, later, "synced")
    status = await wait_status(crm, order_id, "conflict")
    assert status["crm_order_version"] == 2
    assert status["reason"] == (
        f"line 2 cannot be removed: 3 units are on shipment {shipment_name} (draft)"
    )
    after = await erp_order(erp, order_id)
    assert after is not None
    assert lines_of(after) == lines_of(order)  # untouched: all of the transaction or none
    assert after["header"]["crm_order_version"] == 1
    assert await erp_order_count(erp, order_id) == 1
    assert item1 in {line["item_id"] for line in after["lines"]}
    letters = [
        letter
        async for _, letter in read_dead_letters(stack.kafka_bootstrap, SERVICE, limit=None)
        if letter.source_topic == "cdc.crm.sales_order" and letter.key is not None
        and json.loads(letter.key) == {"id": order_id}
    ]
    assert letters == []  # a conflict with the ERP's state is no bad input

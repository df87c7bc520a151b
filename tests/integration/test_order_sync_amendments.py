"""order-sync amendments the ERP cannot take, totals and progress, against the real stack.

Invariants, each on fresh CRM accounts and orders:

* the CRM status never says ``synced`` while the CRM order and the ERP order differ: an
  amendment the ERP cannot take (a reserved line removed) is a conflict in business
  words, decided before writing (no database error, no dead letter); the CRM change is
  kept, so the next amendment is decided against what the ERP really has, and the
  order is re-decided (and synced) once the ERP releases what pinned the line;
* a refusal the ERP still makes (a rule order-sync does not know) is recorded in its own
  transaction: status conflict with a reason that is not the database's error, the CRM
  change kept, and the next change brings the ERP to the CRM's order as it really is;
* ERP order totals equal what the ERP's own SQL computes from its lines
  (``sum(round(...))``: half away from zero), and the CRM's;
* progress is recomputed after order-sync's own amendment;
* an order the ERP cancels by itself while the CRM order stays confirmed is a conflict
  at once, as a replay or a later re-decision would decide it (live and replayed
  statuses agree);
* ``ambidex reconcile order-sync`` exits 0 when the orders agree and 1, naming the
  difference, when an ERP line is changed behind order-sync's back.
"""

from __future__ import annotations

import asyncio
import json
import sys
from decimal import Decimal
from typing import Any

import asyncpg

from ambidex.stack.local import StackAddresses
from services.shared.deadletter_tools import read_dead_letters
from tests.conftest import ServiceProcess, wait_until
from tests.integration.conftest import Dbs
from tests.integration.support import values_with_key
from tests.integration.test_order_sync import (
    SERVICE,
    catalogue,
    erp_order,
    lines_of,
    new_account,
    new_order,
    sync_status,
    wait_status,
)


async def amend(crm: asyncpg.Connection, order_id: int, version: int, *statements: str) -> None:
    """One CRM transaction: the statements ($1 = order id), then the new version."""
    async with crm.transaction():
        for statement in statements:
            await crm.execute(statement, order_id)
        await crm.execute(
            "UPDATE crm.sales_order SET state = 'amended', version = $2 WHERE id = $1",
            order_id, version,
        )


async def wait_version(
    crm: asyncpg.Connection, order_id: int, version: int, *states: str
) -> dict[str, Any]:
    """The status row once order-sync decided ``version`` into one of ``states``
    (``sync_state``: the CRM-side outcome, whatever the ERP progress says)."""
    statuses = states
    found: dict[str, Any] = {}

    async def reached() -> bool:
        row = await sync_status(crm, order_id)
        if row is not None and row["crm_order_version"] == version and (
            row["sync_state"] in statuses
        ):
            found.update(row)
            return True
        return False

    try:
        await wait_until(reached, timeout=90)
    except AssertionError:
        raise AssertionError(
            f"order {order_id} v{version} never {statuses}: {await sync_status(crm, order_id)}"
        ) from None
    return found


async def crm_lines(crm: asyncpg.Connection, order_id: int) -> list[tuple[int, Decimal, Decimal]]:
    rows = await crm.fetch(
        "SELECT line_no, quantity, unit_price FROM crm.sales_order_line WHERE order_id = $1 "
        "ORDER BY line_no", order_id,
    )
    return [(r["line_no"], r["quantity"], r["unit_price"]) for r in rows]


def erp_lines(order: dict[str, Any]) -> list[tuple[int, Decimal, Decimal]]:
    return [(ln["line_no"], ln["quantity"], ln["unit_price"]) for ln in order["lines"]]


async def letters_of(stack: StackAddresses, order_id: int) -> list[Any]:
    keys = {json.dumps({"id": order_id}).encode(), json.dumps({"id": order_id}).replace(
        " ", "").encode()}
    return [
        letter
        async for _, letter in read_dead_letters(stack.kafka_bootstrap, SERVICE, limit=None)
        if letter.key in keys
        or (letter.value is not None and f'"order_id":{order_id},'.encode() in letter.value)
    ]


async def reconcile(stack: StackAddresses, *order_ids: int) -> tuple[int, str]:
    arguments = [arg for i in order_ids for arg in ("--order", str(i))]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ambidex.cli", "reconcile", "order-sync",
        "--crm-dsn", stack.crm_admin_dsn, "--erp-dsn", stack.erp_admin_dsn, *arguments,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode() + err.decode()


# --------------------------------------------------------------------------- tests


async def test_reserved_line_removal_is_a_conflict_kept_until_the_erp_releases_it(
    order_sync: ServiceProcess, dbs: Dbs, stack: StackAddresses, unique: str
) -> None:
    crm, erp = dbs
    cat = await catalogue(stack)
    (p1, _, item1), (p2, _, item2), (p3, _, item3) = cat.products[20:23]
    account = await new_account(crm, unique)
    order_id = await new_order(
        crm, account, [(1, p1, "4", "10.00"), (2, p2, "3", "5.00"), (3, p3, "1", "7.00")],
        warehouse_code=cat.warehouse_code,
    )
    await wait_status(crm, order_id, "synced")
    order = await erp_order(erp, order_id)
    assert order is not None
    header = order["header"]
    line_three = next(ln for ln in order["lines"] if ln["line_no"] == 3)
    async with erp.transaction():  # the warehouse reserves line 3
        reservation = await erp.fetchval(
            """INSERT INTO erp.stock_reservation (item_id, warehouse_id, sales_order_line_id,
                   quantity) VALUES ($1, $2, $3, 1) RETURNING id""",
            item3, header["warehouse_id"], line_three["id"],
        )
        await erp.execute(
            "UPDATE erp.sales_order_line SET qty_reserved = 1 WHERE id = $1", line_three["id"]
        )

    # v2 removes the reserved line: a conflict in business words, nothing written
    await amend(crm, order_id, 2,
                "DELETE FROM crm.sales_order_line WHERE order_id = $1 AND line_no = 3")
    status = await wait_version(crm, order_id, 2, "conflict")
    assert status["reason"] == (
        f"line 3 cannot be removed: 1 unit is reserved in warehouse {cat.warehouse_code}"
    )
    conflicts = await values_with_key(
        stack.kafka_bootstrap, "ambidex.order-conflicts", str(order_id).encode()
    )
    assert conflicts[-1]["kind"] == "conflict" and conflicts[-1]["crm_order_version"] == 2
    after = await erp_order(erp, order_id)
    assert after is not None and lines_of(after) == lines_of(order)

    # v3 raises line 1: decided against the ERP as it is (line 3 still there): the
    # order stays in conflict, never "synced" while the two differ
    await amend(crm, order_id, 3,
                "UPDATE crm.sales_order_line SET quantity = 5 WHERE order_id = $1 AND line_no = 1")
    status = await wait_version(crm, order_id, 3, "conflict", "synced")
    assert status["status"] == "conflict", status
    assert "line 3 cannot be removed" in status["reason"]
    after = await erp_order(erp, order_id)
    assert after is not None and lines_of(after) == lines_of(order)  # all or nothing
    assert not await letters_of(stack, order_id)  # a conflict, not a dead letter

    # the ERP drops the reservation (nothing else of the order changes): the order is
    # re-decided and the CRM's version 3 reaches the ERP
    await erp.execute("DELETE FROM erp.stock_reservation WHERE id = $1", reservation)
    await wait_version(crm, order_id, 3, "synced")
    final = await erp_order(erp, order_id)
    assert final is not None
    assert erp_lines(final) == await crm_lines(crm, order_id) == [
        (1, Decimal("5.000"), Decimal("10.00")), (2, Decimal("3.000"), Decimal("5.00"))]
    assert [ln["item_id"] for ln in final["lines"]] == [item1, item2]
    assert final["header"]["crm_order_version"] == 3
    assert final["header"]["amount_total"] == Decimal("65.00")


async def test_an_unforeseen_refusal_is_recorded_and_the_next_change_sees_the_real_erp(
    order_sync: ServiceProcess, dbs: Dbs, stack: StackAddresses, unique: str
) -> None:
    crm, erp = dbs
    cat = await catalogue(stack)
    (p1, _, _), (p2, _, _) = cat.products[23:25]
    account = await new_account(crm, unique)
    order_id = await new_order(
        crm, account, [(1, p1, "2", "10.00"), (2, p2, "1", "4.00")],
        warehouse_code=cat.warehouse_code,
    )
    await wait_status(crm, order_id, "synced")
    order = await erp_order(erp, order_id)
    assert order is not None
    erp_id = order["header"]["id"]
    # an ERP rule order-sync knows nothing about refuses any change of this order's lines
    function = f"test_refuse_{unique.replace('-', '_')}"
    await erp.execute(f"""
        CREATE FUNCTION erp.{function}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF OLD.order_id = {int(erp_id)} THEN
                RAISE EXCEPTION 'internal rule 42 of the ERP' USING ERRCODE = 'P0001';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER {function} BEFORE UPDATE OR DELETE ON erp.sales_order_line
            FOR EACH ROW EXECUTE FUNCTION erp.{function}();
    """)
    try:
        await amend(crm, order_id, 2,
                    "UPDATE crm.sales_order_line SET quantity = 3 "
                    "WHERE order_id = $1 AND line_no = 1")
        status = await wait_version(crm, order_id, 2, "conflict", "rejected", "synced")
        assert status["status"] == "conflict", status
        assert status["reason"].startswith("the ERP refused the change")
        assert "rule 42" not in status["reason"] and "Error" not in status["reason"]
        assert not await letters_of(stack, order_id)
    finally:
        await erp.execute(f"""
            DROP TRIGGER IF EXISTS {function} ON erp.sales_order_line;
            DROP FUNCTION IF EXISTS erp.{function}();
        """)

    # v3 changes another line: the refused v2 change is part of the CRM order decided
    await amend(crm, order_id, 3,
                "UPDATE crm.sales_order_line SET unit_price = 4.50 "
                "WHERE order_id = $1 AND line_no = 2")
    await wait_version(crm, order_id, 3, "synced")
    final = await erp_order(erp, order_id)
    assert final is not None
    assert erp_lines(final) == await crm_lines(crm, order_id) == [
        (1, Decimal("3.000"), Decimal("10.00")), (2, Decimal("1.000"), Decimal("4.50"))]


async def test_order_totals_equal_the_erps_own_rounding(
    order_sync: ServiceProcess, dbs: Dbs, stack: StackAddresses, unique: str
) -> None:
    crm, erp = dbs
    cat = await catalogue(stack)
    product = cat.products[25][0]
    account = await new_account(crm, unique)
    order_id = await new_order(crm, account, [(1, product, "1", "0.25")],
                               warehouse_code=cat.warehouse_code, state="draft")
    # lines whose amounts end in exactly half a cent (0.125, 0.225, ...) plus the issue's
    # generator; the CRM total by the CRM's own SQL; then confirmed, in one transaction
    async with crm.transaction():
        await crm.execute(
            "UPDATE crm.sales_order_line SET discount_pct = 50 WHERE order_id = $1", order_id
        )
        await crm.execute(
            """INSERT INTO crm.sales_order_line (order_id, line_no, product_id, quantity,
                   unit_price, discount_pct)
               SELECT $1::bigint, g, $2::bigint, 1, 0.05 + 0.20 * g, 50
               FROM generate_series(2, 6) g
               UNION ALL
               SELECT $1::bigint, g, $2::bigint, 1 + g % 7, 10.00 + (g % 13) * 0.37, g % 5
               FROM generate_series(7, 300) g""",
            order_id, product,
        )
        await crm.execute(
            """UPDATE crm.sales_order o SET state = 'confirmed', confirmed_at = now(),
                   amount_total = (SELECT sum(round(quantity * unit_price
                                                    * (100 - discount_pct) / 100, 2))
                                   FROM crm.sales_order_line WHERE order_id = o.id)
               WHERE id = $1""",
            order_id,
        )
    await wait_status(crm, order_id, "synced")
    order = await erp_order(erp, order_id)
    assert order is not None and len(order["lines"]) == 300
    erp_sql_total = await erp.fetchval(
        """SELECT sum(round(quantity * unit_price * (100 - discount_pct) / 100, 2))
           FROM erp.sales_order_line WHERE order_id = $1""",
        order["header"]["id"],
    )
    crm_total = await crm.fetchval(
        "SELECT amount_total FROM crm.sales_order WHERE id = $1", order_id
    )
    assert order["header"]["amount_total"] == erp_sql_total == crm_total
    code, output = await reconcile(stack, order_id)
    assert code == 0, output


async def test_progress_is_recomputed_after_order_syncs_own_amendment(
    order_sync: ServiceProcess, dbs: Dbs, stack: StackAddresses, unique: str
) -> None:
    crm, erp = dbs
    cat = await catalogue(stack)
    (p1, _, _), (p2, _, _) = cat.products[26:28]
    account = await new_account(crm, unique)
    order_id = await new_order(
        crm, account, [(1, p1, "2", "10.00"), (2, p2, "1", "4.00")],
        warehouse_code=cat.warehouse_code,
    )
    await wait_status(crm, order_id, "synced")
    order = await erp_order(erp, order_id)
    assert order is not None
    await erp.execute(  # line 1 is delivered and invoiced whole; line 2 waits
        """UPDATE erp.sales_order_line SET qty_delivered = quantity, qty_invoiced = quantity
           WHERE order_id = $1 AND line_no = 1""",
        order["header"]["id"],
    )
    await wait_status(crm, order_id, "partially_shipped")

    # the CRM drops line 2: the only line left is delivered and invoiced
    await amend(crm, order_id, 2,
                "DELETE FROM crm.sales_order_line WHERE order_id = $1 AND line_no = 2")
    status = await wait_status(crm, order_id, "invoiced")
    assert status["crm_order_version"] == 2 and status["sync_state"] == "synced"


async def test_reconcile_order_sync_names_a_difference_planted_in_the_erp(
    order_sync: ServiceProcess, dbs: Dbs, stack: StackAddresses, unique: str
) -> None:
    crm, erp = dbs
    cat = await catalogue(stack)
    (p1, _, _), (p2, _, _) = cat.products[28:30]
    account = await new_account(crm, unique)
    order_id = await new_order(
        crm, account, [(1, p1, "2", "10.00"), (2, p2, "1", "4.00")],
        warehouse_code=cat.warehouse_code,
    )
    await crm.execute("UPDATE crm.sales_order SET amount_total = 24.00 WHERE id = $1", order_id)
    await wait_status(crm, order_id, "synced")
    code, output = await reconcile(stack, order_id)
    assert code == 0, output
    assert "1/1 orders compared" in output

    order = await erp_order(erp, order_id)
    assert order is not None
    await erp.execute(  # someone edits the ERP line behind order-sync's back
        "UPDATE erp.sales_order_line SET quantity = 7 WHERE order_id = $1 AND line_no = 2",
        order["header"]["id"],
    )
    code, output = await reconcile(stack, order_id)
    assert code == 1, output
    assert f"DEFECT CRM order {order_id}" in output
    assert "line 2 quantity: CRM 1 != ERP 7" in output
    # put the ERP back: the session's other tests (a full replay) expect agreeing orders
    await erp.execute(
        "UPDATE erp.sales_order_line SET quantity = 1 WHERE order_id = $1 AND line_no = 2",
        order["header"]["id"],
    )



async def test_an_order_the_erp_cancels_by_itself_is_a_conflict_at_once(
    order_sync: ServiceProcess, dbs: Dbs, stack: StackAddresses, unique: str
) -> None:
    crm, erp = dbs
    cat = await catalogue(stack)
    (p1, _, _), (p2, _, _) = cat.products[30:32]
    account = await new_account(crm, unique)
    order_id = await new_order(
        crm, account, [(1, p1, "2", "10.00"), (2, p2, "1", "4.00")],
        warehouse_code=cat.warehouse_code,
    )
    await wait_status(crm, order_id, "synced")
    order = await erp_order(erp, order_id)
    assert order is not None
    await erp.execute(  # the ERP cancels the order; the CRM order stays confirmed
        "UPDATE erp.sales_order SET state = 'cancelled' WHERE id = $1", order["header"]["id"]
    )
    status = await wait_version(crm, order_id, 1, "conflict")
    assert status["reason"] == (
        f"ERP order {order['header']['name']} was cancelled in the ERP but the CRM order "
        "is confirmed"
    )
    assert status["progress"] == "cancelled"
    assert not await letters_of(stack, order_id)

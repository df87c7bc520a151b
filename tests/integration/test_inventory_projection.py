"""inventory-projection against the real stack (Debezium -> Kafka -> service -> CRM).

Invariants shown here, each on a fresh ERP item, warehouse and CRM product:

* State is a function of the latest version of each source row (DESIGN.md 6): stock
  receipts, issues, reservations, releases, production (planned and completed), CRM
  confirmations and cancellations move on hand, reserved, pending CRM demand, incoming
  and ATP in ``crm_integration.availability`` exactly (per warehouse and overall), and
  equal the batch recomputation.
* Bad input (4): a negative quant and undecodable records reach dlq.inventory-projection
  with their reason; the service goes on.
* A shortage is raised once per CRM order version, not once per redelivery.
* The as-of time advances with Debezium heartbeats on an idle key (CRM table and topic).
* Replaying every source topic from the beginning changes no figure: with the group
  offsets reset AND the local state and its changelog gone (a new pod after a lost
  disk), the restarted worker resumes every partition from its beginning and converges
  to the same figures and to the reconcile recomputation; and it dead-letters no
  source record again (one letter per origin and cause, issue 9 case 7).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from ambidex.stack.local import StackAddresses
from services.inventory_projection.app import (
    CHANGE_TOPICS,
    SOURCES,
    STATE_TOPIC,
)
from services.inventory_projection.available_to_promise import AvailabilityKey
from services.inventory_projection.recompute import (
    diff_availability,
    read_projection,
    recompute_availability,
)
from services.shared.deadletter_tools import read_dead_letters
from tests.conftest import ServiceProcess, wait_until
from tests.integration.support import (
    metric,
    read_topic,
    replay_from_the_beginning,
    wait_caught_up,
)

pytestmark = pytest.mark.integration

SERVICE = "inventory-projection"
GROUP = "ambidex-inventory-projection.changes"  # its BatchSource's consumer group

FIGURES = """
SELECT on_hand, reserved, pending_crm_demand, available_to_promise, incoming, as_of
FROM crm_integration.availability
WHERE item_id = $1 AND warehouse_code = $2 AND NOT deleted"""


@dataclass(frozen=True)
class Fixture:
    """One fresh item in one fresh warehouse, known to both databases."""

    sku: str
    item_id: int
    product_id: int
    warehouse_id: int
    warehouse_code: str
    account_id: int
    customer_id: int


async def new_fixture(stack: StackAddresses, tag: str) -> Fixture:
    crm = await asyncpg.connect(stack.crm_admin_dsn)
    erp = await asyncpg.connect(stack.erp_admin_dsn)
    try:
        sku = f"INV-{tag}"
        code = f"WH-{tag}"
        item_id = await erp.fetchval(
            """INSERT INTO erp.item (sku, name, currency_code) VALUES ($1, $1, 'EUR')
               RETURNING id""",
            sku,
        )
        warehouse_id = await erp.fetchval(
            "INSERT INTO erp.warehouse (code, name) VALUES ($1, $1) RETURNING id", code
        )
        customer_id = await erp.fetchval("SELECT min(id) FROM erp.customer")
        product_id = await crm.fetchval(
            """INSERT INTO crm.product (sku, name, list_price, currency_code)
               VALUES ($1, $1, 10, 'EUR') RETURNING id""",
            sku,
        )
        account_id = await crm.fetchval("SELECT min(id) FROM crm.account")
    finally:
        await crm.close()
        await erp.close()
    return Fixture(sku, item_id, product_id, warehouse_id, code, account_id, customer_id)


@dataclass(frozen=True)
class Figures:
    on_hand: Decimal
    reserved: Decimal
    pending: Decimal
    atp: Decimal
    incoming: list[tuple[str | None, Decimal]]
    as_of: datetime


async def figures(stack: StackAddresses, item_id: int, code: str) -> Figures | None:
    crm = await asyncpg.connect(stack.crm_admin_dsn)
    try:
        row = await crm.fetchrow(FIGURES, item_id, code)
    finally:
        await crm.close()
    if row is None:
        return None
    incoming = json.loads(row["incoming"]) if row["incoming"] else []
    return Figures(
        row["on_hand"],
        row["reserved"],
        row["pending_crm_demand"],
        row["available_to_promise"],
        [(e["date"], Decimal(e["quantity"])) for e in incoming],
        row["as_of"],
    )


def expecting(
    stack: StackAddresses,
    item_id: int,
    code: str,
    check: Callable[[Figures], bool],
    seen: list[Figures | None],
) -> Callable[[], Any]:
    """A wait_until predicate: the key's figures satisfy ``check`` (last seen kept)."""

    async def predicate() -> bool:
        current = await figures(stack, item_id, code)
        seen.append(current)
        return current is not None and check(current)

    return predicate


def quantities(
    on_hand: int | str, reserved: int | str, pending: int | str, atp: int | str
) -> Callable[[Figures], bool]:
    want = tuple(Decimal(str(v)) for v in (on_hand, reserved, pending, atp))
    return lambda f: (f.on_hand, f.reserved, f.pending, f.atp) == want


# ----------------------------------------------------------------------------- fixtures


async def expect(
    stack: StackAddresses,
    fx: Fixture,
    check: Callable[[Figures], bool],
    code: str | None = None,
    timeout: float = 90.0,
) -> Figures:
    """Wait until the key (the fixture's warehouse, or ``code``) satisfies ``check``."""
    seen: list[Figures | None] = [None]
    where = code or fx.warehouse_code
    try:
        await wait_until(expecting(stack, fx.item_id, where, check, seen), timeout=timeout)
    except AssertionError:
        raise AssertionError(f"{fx.sku}@{where}: last figures {seen[-1]}") from None
    last = seen[-1]
    assert last is not None
    return last


async def connections(stack: StackAddresses) -> tuple[asyncpg.Connection, asyncpg.Connection]:
    return await asyncpg.connect(stack.crm_admin_dsn), await asyncpg.connect(stack.erp_admin_dsn)


async def confirm_order(crm: asyncpg.Connection, fx: Fixture, qty: int) -> tuple[int, int]:
    """A confirmed CRM order with one line, header and line in one transaction."""
    async with crm.transaction():
        order_id = await crm.fetchval(
            """INSERT INTO crm.sales_order (account_id, state, currency_code, warehouse_code,
                   confirmed_at)
               VALUES ($1, 'confirmed', 'EUR', $2, now()) RETURNING id""",
            fx.account_id,
            fx.warehouse_code,
        )
        line_id = await crm.fetchval(
            """INSERT INTO crm.sales_order_line (order_id, line_no, product_id, quantity,
                   unit_price)
               VALUES ($1, 1, $2, $3, 10) RETURNING id""",
            order_id,
            fx.product_id,
            qty,
        )
    return int(order_id), int(line_id)


async def receive(erp: asyncpg.Connection, fx: Fixture, qty: int) -> int:
    return int(
        await erp.fetchval(
            """INSERT INTO erp.stock_quant (item_id, warehouse_id, quantity)
               VALUES ($1, $2, $3) RETURNING id""",
            fx.item_id,
            fx.warehouse_id,
            qty,
        )
    )


# -------------------------------------------------------------------------------- tests


async def test_movements_move_the_figures_exactly(
    projection: ServiceProcess, stack: StackAddresses, unique: str
) -> None:
    fx = await new_fixture(stack, unique)
    crm, erp = await connections(stack)
    table_size = 'ambidex_table_rows{service="inventory-projection",table="availability"}'
    keys_before = await metric(projection, table_size)
    try:
        # receipt
        quant = await receive(erp, fx, 100)
        await expect(stack, fx, quantities(100, 0, 0, 100))
        await expect(stack, fx, quantities(100, 0, 0, 100), code="*")
        # the table's size counts the new item x warehouse key
        assert await metric(projection, table_size) >= keys_before + 1
        # issue
        await erp.execute(
            "UPDATE erp.stock_quant SET quantity = quantity - 30 WHERE id = $1", quant
        )
        await expect(stack, fx, quantities(70, 0, 0, 70))
        # reservation for an ERP-native order, then its release
        async with erp.transaction():
            so = await erp.fetchval(
                """INSERT INTO erp.sales_order (customer_id, state, currency_code, warehouse_id)
                   VALUES ($1, 'open', 'EUR', $2) RETURNING id""",
                fx.customer_id,
                fx.warehouse_id,
            )
            so_line = await erp.fetchval(
                """INSERT INTO erp.sales_order_line (order_id, line_no, item_id, quantity,
                       unit_price, qty_reserved)
                   VALUES ($1, 1, $2, 20, 10, 20) RETURNING id""",
                so,
                fx.item_id,
            )
            reservation = await erp.fetchval(
                """INSERT INTO erp.stock_reservation (item_id, warehouse_id,
                       sales_order_line_id, quantity, state)
                   VALUES ($1, $2, $3, 20, 'active') RETURNING id""",
                fx.item_id,
                fx.warehouse_id,
                so_line,
            )
        await expect(stack, fx, quantities(70, 20, 0, 50))
        await erp.execute(
            "UPDATE erp.stock_reservation SET state = 'released' WHERE id = $1", reservation
        )
        await expect(stack, fx, quantities(70, 0, 0, 70))
        # production: incoming with its date, then completion books the output to stock
        finish = date.today() + timedelta(days=10)
        mo = await erp.fetchval(
            """INSERT INTO erp.production_order (item_id, warehouse_id, quantity, state,
                   date_planned_finish)
               VALUES ($1, $2, 30, 'confirmed', $3) RETURNING id""",
            fx.item_id,
            fx.warehouse_id,
            finish,
        )
        incoming = [(finish.isoformat(), Decimal("30.000"))]
        await expect(stack, fx, lambda f: quantities(70, 0, 0, 70)(f) and f.incoming == incoming)
        async with erp.transaction():
            await erp.execute(
                """UPDATE erp.production_order SET state = 'done', qty_produced = quantity,
                       date_finished = now() WHERE id = $1""",
                mo,
            )
            await erp.execute(
                "UPDATE erp.stock_quant SET quantity = quantity + 30 WHERE id = $1", quant
            )
        await expect(stack, fx, lambda f: quantities(100, 0, 0, 100)(f) and f.incoming == [])
        # CRM confirmation: pending demand; cancellation: gone again
        order_id, _ = await confirm_order(crm, fx, 15)
        await expect(stack, fx, quantities(100, 0, 15, 85))
        await expect(stack, fx, quantities(100, 0, 15, 85), code="*")
        await crm.execute(
            """UPDATE crm.sales_order SET state = 'cancelled', cancelled_at = now()
               WHERE id = $1""",
            order_id,
        )
        await expect(stack, fx, quantities(100, 0, 0, 100))
        await expect(stack, fx, quantities(100, 0, 0, 100), code="*")
    finally:
        await crm.close()
        await erp.close()
    # and the figures are what a batch recomputation from the databases says
    keys = {AvailabilityKey(fx.item_id, fx.warehouse_id), AvailabilityKey(fx.item_id, None)}
    recomputed = await recompute_availability(stack.crm_admin_dsn, stack.erp_admin_dsn)
    projected = await read_projection(stack.crm_admin_dsn)
    assert keys <= set(projected)
    mine = {k: projected[k] for k in keys}
    assert diff_availability(mine, {k: recomputed[k] for k in keys}) == []


async def test_bad_input_goes_to_the_dead_letter_topic(
    projection: ServiceProcess, stack: StackAddresses, unique: str
) -> None:
    fx = await new_fixture(stack, unique)
    crm, erp = await connections(stack)
    garbage = f"not json {unique}".encode()
    try:
        # a confirmed CRM line whose product's SKU no ERP item has: held, and dead-lettered
        # once the ERP's heartbeats pass its commit by the grace (5 s of source time)
        unknown_sku = f"NOERP-{unique}"
        product = await crm.fetchval(
            """INSERT INTO crm.product (sku, name, list_price, currency_code)
               VALUES ($1, $1, 10, 'EUR') RETURNING id""",
            unknown_sku,
        )
        _, unknown_line = await confirm_order(crm, replace(fx, product_id=product), 3)
        quant = await receive(erp, fx, 5)
        await expect(stack, fx, quantities(5, 0, 0, 5))
        # a negative quant is folded as zero and dead-lettered with its reason
        await erp.execute("UPDATE erp.stock_quant SET quantity = -5 WHERE id = $1", quant)
        await expect(stack, fx, quantities(0, 0, 0, 0))
        # an undecodable record does not stop the service
        producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait("cdc.erp.stock_quant", key=b'{"id": 1}', value=garbage)
        finally:
            await producer.stop()
        await erp.execute("UPDATE erp.stock_quant SET quantity = 12 WHERE id = $1", quant)
        await expect(stack, fx, quantities(12, 0, 0, 12))
    finally:
        await crm.close()
        await erp.close()

    unknown_letters: list[str] = []

    async def all_dead_lettered() -> bool:
        negative = malformed = False
        unknown_letters.clear()
        async for _, letter in read_dead_letters(
            stack.kafka_bootstrap, SERVICE, limit=None, idle_timeout_s=5.0
        ):
            if f"erp.stock_quant {quant}:" in letter.reason and "negative" in letter.reason:
                negative = letter.source_topic == "cdc.erp.stock_quant"
            if letter.value == garbage:
                malformed = "JSON" in letter.reason
            if letter.reason.startswith(f"crm.sales_order_line {unknown_line}:"):
                assert letter.source_topic == "cdc.crm.sales_order_line"
                unknown_letters.append(letter.reason)
        return negative and malformed and bool(unknown_letters)

    await wait_until(all_dead_lettered, timeout=90, interval=1.0)
    assert await metric(projection, "ambidex_dead_letters_total") >= 3
    (reason,) = unknown_letters  # once, not per redelivery or heartbeat
    assert f"no ERP item with SKU '{unknown_sku}'" in reason
    assert "held and counted once the reference appears" in reason


async def test_shortage_is_raised_once_per_order_version(
    projection: ServiceProcess, stack: StackAddresses, unique: str
) -> None:
    fx = await new_fixture(stack, unique)
    crm, erp = await connections(stack)
    try:
        quant = await receive(erp, fx, 10)
        await expect(stack, fx, quantities(10, 0, 0, 10))
        order_id, line_id = await confirm_order(crm, fx, 25)
        await expect(stack, fx, quantities(10, 0, 25, -15))

        # redelivery: the order's and its line's change records, byte for byte, again
        originals = [
            *await read_topic(
                stack.kafka_bootstrap,
                "cdc.crm.sales_order",
                lambda k: k is not None and json.loads(k).get("id") == order_id,
                raw=True,
            ),
            *await read_topic(
                stack.kafka_bootstrap,
                "cdc.crm.sales_order_line",
                lambda k: k is not None and json.loads(k).get("id") == line_id,
                raw=True,
            ),
        ]
        assert len(originals) == 2
        producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap)
        await producer.start()
        try:
            for topic, (key, value) in zip(
                ("cdc.crm.sales_order", "cdc.crm.sales_order_line"), originals, strict=True
            ):
                assert isinstance(value, bytes)
                await producer.send_and_wait(topic, key=key, value=value)
        finally:
            await producer.stop()
        # stock moves later: the same order version is not evaluated again
        await erp.execute("UPDATE erp.stock_quant SET quantity = 11 WHERE id = $1", quant)
        await expect(stack, fx, quantities(11, 0, 25, -14))
        # an amendment is a new version: evaluated again
        async with crm.transaction():
            await crm.execute(
                "UPDATE crm.sales_order SET state = 'amended', version = 2 WHERE id = $1",
                order_id,
            )
            await crm.execute(
                "UPDATE crm.sales_order_line SET quantity = 30 WHERE id = $1", line_id
            )
        await expect(stack, fx, quantities(11, 0, 30, -19))
    finally:
        await crm.close()
        await erp.close()

    key = str(order_id).encode()

    async def two_shortages() -> list[dict[str, Any]] | None:
        found = await read_topic(stack.kafka_bootstrap, "ambidex.shortages", lambda k: k == key)
        records = [v for _, v in found if isinstance(v, dict)]
        return records if len(records) >= 2 else None

    await wait_until(two_shortages, timeout=60, interval=1.0)
    await asyncio.sleep(2.0)  # let any duplicate show up before counting
    records = await two_shortages()
    assert records is not None
    assert [r["crm_order_version"] for r in records] == [1, 2], records
    first, second = records
    assert first["shortage_id"] == f"{order_id}:1:{fx.sku}:{fx.warehouse_code}"
    assert (first["ordered_quantity"], first["available_before"], first["short_quantity"]) == (
        Decimal("25.000"),
        Decimal("10.000"),
        Decimal("15.000"),
    )
    assert (second["ordered_quantity"], second["short_quantity"]) == (
        Decimal("30.000"),
        Decimal("19.000"),
    )


async def test_heartbeats_advance_the_as_of_time_of_an_idle_key(
    projection: ServiceProcess, stack: StackAddresses, unique: str
) -> None:
    fx = await new_fixture(stack, unique)
    _, erp = await connections(stack)
    try:
        await receive(erp, fx, 3)
    finally:
        await erp.close()
    first = await expect(stack, fx, quantities(3, 0, 0, 3))
    # nothing touches the key any more; the as-of time still moves, figures stay
    later = await expect(stack, fx, lambda f: quantities(3, 0, 0, 3)(f) and f.as_of > first.as_of)
    assert later.as_of > first.as_of
    # and the compacted topic carries the advanced as-of too
    from services.inventory_projection.available_to_promise import topic_key

    wanted = topic_key(fx.sku, fx.warehouse_code)

    async def republished() -> bool:
        found = await read_topic(
            stack.kafka_bootstrap, "ambidex.availability", lambda k: k == wanted
        )
        stamps = {v["as_of"] for _, v in found if isinstance(v, dict)}
        return len(stamps) >= 2

    await wait_until(republished, timeout=60, interval=1.0)


async def test_replay_from_the_beginning_changes_nothing(
    projection: ServiceProcess, stack: StackAddresses, unique: str
) -> None:
    fx = await new_fixture(stack, unique)
    crm, erp = await connections(stack)
    try:
        negative = await receive(erp, fx, 8)
        await confirm_order(crm, fx, 3)
        # bad input the replay meets again: a negative quant (folded as zero), corrected
        for quantity in (-1, 8):
            await erp.execute(
                "UPDATE erp.stock_quant SET quantity = $2 WHERE id = $1", negative, quantity
            )
    finally:
        await crm.close()
        await erp.close()
    await expect(stack, fx, quantities(8, 0, 3, 5))

    async def negative_dead_lettered() -> bool:
        async for _, letter in read_dead_letters(
            stack.kafka_bootstrap, SERVICE, limit=None, idle_timeout_s=5.0
        ):
            if f"erp.stock_quant {negative}:" in letter.reason:
                return True
        return False

    await wait_until(negative_dead_lettered, timeout=60, interval=1.0)
    projection.stop()
    before = await read_projection(stack.crm_admin_dsn)

    # every source topic from the beginning, with no state to restore
    ends = await replay_from_the_beginning(
        stack.kafka_bootstrap, group=GROUP, topics=[*CHANGE_TOPICS, *SOURCES.topics],
        state_topic=STATE_TOPIC,
        state_dir=Path(projection.environment["AMBIDEX_TABLE_STATE_DIR"]) / SERVICE,
    )
    projection.start()
    await projection.wait_ready()
    await wait_caught_up(stack.kafka_bootstrap, GROUP, ends, timeout=180)
    # no source record is dead-lettered twice (for the same cause)
    letters = [
        letter
        async for _, letter in read_dead_letters(
            stack.kafka_bootstrap, SERVICE, limit=None, idle_timeout_s=5.0
        )
    ]
    assert [f"erp.stock_quant {negative}:" in letter.reason for letter in letters].count(True) == 1
    repeated = [i for i, n in Counter(letter.identity for letter in letters).items() if n > 1]
    assert repeated == []
    after = await read_projection(stack.crm_admin_dsn)
    assert set(after) >= set(before)
    assert diff_availability(after, before) == []
    keys = {AvailabilityKey(fx.item_id, fx.warehouse_id), AvailabilityKey(fx.item_id, None)}
    recomputed = await recompute_availability(stack.crm_admin_dsn, stack.erp_admin_dsn)
    assert diff_availability({k: after[k] for k in keys}, {k: recomputed[k] for k in keys}) == []

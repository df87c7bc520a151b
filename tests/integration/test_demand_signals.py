"""demand signals running inside inventory-projection, against the real stack
(Debezium -> Kafka -> the projection's process -> ERP, CRM and ambidex.demand-surges).

Invariants protected here, each on a fresh ERP item, warehouse and CRM product:

* a surge is raised once when CRM demand runs above its baseline and beyond supply over
  the item's lead time (``erp_integration.supply_priority`` row open, ``raised`` on the
  topic) and cleared once when the demand goes (row tombstoned, ``cleared``);
* a shortfall over the lead time alone (demand within its baseline floor, no stock)
  raises a surge that clears when stock arrives;
* a feasibility request is answered beside it in the CRM from the projection's figures:
  ``yes`` (the order's own demand counts for it), ``later`` (covered by dated
  production), ``no`` (short, by how much), a NaN quantity and an unknown order
  rejected with their reason: never silence;
* replaying every source topic from the beginning with the state gone changes no answer
  and no supply-priority row and raises no surge a second time.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from ambidex.stack.local import StackAddresses
from services.demand_signals.emit import SURGE_TOPIC
from services.inventory_projection.app import CHANGE_TOPICS, SOURCES, STATE_TOPIC
from services.inventory_projection.available_to_promise import topic_key
from tests.conftest import ServiceProcess, wait_until
from tests.integration.support import (
    read_topic,
    replay_from_the_beginning,
    wait_caught_up,
)
from tests.integration.test_inventory_projection import GROUP, SERVICE

pytestmark = pytest.mark.integration

PRIORITY = """
SELECT surge_id, priority, shortfall, reasons, deleted FROM erp_integration.supply_priority
WHERE item_id = $1 AND warehouse_code = $2"""
ANSWERS = """
SELECT request_id, verdict, reason, summary, earliest_ship_date, answer_lines
FROM crm_integration.feasibility WHERE crm_order_id = $1 ORDER BY request_id"""


@dataclass(frozen=True)
class Fixture:
    sku: str
    item_id: int
    product_id: int
    warehouse_id: int
    code: str
    account_id: int


async def new_fixture(stack: StackAddresses, tag: str, lead_time_days: int) -> Fixture:
    crm = await asyncpg.connect(stack.crm_admin_dsn)
    erp = await asyncpg.connect(stack.erp_admin_dsn)
    try:
        sku, code = f"DEM-{tag}", f"WD-{tag}"
        item_id = await erp.fetchval(
            "INSERT INTO erp.item (sku, name, currency_code, lead_time_days)"
            " VALUES ($1, $1, 'EUR', $2) RETURNING id", sku, lead_time_days)
        warehouse_id = await erp.fetchval(
            "INSERT INTO erp.warehouse (code, name) VALUES ($1, $1) RETURNING id", code)
        product_id = await crm.fetchval(
            "INSERT INTO crm.product (sku, name, list_price, currency_code)"
            " VALUES ($1, $1, 10, 'EUR') RETURNING id", sku)
        account_id = await crm.fetchval("SELECT min(id) FROM crm.account")
    finally:
        await crm.close()
        await erp.close()
    return Fixture(sku, item_id, product_id, warehouse_id, code, account_id)


async def confirmed_order(crm: asyncpg.Connection, fx: Fixture, qty: int) -> int:
    async with crm.transaction():
        order_id = await crm.fetchval(
            "INSERT INTO crm.sales_order (account_id, state, currency_code, warehouse_code,"
            " confirmed_at) VALUES ($1, 'confirmed', 'EUR', $2, now()) RETURNING id",
            fx.account_id, fx.code)
        await crm.execute(
            "INSERT INTO crm.sales_order_line (order_id, line_no, product_id, quantity,"
            " unit_price) VALUES ($1, 1, $2, $3, 10)", order_id, fx.product_id, qty)
    return int(order_id)


async def priority_row(stack: StackAddresses, fx: Fixture) -> asyncpg.Record | None:
    erp = await asyncpg.connect(stack.erp_admin_dsn)
    try:
        return await erp.fetchrow(PRIORITY, fx.item_id, fx.code)
    finally:
        await erp.close()


async def wait_row(stack: StackAddresses, fx: Fixture, *, deleted: bool,
                   shortfall: Decimal | None = None) -> asyncpg.Record:
    """The key's supply-priority row once it is (not) a tombstone (with ``shortfall``:
    the figures move while the two databases' changes arrive)."""
    seen: list[Any] = []

    async def there() -> bool:
        row = await priority_row(stack, fx)
        seen.append(row)
        return row is not None and row["deleted"] is deleted and (
            shortfall is None or row["shortfall"] == shortfall)

    try:
        await wait_until(there, timeout=90, interval=0.5)
    except AssertionError:
        raise AssertionError(f"{fx.sku}: supply priority {seen[-1] if seen else None}") from None
    return seen[-1]


async def surge_events(stack: StackAddresses, fx: Fixture) -> list[dict[str, Any]]:
    key = topic_key(fx.sku, fx.code)
    return [v for _, v in await read_topic(stack.kafka_bootstrap, SURGE_TOPIC,
                                           lambda k: k == key) if v is not None]


async def test_a_surge_is_raised_and_cleared_once(
    projection: ServiceProcess, stack: StackAddresses, unique: str
) -> None:
    fx = await new_fixture(stack, unique, lead_time_days=4)
    crm = await asyncpg.connect(stack.crm_admin_dsn)
    erp = await asyncpg.connect(stack.erp_admin_dsn)
    try:
        await erp.execute("INSERT INTO erp.stock_quant (item_id, warehouse_id, quantity)"
                          " VALUES ($1, $2, 100)", fx.item_id, fx.warehouse_id)
        # 70 a week is 10 a day, over a baseline floor of 1: x4 lead time = 40 > ATP 30
        order_id = await confirmed_order(crm, fx, 70)
        raised = await wait_row(stack, fx, deleted=False, shortfall=Decimal("10.000"))
        assert raised["surge_id"] == f"{fx.sku}:{fx.code}:1"
        # ATP 30 runs out on day 3 (70/7 x 4 > 30) of a 4-day lead time: not within half
        assert raised["priority"] == "normal"
        await crm.execute("UPDATE crm.sales_order SET state = 'cancelled', cancelled_at = now()"
                          " WHERE id = $1",
                          order_id)
        await wait_row(stack, fx, deleted=True)
    finally:
        await crm.close()
        await erp.close()

    async def both() -> bool:
        return [e["status"] for e in await surge_events(stack, fx)] == ["raised", "cleared"]

    await wait_until(both, timeout=60, interval=1.0)
    raised_event, cleared = await surge_events(stack, fx)
    assert raised_event["surge_id"] == cleared["surge_id"] == f"{fx.sku}:{fx.code}:1"
    assert sorted(raised_event["reasons"]) == ["above_baseline", "shortfall"]
    assert raised_event["evidence"] == [
        {"document": "order", "id": order_id, "quantity": Decimal("70.000")}]


async def test_a_shortfall_over_lead_time_alone_raises_a_surge(
    projection: ServiceProcess, stack: StackAddresses, unique: str
) -> None:
    fx = await new_fixture(stack, unique, lead_time_days=30)
    crm = await asyncpg.connect(stack.crm_admin_dsn)
    erp = await asyncpg.connect(stack.erp_admin_dsn)
    try:
        # a sent quote of 20 counts 10: within the baseline floor (14 a week), but
        # 10/7 a day over 30 days is 42.857 and nothing is in stock
        async with crm.transaction():
            quote = await crm.fetchval(
                "INSERT INTO crm.quote (account_id, state, currency_code, warehouse_code)"
                " VALUES ($1, 'sent', 'EUR', $2) RETURNING id", fx.account_id, fx.code)
            await crm.execute(
                "INSERT INTO crm.quote_line (quote_id, line_no, product_id, quantity,"
                " unit_price) VALUES ($1, 1, $2, 20, 10)", quote, fx.product_id)
        row = await wait_row(stack, fx, deleted=False, shortfall=Decimal("42.858"))
        assert row["priority"] == "high"  # nothing in stock: needed today
        assert row["reasons"] in (["shortfall"], '["shortfall"]')
        await erp.execute("INSERT INTO erp.stock_quant (item_id, warehouse_id, quantity)"
                          " VALUES ($1, $2, 50)", fx.item_id, fx.warehouse_id)
        await wait_row(stack, fx, deleted=True)
    finally:
        await crm.close()
        await erp.close()


async def ask(crm: asyncpg.Connection, order_id: int, lines: str) -> int:
    return int(await crm.fetchval(
        "INSERT INTO crm.feasibility_request (sales_order_id, lines) VALUES ($1, $2::jsonb)"
        " RETURNING id", order_id, lines))


async def answers(stack: StackAddresses, order_id: int) -> list[asyncpg.Record]:
    crm = await asyncpg.connect(stack.crm_admin_dsn)
    try:
        return list(await crm.fetch(ANSWERS, order_id))
    finally:
        await crm.close()


async def test_feasibility_requests_are_answered_beside_them(
    projection: ServiceProcess, stack: StackAddresses, unique: str
) -> None:
    fx = await new_fixture(stack, unique, lead_time_days=0)
    soon = (datetime.now(UTC) + timedelta(days=10)).date()
    crm = await asyncpg.connect(stack.crm_admin_dsn)
    erp = await asyncpg.connect(stack.erp_admin_dsn)
    try:
        await erp.execute("INSERT INTO erp.stock_quant (item_id, warehouse_id, quantity)"
                          " VALUES ($1, $2, 50)", fx.item_id, fx.warehouse_id)
        await erp.execute(
            "INSERT INTO erp.production_order (item_id, warehouse_id, quantity,"
            " date_planned_finish) VALUES ($1, $2, 30, $3)", fx.item_id, fx.warehouse_id, soon)
        order_id = await confirmed_order(crm, fx, 10)  # ATP 40; the order holds 10

        async def figures_in() -> bool:  # ask once the projection has both databases'
            return await crm.fetchval(
                "SELECT available_to_promise FROM crm_integration.availability"
                " WHERE item_id = $1 AND warehouse_code = $2", fx.item_id, fx.code
            ) == Decimal("40.000")

        await wait_until(figures_in, timeout=90, interval=0.5)
        line = '[{{"line_no": 1, "product_id": {p}, "quantity": {q}}}]'
        asked = {}
        for name, qty in (("yes", '"50"'), ("later", "70"), ("no", "100"), ("nan", '"NaN"')):
            asked[name] = await ask(crm, order_id, line.format(p=fx.product_id, q=qty))
        unknown = await ask(crm, 2_000_000_000 + int(order_id), line.format(
            p=fx.product_id, q="1"))
    finally:
        await crm.close()
        await erp.close()

    async def all_answered() -> bool:
        rows = await answers(stack, order_id)
        return len(rows) == 4 and all(r["verdict"] is not None for r in rows)

    await wait_until(all_answered, timeout=90, interval=0.5)
    got = {r["request_id"]: r for r in await answers(stack, order_id)}
    assert got[asked["yes"]]["verdict"] == "yes"
    assert got[asked["later"]]["verdict"] == "later"
    assert got[asked["later"]]["earliest_ship_date"] == soon
    assert got[asked["no"]]["verdict"] == "no"
    assert "short by 20.000" in got[asked["no"]]["summary"]
    assert got[asked["nan"]]["verdict"] == "rejected"
    assert got[asked["nan"]]["reason"] == (
        "bad_request: line 1 quantity is NaN, not a finite quantity")

    async def unknown_answered() -> bool:
        rows = await answers(stack, 2_000_000_000 + order_id)
        return bool(rows) and rows[0]["verdict"] is not None

    await wait_until(unknown_answered, timeout=90, interval=0.5)
    (row,) = await answers(stack, 2_000_000_000 + order_id)
    assert row["request_id"] == unknown
    assert row["reason"].startswith("unknown_order:")


async def _answer_rows(stack: StackAddresses) -> dict[int, tuple[Any, ...]]:
    crm = await asyncpg.connect(stack.crm_admin_dsn)
    try:
        rows = await crm.fetch(
            "SELECT request_id, verdict, reason, summary, earliest_ship_date, deleted,"
            " source_commit_lsn, source_lsn FROM crm_integration.feasibility_answer")
    finally:
        await crm.close()
    return {r["request_id"]: tuple(r) for r in rows}


async def _priority_rows(stack: StackAddresses) -> dict[tuple[int, str], tuple[Any, ...]]:
    erp = await asyncpg.connect(stack.erp_admin_dsn)
    try:
        rows = await erp.fetch(
            "SELECT item_id, warehouse_code, surge_id, priority, shortfall, deleted"
            " FROM erp_integration.supply_priority")
    finally:
        await erp.close()
    # a tombstone keeps the figures of its last upsert, which a replay may have
    # judged at another batch boundary: what it says is its surge and that it ended
    return {(r["item_id"], r["warehouse_code"]):
            (r["surge_id"], True) if r["deleted"] else tuple(r) for r in rows}


async def test_replay_from_the_beginning_changes_no_answer_and_raises_no_surge_twice(
    projection: ServiceProcess, stack: StackAddresses, unique: str
) -> None:
    fx = await new_fixture(stack, unique, lead_time_days=4)
    crm = await asyncpg.connect(stack.crm_admin_dsn)
    erp = await asyncpg.connect(stack.erp_admin_dsn)
    try:
        await erp.execute("INSERT INTO erp.stock_quant (item_id, warehouse_id, quantity)"
                          " VALUES ($1, $2, 100)", fx.item_id, fx.warehouse_id)
        order_id = await confirmed_order(crm, fx, 70)
        await ask(crm, order_id, f'[{{"line_no": 1, "product_id": {fx.product_id},'
                                 f' "quantity": 20}}]')
    finally:
        await crm.close()
        await erp.close()
    await wait_row(stack, fx, deleted=False)

    async def answered() -> bool:
        rows = await answers(stack, order_id)
        return bool(rows) and rows[0]["verdict"] is not None

    await wait_until(answered, timeout=90, interval=0.5)
    projection.stop()
    before_answers, before_priorities = await _answer_rows(stack), await _priority_rows(stack)
    before_events = await read_topic(stack.kafka_bootstrap, SURGE_TOPIC, bool)

    ends = await replay_from_the_beginning(
        stack.kafka_bootstrap, group=GROUP, topics=[*CHANGE_TOPICS, *SOURCES.topics],
        state_topic=STATE_TOPIC,
        state_dir=Path(projection.environment["AMBIDEX_TABLE_STATE_DIR"]) / SERVICE,
    )
    projection.start()
    await projection.wait_ready()
    await wait_caught_up(stack.kafka_bootstrap, GROUP, ends, timeout=180)
    after_answers, after_priorities = await _answer_rows(stack), await _priority_rows(stack)
    assert {k: after_answers[k] for k in before_answers} == before_answers
    assert {k: after_priorities[k] for k in before_priorities} == before_priorities
    # the replay rebuilt the surge book from the rows: the open surge of this key is
    # the same surge (same id), and no surge id was raised twice
    events = await read_topic(stack.kafka_bootstrap, SURGE_TOPIC, bool)
    raised = Counter(v["surge_id"] for _, v in events if v and v["status"] == "raised")
    mine = f"{fx.sku}:{fx.code}:1"
    assert raised[mine] >= 1
    new_raises = Counter(v["surge_id"] for _, v in events[len(before_events):]
                         if v and v["status"] == "raised")
    assert new_raises[mine] == 0, new_raises

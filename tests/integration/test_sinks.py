"""PositionGuardedSink against a real PostgreSQL.

Invariants protected (DESIGN.md numbering):

- 2 — a stale change (older source position than the stored one) never overwrites a
  newer one; an equal position (redelivery) changes nothing.
- 1/6 — a replayed batch writes nothing new (not even a no-op row version: ``xmin`` is
  unchanged), and a delete followed by the replay of an older insert does not
  resurrect the row (tombstones).
- 3 — a batch is applied whole: one failing row rolls back every table of the batch.
- 5 — numeric values are exact Decimals; a float for a numeric column is refused.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from itertools import count
from typing import Any

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from services.shared.observability import ServiceMetrics
from services.shared.position import SourcePosition
from services.shared.sinks import (
    DeleteSpec,
    PositionGuardedSink,
    SinkResult,
    SinkWrite,
    UpsertSpec,
    position_columns_ddl,
    quote_ident,
    quote_table,
    tombstone_column_ddl,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def postgres_dsn(fresh_database: Callable[[str, str], Awaitable[str]]) -> str:
    """A database of its own in the shared stack's CRM cluster."""
    return await fresh_database("crm", "sinks")


# =====================================================================================
# Tables under test
# =====================================================================================


@pytest.fixture(scope="module")
async def pool(postgres_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    deadline = time.monotonic() + 30
    while True:  # the port opens slightly before the server accepts logins
        try:
            created = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=4)
            break
        except (OSError, asyncpg.CannotConnectNowError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
    async with created as p:
        await p.execute("CREATE SCHEMA it_integration")
        yield p


_ids = count(1)


@dataclass(frozen=True)
class Tables:
    orders: UpsertSpec
    lines: UpsertSpec


async def _create_tables(pool: asyncpg.Pool) -> Tables:
    n = next(_ids)
    orders = UpsertSpec(
        f"it_integration.orders_{n}", ("crm_order_id",), ("status", "amount", "currency_code")
    )
    lines = UpsertSpec(f"it_integration.lines_{n}", ("crm_order_id", "line_no"), ("qty",))
    await pool.execute(
        f"CREATE TABLE {quote_table(orders.table)} ("
        " crm_order_id bigint PRIMARY KEY, status text, amount numeric(18,2),"
        " currency_code char(3),"
        f" {position_columns_ddl()}, {tombstone_column_ddl()})"
    )
    await pool.execute(
        f"CREATE TABLE {quote_table(lines.table)} ("
        " crm_order_id bigint, line_no int, qty numeric(14,3) CHECK (qty > 0),"
        f" {position_columns_ddl()}, {tombstone_column_ddl()},"
        " PRIMARY KEY (crm_order_id, line_no))"
    )
    return Tables(orders, lines)


@pytest.fixture
async def tables(pool: asyncpg.Pool) -> Tables:
    return await _create_tables(pool)


@pytest.fixture
def sink(pool: asyncpg.Pool) -> PositionGuardedSink:
    return PositionGuardedSink(pool, name="it")


def P(commit: int, lsn: int) -> SourcePosition:
    return SourcePosition(commit, lsn)


def order(spec: UpsertSpec, oid: int, status: str, pos: SourcePosition) -> SinkWrite:
    return spec.upsert(
        {"crm_order_id": oid, "status": status, "amount": Decimal("120000.00"),
         "currency_code": "EUR"},
        pos,
    )


async def rows(pool: asyncpg.Pool, spec: UpsertSpec) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Every row including tombstones: {key: {column: value, 'deleted': ..., positions}}."""
    records = await pool.fetch(f"SELECT * FROM {quote_table(spec.table)}")
    return {tuple(r[c] for c in spec.key_columns): dict(r) for r in records}


async def live(pool: asyncpg.Pool, spec: UpsertSpec) -> dict[tuple[Any, ...], dict[str, Any]]:
    return {
        key: {c: row[c] for c in spec.value_columns}
        for key, row in (await rows(pool, spec)).items()
        if not row["deleted"]
    }


# =====================================================================================
# Invariant 2: stale never overwrites newer
# =====================================================================================


async def test_stale_change_never_overwrites_newer(
    pool: asyncpg.Pool, sink: PositionGuardedSink, tables: Tables
) -> None:
    o = tables.orders
    assert await sink.apply([order(o, 1, "shipped", P(200, 5))]) == SinkResult(1, 0)
    # an older change of the same order arrives late (redelivery after a rebalance)
    assert await sink.apply([order(o, 1, "confirmed", P(100, 9))]) == SinkResult(0, 1)
    # same commit, earlier change inside it
    assert await sink.apply([order(o, 1, "draft", P(200, 4))]) == SinkResult(0, 1)
    # exactly the same position again = redelivery
    assert await sink.apply([order(o, 1, "other", P(200, 5))]) == SinkResult(0, 1)
    stored = (await rows(pool, o))[(1,)]
    assert (stored["status"], stored["source_commit_lsn"], stored["source_lsn"]) == (
        "shipped", 200, 5,
    )
    assert await sink.apply([order(o, 1, "invoiced", P(300, 1))]) == SinkResult(1, 0)
    assert (await live(pool, o))[(1,)]["status"] == "invoiced"


async def test_several_writes_to_one_key_in_a_batch_keep_the_newest(
    pool: asyncpg.Pool, sink: PositionGuardedSink, tables: Tables
) -> None:
    o = tables.orders
    batch = [order(o, 7, "b", P(10, 2)), order(o, 7, "c", P(10, 3)), order(o, 7, "a", P(10, 1))]
    assert await sink.apply(batch) == SinkResult(1, 2)
    assert (await live(pool, o))[(7,)]["status"] == "c"


# =====================================================================================
# Invariants 1/6: replay is a no-op, deletes don't resurrect
# =====================================================================================


async def test_replayed_batch_writes_nothing_new(
    pool: asyncpg.Pool, sink: PositionGuardedSink, tables: Tables
) -> None:
    o, ln = tables.orders, tables.lines
    batch: list[SinkWrite] = []
    for i in range(1, 51):
        batch.append(order(o, i, "confirmed", P(1000 + i, 1)))
        batch.append(ln.upsert({"crm_order_id": i, "line_no": 1, "qty": Decimal("2.500")},
                               P(1000 + i, 2)))
    assert await sink.apply(batch) == SinkResult(100, 0)
    before = await pool.fetch(f"SELECT xmin::text, * FROM {quote_table(o.table)} ORDER BY 2")
    assert await sink.apply(batch) == SinkResult(0, 100)
    after = await pool.fetch(f"SELECT xmin::text, * FROM {quote_table(o.table)} ORDER BY 2")
    assert [dict(r) for r in before] == [dict(r) for r in after]  # not even a no-op update


async def test_delete_then_older_insert_replay_does_not_resurrect(
    pool: asyncpg.Pool, sink: PositionGuardedSink, tables: Tables
) -> None:
    o = tables.orders
    insert = order(o, 5, "confirmed", P(10, 1))
    delete = o.delete({"crm_order_id": 5}, P(20, 1))
    assert await sink.apply([insert]) == SinkResult(1, 0)
    assert await sink.apply([delete]) == SinkResult(1, 0)
    assert (5,) not in await live(pool, o)
    tomb = (await rows(pool, o))[(5,)]
    assert tomb["deleted"] is True
    assert (tomb["status"], tomb["amount"], tomb["currency_code"]) == (None, None, None)
    # the whole history is replayed (consumer group reset): nothing comes back
    assert await sink.apply([insert, delete]) == SinkResult(0, 2)
    assert await sink.apply([insert]) == SinkResult(0, 1)
    assert (5,) not in await live(pool, o)
    # a genuinely newer insert of the same key revives it
    assert await sink.apply([order(o, 5, "re-opened", P(30, 1))]) == SinkResult(1, 0)
    assert (await live(pool, o))[(5,)]["status"] == "re-opened"


async def test_delete_of_a_never_seen_key_leaves_a_tombstone(
    pool: asyncpg.Pool, sink: PositionGuardedSink, tables: Tables
) -> None:
    o = tables.orders
    assert await sink.apply([o.delete({"crm_order_id": 9}, P(50, 1))]) == SinkResult(1, 0)
    # the insert that preceded the delete at the source arrives after it
    assert await sink.apply([order(o, 9, "confirmed", P(40, 1))]) == SinkResult(0, 1)
    assert (9,) not in await live(pool, o)
    assert (await rows(pool, o))[(9,)]["deleted"] is True


async def test_a_tombstone_keeps_the_rows_identity_or_takes_the_given_one(
    pool: asyncpg.Pool, sink: PositionGuardedSink, tables: Tables
) -> None:
    o = tables.orders
    ends = DeleteSpec(o.table, o.key_columns, ("status", "amount"), kept_columns=("currency_code",))
    await sink.apply([order(o, 11, "confirmed", P(40, 1))])
    assert await sink.apply([ends.delete({"crm_order_id": 11}, P(50, 1), {"currency_code": "USD"}),
                             ends.delete({"crm_order_id": 12}, P(50, 2), {"currency_code": "CHF"})]
                            ) == SinkResult(2, 0)
    stored = await rows(pool, o)
    assert [(stored[(k,)]["deleted"], stored[(k,)]["status"], stored[(k,)]["currency_code"])
            for k in (11, 12)] == [(True, None, "EUR"), (True, None, "CHF")]
    # a replayed tombstone is a redelivery: nothing changes
    assert await sink.apply([ends.delete({"crm_order_id": 12}, P(50, 2), {"currency_code": "X"})]
                            ) == SinkResult(0, 1)
    assert (await rows(pool, o))[(12,)]["currency_code"] == "CHF"


# =====================================================================================
# Invariant 3: a batch is atomic
# =====================================================================================


async def test_a_failing_row_rolls_back_the_whole_batch(
    pool: asyncpg.Pool, sink: PositionGuardedSink, tables: Tables
) -> None:
    o, ln = tables.orders, tables.lines
    good = [
        order(o, 1, "confirmed", P(10, 1)),
        ln.upsert({"crm_order_id": 1, "line_no": 1, "qty": Decimal("1")}, P(10, 2)),
    ]
    bad = ln.upsert({"crm_order_id": 1, "line_no": 2, "qty": Decimal("-1")}, P(10, 3))  # CHECK
    with pytest.raises(asyncpg.CheckViolationError):
        await sink.apply([*good, bad])
    assert await rows(pool, o) == {}
    assert await rows(pool, ln) == {}
    # the connection went back to the pool clean; the corrected batch then applies whole
    assert await sink.apply(good) == SinkResult(2, 0)


# =====================================================================================
# Invariant 5, identifiers, concurrency, metrics
# =====================================================================================


async def test_decimals_are_exact_and_floats_are_refused(
    pool: asyncpg.Pool, sink: PositionGuardedSink, tables: Tables
) -> None:
    o = tables.orders
    amount = Decimal("1234567890123456.78")
    await sink.apply([o.upsert({"crm_order_id": 1, "status": "x", "amount": amount,
                                "currency_code": "USD"}, P(1, 1))])
    stored = (await rows(pool, o))[(1,)]
    assert stored["amount"] == amount and isinstance(stored["amount"], Decimal)
    assert stored["currency_code"] == "USD"
    with pytest.raises(TypeError, match="Decimal"):
        await sink.apply([o.upsert({"crm_order_id": 2, "status": "x", "amount": 0.1,
                                    "currency_code": "USD"}, P(2, 1))])
    assert (2,) not in await rows(pool, o)


async def test_hostile_identifiers_are_quoted(
    pool: asyncpg.Pool, sink: PositionGuardedSink
) -> None:
    table = 'it_integration.we"ird; DROP TABLE x; --'
    key_col = 'key "col"'
    spec = UpsertSpec(table, (key_col,), ("Value Col",))
    await pool.execute(
        f"CREATE TABLE {quote_table(table)} ({quote_ident(key_col)} text PRIMARY KEY,"
        f" {quote_ident('Value Col')} text, {position_columns_ddl()}, {tombstone_column_ddl()})"
    )
    write = spec.upsert({'key "col"': "k'; --", "Value Col": "v"}, P(1, 1))
    assert await sink.apply([write]) == SinkResult(1, 0)
    assert await sink.apply([spec.delete({'key "col"': "k'; --"}, P(2, 1))]) == SinkResult(1, 0)
    assert await pool.fetchval(f"SELECT count(*) FROM {quote_table(table)} WHERE deleted") == 1


async def test_concurrent_overlapping_batches_converge_to_the_newest(
    pool: asyncpg.Pool, sink: PositionGuardedSink, tables: Tables
) -> None:
    """Two workers (e.g. during a rebalance) write the same keys in opposite orders."""
    o = tables.orders
    old = [order(o, i, "old", P(10, i)) for i in range(200)]
    new = [order(o, i, "new", P(20, i)) for i in reversed(range(200))]
    results = await asyncio.gather(*(sink.apply(b) for b in (old, new, old, new)))
    assert sum(r.written + r.stale for r in results) == 800
    assert {v["status"] for v in (await live(pool, o)).values()} == {"new"}


async def test_sink_records_latency_and_row_outcomes(
    pool: asyncpg.Pool, tables: Tables
) -> None:
    registry = CollectorRegistry()
    metrics = ServiceMetrics("order-sync", registry)
    sink = PositionGuardedSink(pool, name="erp", metrics=metrics)
    o = tables.orders
    await sink.apply([order(o, 1, "a", P(2, 1))])
    await sink.apply([order(o, 1, "a", P(1, 1)), order(o, 2, "a", P(1, 1))])
    labels = {"service": "order-sync", "sink": "erp"}
    get = registry.get_sample_value
    assert get("ambidex_sink_rows_total", {**labels, "outcome": "written"}) == 2
    assert get("ambidex_sink_rows_total", {**labels, "outcome": "stale"}) == 1
    assert get("ambidex_sink_latency_seconds_count", labels) == 2


async def test_missing_column_is_reported_before_writing(
    sink: PositionGuardedSink, tables: Tables
) -> None:
    spec = UpsertSpec(tables.orders.table, ("crm_order_id",), ("no_such_column",))
    with pytest.raises(ValueError, match="no_such_column"):
        await sink.apply([spec.upsert({"crm_order_id": 1, "no_such_column": 1}, P(1, 1))])

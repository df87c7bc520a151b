"""Sink SQL generation and batch planning (no database).

Protects: the position guard is in every generated statement (invariant 2); names are
always quoted (no SQL injection through identifiers); deletes are tombstone upserts,
never DELETE (invariant 1/6: no resurrection on replay); several writes to one key in a
batch reduce to the newest.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from services.shared.position import SourcePosition
from services.shared.sinks import (
    DeleteSpec,
    SinkResult,
    SinkWrite,
    Upsert,
    UpsertSpec,
    delete_sql,
    plan_batch,
    position_columns_ddl,
    quote_ident,
    quote_table,
    tombstone_column_ddl,
    upsert_sql,
)

P = SourcePosition
ORDERS = UpsertSpec("crm_integration.order_status", ("crm_order_id",), ("status", "amount"))
TYPES = {"crm_order_id": "bigint", "status": "text", "amount": "numeric(18,2)"}
GUARD = (
    "WHERE (target.source_commit_lsn, target.source_lsn) "
    "< (EXCLUDED.source_commit_lsn, EXCLUDED.source_lsn)"
)


def _flat(sql: str) -> str:
    return " ".join(sql.split())


# ----------------------------------------------------------------------------- SQL


def test_quote_ident_and_table() -> None:
    assert quote_ident("orders") == '"orders"'
    assert quote_ident('a"b') == '"a""b"'
    assert quote_table("crm_integration.order_status") == '"crm_integration"."order_status"'
    assert quote_table('x"; DROP TABLE y; --') == '"x""; DROP TABLE y; --"'
    for bad in ("", "a\x00b", "x" * 64):
        with pytest.raises(ValueError):
            quote_ident(bad)
    with pytest.raises(ValueError):
        quote_table("a.b.c")


def test_ddl_fragments() -> None:
    assert position_columns_ddl() == "source_commit_lsn bigint not null, source_lsn bigint not null"
    assert tombstone_column_ddl() == "deleted boolean not null default false"


def test_upsert_sql() -> None:
    sql = _flat(upsert_sql(ORDERS, TYPES))
    assert sql == _flat(
        'INSERT INTO "crm_integration"."order_status" AS target '
        '("crm_order_id", "status", "amount", deleted, source_commit_lsn, source_lsn) '
        'SELECT "crm_order_id", "status", "amount", false, source_commit_lsn, source_lsn '
        "FROM unnest($1::bigint[], $2::text[], $3::numeric(18,2)[], $4::bigint[], $5::bigint[]) "
        'AS u("crm_order_id", "status", "amount", source_commit_lsn, source_lsn) '
        'ON CONFLICT ("crm_order_id") DO UPDATE SET "status" = EXCLUDED."status", '
        '"amount" = EXCLUDED."amount", deleted = false, '
        "source_commit_lsn = EXCLUDED.source_commit_lsn, source_lsn = EXCLUDED.source_lsn "
        + GUARD
    )


def test_upsert_sql_without_tombstones_and_with_composite_key() -> None:
    spec = UpsertSpec("lines", ("order_id", "line_no"), ("qty",), tombstones=False)
    sql = _flat(upsert_sql(spec, {"order_id": "bigint", "line_no": "integer",
                                  "qty": "numeric(14,3)"}))
    assert "deleted" not in sql
    assert 'ON CONFLICT ("order_id", "line_no")' in sql
    assert sql.endswith(GUARD)


def test_delete_is_a_guarded_tombstone_upsert_never_a_delete() -> None:
    sql = _flat(delete_sql(ORDERS.delete_spec(), TYPES))
    assert "DELETE" not in sql.upper().replace("DELETED", "")
    assert sql == _flat(
        'INSERT INTO "crm_integration"."order_status" AS target '
        '("crm_order_id", "status", "amount", deleted, source_commit_lsn, source_lsn) '
        'SELECT "crm_order_id", NULL::text, NULL::numeric(18,2), true, source_commit_lsn, '
        "source_lsn FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) "
        'AS u("crm_order_id", source_commit_lsn, source_lsn) '
        'ON CONFLICT ("crm_order_id") DO UPDATE SET "status" = NULL, "amount" = NULL, '
        "deleted = true, source_commit_lsn = EXCLUDED.source_commit_lsn, "
        "source_lsn = EXCLUDED.source_lsn " + GUARD
    )


def test_a_tombstone_writes_its_kept_columns_where_the_row_has_none() -> None:
    spec = DeleteSpec("t", ("k",), ("v",), kept_columns=("ident",))
    sql = _flat(delete_sql(spec, {"k": "bigint", "v": "numeric(9,2)", "ident": "text"}))
    assert sql == _flat(
        'INSERT INTO "t" AS target ("k", "ident", "v", deleted, source_commit_lsn, source_lsn) '
        'SELECT "k", "ident", NULL::numeric(9,2), true, source_commit_lsn, source_lsn '
        "FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bigint[]) "
        'AS u("k", "ident", source_commit_lsn, source_lsn) '
        'ON CONFLICT ("k") DO UPDATE SET "v" = NULL, "ident" = COALESCE(target."ident", '
        'EXCLUDED."ident"), '
        "deleted = true, source_commit_lsn = EXCLUDED.source_commit_lsn, "
        "source_lsn = EXCLUDED.source_lsn " + GUARD
    )
    assert spec.delete({"k": 1}, P(1, 1), {"ident": "s-1"}).kept == ("s-1",)
    with pytest.raises(ValueError, match="keeps exactly"):
        spec.delete({"k": 1}, P(1, 1))
    with pytest.raises(ValueError, match="keeps exactly"):
        DeleteSpec("t", ("k",)).delete({"k": 1}, P(1, 1), {"ident": "s-1"})
    with pytest.raises(ValueError, match="duplicate"):
        DeleteSpec("t", ("k",), ("v",), kept_columns=("v",))


def test_hostile_names_only_appear_quoted() -> None:
    spec = UpsertSpec('s.t"; DROP TABLE x; --', ('k") --',), ("v v",))
    sql = upsert_sql(spec, {'k") --': "text", "v v": "text"})
    assert '"t""; DROP TABLE x; --"' in sql
    assert '"k"") --"' in sql
    assert '"v v" = EXCLUDED."v v"' in sql


# -------------------------------------------------------------------------- specs


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="key column"):
        UpsertSpec("t", (), ("v",))
    with pytest.raises(ValueError, match="duplicate"):
        UpsertSpec("t", ("k",), ("k",))
    with pytest.raises(ValueError, match="managed by the sink"):
        UpsertSpec("t", ("k",), ("source_lsn",))
    with pytest.raises(ValueError, match="managed by the sink"):
        DeleteSpec("t", ("k",), ("deleted",))
    with pytest.raises(ValueError, match="tombstones"):
        UpsertSpec("t", ("k",), ("v",), tombstones=False).delete_spec()


def test_write_validation() -> None:
    with pytest.raises(ValueError, match="missing"):
        ORDERS.upsert({"crm_order_id": 1, "status": "x"}, P(1, 1))
    with pytest.raises(ValueError, match="unknown"):
        ORDERS.upsert({"crm_order_id": 1, "status": "x", "amount": 1, "oops": 2}, P(1, 1))
    with pytest.raises(ValueError, match="NULL"):
        ORDERS.upsert({"crm_order_id": None, "status": "x", "amount": 1}, P(1, 1))
    with pytest.raises(TypeError, match="SourcePosition"):
        ORDERS.upsert({"crm_order_id": 1, "status": "x", "amount": 1}, (1, 1))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not key"):
        ORDERS.delete({"crm_order_id": 1, "status": "x"}, P(1, 1))


# ------------------------------------------------------------------------- planning


def _o(oid: int, status: str, pos: SourcePosition) -> Upsert:
    return ORDERS.upsert({"crm_order_id": oid, "status": status, "amount": Decimal("1")}, pos)


def test_plan_keeps_the_newest_write_per_key_in_key_order() -> None:
    lines = UpsertSpec("crm_integration.lines", ("id",), ("q",))
    batch: list[SinkWrite] = [
        ORDERS.upsert({"crm_order_id": 2, "status": "a", "amount": 1}, P(5, 1)),
        ORDERS.upsert({"crm_order_id": 1, "status": "b", "amount": 1}, P(5, 2)),
        ORDERS.upsert({"crm_order_id": 2, "status": "c", "amount": 1}, P(5, 3)),
        ORDERS.delete({"crm_order_id": 1}, P(4, 9)),  # older than the upsert of 1
        lines.upsert({"id": 1, "q": 1}, P(5, 4)),
        ORDERS.delete({"crm_order_id": 3}, P(6, 1)),
    ]
    plan = plan_batch(batch)
    assert plan.total == 6 and plan.superseded == 2
    assert [t.table for t in plan.tables] == ["crm_integration.lines",
                                             "crm_integration.order_status"]
    orders = plan.tables[1]
    assert [(w.key, w.values) for w in orders.upserts] == [((1,), ("b", 1)), ((2,), ("c", 1))]
    assert [w.key for w in orders.deletes] == [(3,)]


def test_plan_tie_keeps_the_first() -> None:
    a = ORDERS.upsert({"crm_order_id": 1, "status": "first", "amount": 1}, P(1, 1))
    b = ORDERS.upsert({"crm_order_id": 1, "status": "second", "amount": 1}, P(1, 1))
    assert plan_batch([a, b]).tables[0].upserts == [a]


def test_plan_refuses_inconsistent_specs() -> None:
    other = UpsertSpec(ORDERS.table, ("crm_order_id",), ("status",))
    with pytest.raises(ValueError, match="two different"):
        plan_batch([
            ORDERS.upsert({"crm_order_id": 1, "status": "a", "amount": 1}, P(1, 1)),
            other.upsert({"crm_order_id": 2, "status": "a"}, P(1, 2)),
        ])
    no_tomb = UpsertSpec("t", ("k",), ("v",), tombstones=False)
    with pytest.raises(ValueError, match="tombstones"):
        plan_batch([no_tomb.upsert({"k": 1, "v": 1}, P(1, 1)),
                    DeleteSpec("t", ("k",)).delete({"k": 2}, P(1, 2))])


def test_sink_result_adds() -> None:
    assert SinkResult(1, 2) + SinkResult(3, 4) == SinkResult(4, 6)

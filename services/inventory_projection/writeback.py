"""The availability write-back of a batch: ONE guarded upsert statement (I/O).

Same rows, same guard and same tombstone rule as
``PositionGuardedSink.apply([availability_upsert(a, position) ...])`` (the generic path,
:data:`~.recompute.AVAILABILITY_SPEC`), which is still what deletes go through. Why a
dedicated statement: a replay writes one row per touched key and batch, and the generic
path cost more per row than the fold itself: an ``Upsert`` object per row, the batch
planner and float check walking every row, and twelve arrays encoded per row, three of
which (``as_of`` and the two position columns) are the same for every row of a batch
(one write position per batch; one ``as_of`` per step). Here the rows become column
arrays in one pass per column, and the three shared values are scalar parameters.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import asyncpg

from services.inventory_projection.available_to_promise import Availability
from services.inventory_projection.recompute import AVAILABILITY_TABLE, incoming_to_json
from services.shared.observability import ServiceMetrics
from services.shared.position import SourcePosition

#: the sink's column order (AVAILABILITY_SPEC.columns), then as_of and the position
UPSERT_AVAILABILITY = f"""
INSERT INTO {AVAILABILITY_TABLE} AS target
    (item_id, warehouse_code, sku, warehouse_id, on_hand, reserved, pending_crm_demand,
     available_to_promise, next_incoming_date, next_incoming_qty, incoming, as_of,
     deleted, source_commit_lsn, source_lsn)
SELECT u.item_id, u.warehouse_code, u.sku, u.warehouse_id, u.on_hand::numeric,
       u.reserved::numeric, u.pending_crm_demand::numeric,
       u.available_to_promise::numeric, u.next_incoming_date,
       u.next_incoming_qty::numeric, u.incoming, $12::timestamptz, false, $13::bigint,
       $14::bigint
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[],
            $7::text[], $8::text[], $9::date[], $10::text[], $11::jsonb[])
    AS u(item_id, warehouse_code, sku, warehouse_id, on_hand, reserved, pending_crm_demand,
         available_to_promise, next_incoming_date, next_incoming_qty, incoming)
ON CONFLICT (item_id, warehouse_code) DO UPDATE SET
    sku = EXCLUDED.sku, warehouse_id = EXCLUDED.warehouse_id, on_hand = EXCLUDED.on_hand,
    reserved = EXCLUDED.reserved, pending_crm_demand = EXCLUDED.pending_crm_demand,
    available_to_promise = EXCLUDED.available_to_promise,
    next_incoming_date = EXCLUDED.next_incoming_date,
    next_incoming_qty = EXCLUDED.next_incoming_qty, incoming = EXCLUDED.incoming,
    as_of = EXCLUDED.as_of, deleted = false,
    source_commit_lsn = EXCLUDED.source_commit_lsn, source_lsn = EXCLUDED.source_lsn
WHERE (target.source_commit_lsn, target.source_lsn)
    < (EXCLUDED.source_commit_lsn, EXCLUDED.source_lsn)"""

#: positions in :func:`availability_columns` of the quantities, sent as decimal text
NUMERIC_COLUMNS = (4, 5, 6, 7, 9)


def availability_columns(rows: Sequence[Availability]) -> list[list[Any]]:
    """The per-row parameters of :data:`UPSERT_AVAILABILITY` ($1..$11), one list per
    column: the key and value columns of ``availability_upsert`` in the same order, the
    quantities (:data:`NUMERIC_COLUMNS`) as their exact decimal text: ``str`` of a
    Decimal is one C call, asyncpg's binary numeric encoding (digit tuples) cost several
    times that, and PostgreSQL parses the text to the same numeric (never a float)."""
    upcoming = [next((e for e in a.incoming if e.date is not None), None) for a in rows]
    return [
        [a.item_id for a in rows],
        [a.warehouse_code for a in rows],
        [a.sku for a in rows],
        [a.warehouse_id for a in rows],
        [str(a.on_hand) for a in rows],
        [str(a.reserved) for a in rows],
        [str(a.pending_crm_demand) for a in rows],
        [str(a.available_to_promise) for a in rows],
        [None if n is None else n.date for n in upcoming],
        [None if n is None else str(n.quantity) for n in upcoming],
        [incoming_to_json(a.incoming) if a.incoming else "[]" for a in rows],
    ]


async def write_availability(
    pool: asyncpg.Pool,
    rows: Sequence[Availability],
    position: SourcePosition,
    metrics: ServiceMetrics | None = None,
    *,
    sink: str = "availability",
) -> int:
    """Upsert ``rows`` (unique keys) at ``position``; the rows written (the rest were
    stale). One statement per ``as_of`` among the rows: one, from a projector step.
    Metrics as the sink's."""
    if not rows:
        return 0
    started = time.perf_counter()
    as_of = rows[0].as_of
    groups: Sequence[Sequence[Availability]] = [rows]
    if any(a.as_of != as_of for a in rows):
        by_as_of: dict[Any, list[Availability]] = {}
        for a in rows:
            by_as_of.setdefault(a.as_of, []).append(a)
        groups = list(by_as_of.values())
    written = 0
    for group in groups:
        status = await pool.execute(
            UPSERT_AVAILABILITY,
            *availability_columns(group),
            group[0].as_of,
            position.commit_lsn,
            position.lsn,
        )
        written += int(str(status).rsplit(" ", 1)[-1])
    if metrics is not None:
        metrics.record_sink(sink, time.perf_counter() - started, written, len(rows) - written)
    return written


__all__ = ["NUMERIC_COLUMNS", "UPSERT_AVAILABILITY", "availability_columns", "write_availability"]

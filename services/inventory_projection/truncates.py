"""inventory-projection's answer to a TRUNCATE of each table it folds (pure).

The stock tables contribute one figure per row (on hand, reserved, incoming): a
truncate means none of their rows exists any more, so the projection CLEARS them
(:func:`clear_table`: a delete of every stored row at the truncate's position, the keys
they touched recomputed) and remembers the position per table (:func:`truncated_key`),
so a change of that table from before the truncate that arrives later (another
partition, a redelivery, a replay) is stale and cannot bring a row back.

The catalogue and the orders are what every other figure is resolved against (an item
truncated would hold every stock row of it as an unknown reference, orders truncated
would drop CRM demand the ERP still has): the service cannot tell what such a truncate
means, so it answers NEEDS_RESNAPSHOT (dead letter + alert, see
:mod:`services.shared.truncates`).
"""

from __future__ import annotations

from collections.abc import Generator, Mapping

import orjson

from services.inventory_projection.available_to_promise import AvailabilityKey
from services.inventory_projection.records import SOURCE_TABLES, STOCK_TABLES
from services.inventory_projection.row_store import RowStore
from services.inventory_projection.source_rows import Table
from services.shared.position import SourcePosition
from services.shared.state.store import KeyValue
from services.shared.truncates import TruncateAnswer

CLEAR, RESNAPSHOT = TruncateAnswer.CLEAR, TruncateAnswer.NEEDS_RESNAPSHOT

#: THE declaration: every table the projection folds (``db.table``) -> its answer
ANSWERS: Mapping[str, TruncateAnswer] = {
    "erp.stock_quant": CLEAR,
    "erp.stock_reservation": CLEAR,
    "erp.production_order": CLEAR,
    "erp.item": RESNAPSHOT,
    "erp.warehouse": RESNAPSHOT,
    "erp.sales_order": RESNAPSHOT,
    "erp.sales_order_line": RESNAPSHOT,
    "crm.product": RESNAPSHOT,
    "crm.sales_order": RESNAPSHOT,
    "crm.sales_order_line": RESNAPSHOT,
    # demand signals' own tables (run in the projection's process, .demand_signals)
    "crm.quote": RESNAPSHOT,
    "crm.quote_line": RESNAPSHOT,
    "crm.feasibility_request": RESNAPSHOT,
}

#: State keys ``T:<db>.<table>`` -> JSON ``[commit_lsn, lsn]`` of the table's last
#: cleared truncate (``T``: no other key of the state starts with it)
TRUNCATED_PREFIX = b"T:"


def truncated_key(collection: str) -> bytes:
    return TRUNCATED_PREFIX + collection.encode()


def load_truncated(kv: KeyValue) -> dict[str, SourcePosition]:
    """Per ``db.table``, the position of its last cleared truncate."""
    out: dict[str, SourcePosition] = {}
    for key, raw in kv.scan(TRUNCATED_PREFIX):
        commit_lsn, lsn = orjson.loads(raw)
        out[key[len(TRUNCATED_PREFIX):].decode()] = SourcePosition(commit_lsn, lsn)
    return out


def clear_table(
    store: RowStore, table: Table, position: SourcePosition, *, pause_every: int = 256
) -> Generator[None, None, tuple[int, set[AvailabilityKey]]]:
    """Delete every stored row of stock ``table`` older than ``position`` (a truncate
    there); ``(rows deleted, keys to recompute)``. Rows newer than the truncate (written
    after it, seen first from another partition) stay.

    Pausable (:mod:`services.shared.cooperative`): it reads only ``table``'s rows and
    yields every ``pause_every`` rows read or deleted, so a truncate of a table of
    millions of rows never holds the event loop."""
    if table not in STOCK_TABLES:
        raise ValueError(f"{table[0]}.{table[1]} is not a stock table: it cannot be cleared")
    doomed: list[int] = []
    for n, (row_id, stored, contribution) in enumerate(store.ledger.rows_of(table[1]), 1):
        if contribution is not None and stored < position:
            doomed.append(row_id)
        if not n % pause_every:
            yield
    keys: set[AvailabilityKey] = set()
    for n, row_id in enumerate(doomed, 1):
        applied = store.apply_row(table, row_id, position, None)
        keys |= applied.keys
        if not n % pause_every:
            yield
    return len(doomed), keys


def check_declared() -> None:
    """Every folded table has an answer; only stock tables are cleared."""
    missing = sorted(SOURCE_TABLES - set(ANSWERS))
    if missing:
        raise ValueError(f"inventory-projection: no TRUNCATE answer for {', '.join(missing)}")
    for collection, answer in ANSWERS.items():
        db, table = collection.split(".")
        if answer is CLEAR and (db, table) not in STOCK_TABLES:
            raise ValueError(f"{collection}: only stock tables can be cleared")


check_declared()

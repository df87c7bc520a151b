"""The one way tests build decoded change events (no servers; every test module uses it).

:func:`change_event` gives a :class:`~services.shared.changes.ChangeEvent` as the
decoder would: key from the row's ``id`` (none for a TRUNCATE), position
``(commit_lsn, lsn)``, origin on the table's CDC topic at offset ``lsn``. Each test
module keeps its own short wrappers for its own vocabulary; none builds a ChangeEvent
field by field.

The decoder delivers every column of a table; a test names the columns it cares about
and :func:`complete_row` adds the reference schema's value of the few others a
canonical record (:mod:`services.shared.source_records`) requires.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

from services.shared.changes import ChangeEvent, ChangeOp, RecordOrigin
from services.shared.position import SourcePosition

#: a commit time for tests that do not care which
COMMIT_TIME: Final = datetime(2024, 3, 1, 10, 0, tzinfo=UTC)


#: per table, the value of a column a test may leave out (never a column under test)
REFERENCE_VALUES: Final[dict[tuple[str, str], dict[str, Any]]] = {
    ("crm", "sales_order"): {"currency_code": "EUR"},
    ("erp", "sales_order"): {"customer_id": 1, "currency_code": "EUR", "warehouse_id": 1},
    ("erp", "sales_order_line"): {
        "quantity": Decimal("1.000"), "unit_price": Decimal("0.00"),
        "qty_invoiced": Decimal("0.000"),
    },
}


def complete_row(database: str, table: str, row: Mapping[str, Any]) -> dict[str, Any]:
    """``row`` with the columns of :data:`REFERENCE_VALUES` it leaves out."""
    defaults = REFERENCE_VALUES.get((database, table))
    return dict(row) if defaults is None else {**defaults, **row}


class _Default:
    """Marks "not given" where ``None`` is a meaningful value (a snapshot has no xid)."""


_DEFAULT: Final = _Default()


def change_event(
    database: str,
    table: str,
    *,
    op: ChangeOp = ChangeOp.CREATE,
    before: Mapping[str, Any] | None = None,
    after: Mapping[str, Any] | None = None,
    commit_lsn: int,
    lsn: int | None = None,
    key: Mapping[str, Any] | None = None,
    transaction_id: str | _Default | None = _DEFAULT,
    order: int | None = 1,
    commit_time: datetime = COMMIT_TIME,
    snapshot: bool = False,
    origin: RecordOrigin | None = None,
) -> ChangeEvent:
    """One change of ``database``.``table`` (schema named like the database).

    ``lsn`` defaults to ``commit_lsn``, ``transaction_id`` to ``str(commit_lsn)``,
    ``key`` to ``{"id": ...}`` of the row after (else before; ``{}`` without a row),
    ``order`` is both the total and the per-table order in the transaction.
    """
    position_lsn = commit_lsn if lsn is None else lsn
    row = after if after is not None else before
    if key is None:
        key = {} if row is None else {"id": row["id"]}
    return ChangeEvent(
        database=database,
        schema=database,
        table=table,
        op=op,
        key=dict(key),
        before=None if before is None else complete_row(database, table, before),
        after=None if after is None else complete_row(database, table, after),
        position=SourcePosition(commit_lsn, position_lsn),
        transaction_id=(
            str(commit_lsn) if isinstance(transaction_id, _Default) else transaction_id
        ),
        total_order=order,
        data_collection_order=order,
        commit_time=commit_time,
        is_snapshot=snapshot,
        origin=origin or RecordOrigin(f"cdc.{database}.{table}", 0, position_lsn),
    )

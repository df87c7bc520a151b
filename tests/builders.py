"""The one way tests build decoded change events (no servers; every test module uses it).

:func:`change_event` gives a :class:`~services.shared.changes.ChangeEvent` as the
decoder would: key from the row's ``id`` (none for a TRUNCATE), position
``(commit_lsn, lsn)``, origin on the table's CDC topic at offset ``lsn``. Each test
module keeps its own short wrappers for its own vocabulary; none builds a ChangeEvent
field by field.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from services.shared.changes import ChangeEvent, ChangeOp, RecordOrigin
from services.shared.position import SourcePosition

#: a commit time for tests that do not care which
COMMIT_TIME: Final = datetime(2024, 3, 1, 10, 0, tzinfo=UTC)


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
        before=None if before is None else dict(before),
        after=None if after is None else dict(after),
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

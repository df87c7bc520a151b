"""order-sync's ERP side: which ERP order changes are progress, which are its own echoes.

An ERP change of an order order-sync created is either the echo of its own write (the
change carries exactly the fingerprint recorded when writing the row, and no ERP-owned
column changed: :func:`~services.order_sync.domain.echoes.is_echo`) or the ERP at work
(reserving, shipping, invoicing, cancelling, editing): progress to report to the CRM.
:class:`ProgressReader` sorts a batch of ERP changes into those, answering from
:class:`~services.order_sync.echo_memory.EchoMemory` first and asking the database
(one query each for identities and fingerprints) only about the rest, and reads the
ERP orders as they are now.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from services.order_sync.domain.echoes import ROW_DELETED, is_echo, row_fingerprint
from services.order_sync.domain.erp_orders import ERP_ORDER_TABLE, ErpOrderSnapshot
from services.order_sync.echo_memory import EchoMemory
from services.order_sync.erp_unit_of_work import read_snapshots
from services.shared.changes import ChangeEvent, ChangeOp
from services.shared.cooperative import Slicer
from services.shared.position import SourcePosition

_ERP_ORDERS_BY_ID = "SELECT * FROM erp.sales_order WHERE id = ANY($1::bigint[])"
_FINGERPRINTS_READ = """
SELECT w.tbl, w.row_id, w.fingerprints FROM erp_integration.written_row AS w
JOIN unnest($1::text[], $2::bigint[]) AS u(t, r) ON w.tbl = u.t AND w.row_id = u.r
"""
_IDENTITY_BY_ERP = """
SELECT crm_order_id, erp_order_id, erp_order_name FROM erp_integration.order_identity
WHERE erp_order_id = ANY($1::bigint[])
"""


def _ids(values: set[int]) -> list[int]:
    return sorted(values)


def _row_id(event: ChangeEvent) -> int | None:
    value = event.key.get("id")
    return value if isinstance(value, int) and not isinstance(value, bool) else None

@dataclass(frozen=True, slots=True)
class ProgressCandidate:
    crm_order_id: int
    erp_order_id: int
    erp_order_name: str
    position: SourcePosition


class ProgressReader:
    """The ERP side: which ERP changes are order-sync's own (echoes) and the current
    snapshot of the ERP orders that changed otherwise."""

    def __init__(self, erp: asyncpg.Pool, memory: EchoMemory | None = None) -> None:
        self.erp = erp
        self.memory = memory if memory is not None else EchoMemory()

    async def classify(
        self, events: Sequence[ChangeEvent]
    ) -> tuple[dict[int, ProgressCandidate], int, int]:
        """``(candidates by erp order id, echoes, foreign)`` for ERP order/line changes.

        Rows and orders this process wrote are answered from :class:`EchoMemory`; only
        the rest is looked up (one query each for identities and fingerprints).
        """
        candidates, echoes, foreign, _ = await self.classify_all(events)
        return candidates, echoes, foreign

    async def classify_all(
        self, events: Sequence[ChangeEvent]
    ) -> tuple[dict[int, ProgressCandidate], int, int, dict[int, ProgressCandidate]]:
        """:meth:`classify` plus the orders order-sync itself amended or cancelled (echoes
        of updates and deletes, not of creates): their progress is recomputed too, since
        an own write can change it (the only line left undelivered removed)."""
        memory = self.memory
        slicer = Slicer()  # thousands of line changes of one order are fingerprinted
        order_of: list[tuple[ChangeEvent, int]] = []
        for event in events:
            row = event.row or {}
            erp_id = _row_id(event) if event.table == ERP_ORDER_TABLE else row.get("order_id")
            if isinstance(erp_id, int):
                order_of.append((event, erp_id))
        if not order_of:
            return {}, 0, 0, {}
        identity: dict[int, tuple[int, str]] = {}
        written: dict[tuple[str, int], list[str]] = {}
        own: list[str | None] = []
        unknown_orders: set[int] = set()
        unknown_rows: set[tuple[str, int]] = set()
        for event, erp_id in order_of:
            if slicer.due():
                await slicer.pause()
            known = memory.order(erp_id)
            if known is None:
                unknown_orders.add(erp_id)
            else:
                identity[erp_id] = known
            mine = _own_fingerprint(event)
            own.append(mine)
            row_id = _row_id(event)
            if row_id is None:
                continue
            history = memory.history(event.table, row_id)
            if history is not None and mine is not None and mine in history:
                written[(event.table, row_id)] = history
            else:
                unknown_rows.add((event.table, row_id))
        if unknown_orders or unknown_rows:
            async with self.erp.acquire() as conn:
                if unknown_orders:
                    for r in await conn.fetch(_IDENTITY_BY_ERP, _ids(unknown_orders)):
                        identity[int(r["erp_order_id"])] = (
                            int(r["crm_order_id"]), str(r["erp_order_name"])
                        )
                if unknown_rows:
                    keys = sorted(unknown_rows)
                    for r in await conn.fetch(
                        _FINGERPRINTS_READ, [t for t, _ in keys], [i for _, i in keys]
                    ):
                        written[(str(r["tbl"]), int(r["row_id"]))] = list(r["fingerprints"])
        candidates: dict[int, ProgressCandidate] = {}
        amended: dict[int, ProgressCandidate] = {}
        echoes = foreign = 0
        for (event, erp_id), mine in zip(order_of, own, strict=True):
            if slicer.due():
                await slicer.pause()
            mapped = identity.get(erp_id)
            if mapped is None:
                foreign += 1
                continue
            history = written.get((event.table, _row_id(event) or -1), [])
            target = candidates
            if is_echo(event, _matching(history, mine), fingerprint=mine):
                echoes += 1
                if event.op not in (ChangeOp.UPDATE, ChangeOp.DELETE):
                    continue
                target = amended
            current = target.get(erp_id)
            if current is None or current.position < event.position:
                target[erp_id] = ProgressCandidate(mapped[0], erp_id, mapped[1], event.position)
        return candidates, echoes, foreign, amended

    async def snapshots(self, erp_order_ids: Sequence[int]) -> dict[int, ErpOrderSnapshot]:
        async with self.erp.acquire() as conn:
            headers = await conn.fetch(_ERP_ORDERS_BY_ID, list(erp_order_ids))
            return await read_snapshots(conn, headers, key="id", slicer=Slicer())


def _own_fingerprint(event: ChangeEvent) -> str | None:
    """The fingerprint this change would carry if order-sync had written it."""
    if event.is_delete:
        return ROW_DELETED
    return row_fingerprint(event.table, event.after) if event.after is not None else None


def _matching(history: Sequence[str], mine: str | None) -> str | None:
    """The recorded write a change may be the echo of: the one whose fingerprint it
    carries (``mine``; order-sync may have written the row again since), else the newest."""
    if not history:
        return None
    if mine is not None and mine in history:
        return mine
    return history[0]

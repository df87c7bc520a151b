"""order-sync's unit of work on PostgreSQL: the I/O of one batch, nothing decided here.

:class:`ErpStore` holds the two pools; :meth:`ErpStore.unit_of_work` opens one
:class:`ErpUnitOfWork` — an ERP connection in one transaction — which
:func:`services.order_sync.handlers.sync_orders` drives through the
:class:`~services.order_sync.unit_of_work.UnitOfWork` port:

* the orders' folds in ``erp_integration.order_state`` are locked first (inserted if
  new, then ``SELECT ... FOR UPDATE`` in id order): two workers serialize per CRM order;
* accounts and product SKUs are read from the CRM database (latest versions), and
  inside the locked ERP transaction the ERP orders of these CRM orders (``FOR
  UPDATE``), their customers, the items by SKU, the accepted currencies, the
  warehouses and the ERP documents pinning the orders' lines;
* the writes are :mod:`services.order_sync.erp_writes`; the identity mapping
  (``erp_integration.order_identity``) is position-guarded; the folds are rewritten
  only where they changed;
* once committed, what was written is remembered (:class:`EchoMemory`) so its CDC
  echoes are recognised without a query.

:class:`ErpStore` also answers which orders are unsettled (last decided a rejection or
a conflict), to re-decide them when what they wait for changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextlib import AsyncExitStack
from decimal import Decimal
from types import TracebackType
from typing import Any, Self

import asyncpg

from services.order_sync import codec, erp_writes
from services.order_sync.domain.crm_orders import CrmAccount
from services.order_sync.domain.erp_orders import (
    ErpCustomer,
    ErpItem,
    ErpOrderSnapshot,
    StaticCatalogue,
)
from services.order_sync.domain.holds import HoldKind, Holds, LineHold, holds_by_line
from services.order_sync.echo_memory import EchoMemory
from services.order_sync.unit_of_work import (
    CrmOrderRows,
    ErpWrites,
    IdentityRow,
    References,
    StateRow,
    StoredOrder,
    Written,
)
from services.shared.cooperative import Slicer
from services.shared.source_records import erp

_LOCK_INSERT = """
INSERT INTO erp_integration.order_state (crm_order_id)
SELECT id FROM unnest($1::bigint[]) AS u(id) ORDER BY id
ON CONFLICT (crm_order_id) DO NOTHING
"""
_LOCK_SELECT = """
SELECT crm_order_id, draft::text AS draft, last_decision FROM erp_integration.order_state
WHERE crm_order_id = ANY($1::bigint[]) ORDER BY crm_order_id FOR UPDATE
"""
_STATE_UPDATE = """
UPDATE erp_integration.order_state AS s
SET draft = u.draft::jsonb, last_decision = u.decision, crm_order_version = u.version,
    crm_account_id = u.account_id, source_commit_lsn = u.c, source_lsn = u.l,
    updated_at = now()
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::integer[], $5::bigint[],
            $6::bigint[], $7::bigint[]) AS u(id, draft, decision, version, account_id, c, l)
WHERE s.crm_order_id = u.id
"""
_REJECTED = """
SELECT crm_order_id FROM erp_integration.order_state
WHERE last_decision IN ('reject', 'conflict')
  AND ($1::bigint[] IS NULL OR crm_account_id = ANY($1::bigint[]))
"""
_UNSETTLED_BY_LINES = """
SELECT DISTINCT s.crm_order_id FROM erp.sales_order_line l
JOIN erp.sales_order o ON o.id = l.order_id
JOIN erp_integration.order_state s ON s.crm_order_id = o.crm_order_id
WHERE l.id = ANY($1::bigint[]) AND s.last_decision IN ('reject', 'conflict')
"""
_UNSETTLED = """
SELECT crm_order_id FROM erp_integration.order_state
WHERE crm_order_id = ANY($1::bigint[]) AND last_decision IN ('reject', 'conflict')
"""
#: The ERP documents that pin order lines (services/order_sync/domain/holds.py).
_HOLDS = """
SELECT r.sales_order_line_id AS line_id, 'reservation' AS kind, w.code AS document,
       r.quantity, r.state
FROM erp.stock_reservation r JOIN erp.warehouse w ON w.id = r.warehouse_id
WHERE r.sales_order_line_id = ANY($1::bigint[])
UNION ALL
SELECT p.sales_order_line_id, 'production', p.name, p.quantity, p.state
FROM erp.production_order p WHERE p.sales_order_line_id = ANY($1::bigint[])
UNION ALL
SELECT sl.sales_order_line_id, 'shipment', s.name, sl.quantity, s.state
FROM erp.shipment_line sl JOIN erp.shipment s ON s.id = sl.shipment_id
WHERE sl.sales_order_line_id = ANY($1::bigint[])
UNION ALL
SELECT il.sales_order_line_id, 'invoice', i.name, il.quantity, i.state
FROM erp.invoice_line il JOIN erp.invoice i ON i.id = il.invoice_id
WHERE il.sales_order_line_id = ANY($1::bigint[])
"""
_ACCOUNTS = """
SELECT id, name, street, city, postal_code, country_code, vat_number, currency_code
FROM crm.account WHERE id = ANY($1::bigint[])
"""
_PRODUCTS = "SELECT id, sku FROM crm.product WHERE id = ANY($1::bigint[])"
_CURRENCIES = "SELECT code FROM erp.currency WHERE active"
_WAREHOUSES = "SELECT id, code FROM erp.warehouse WHERE active ORDER BY id"
_ITEMS = "SELECT id, sku, active FROM erp.item WHERE sku = ANY($1::text[])"
_CUSTOMERS = "SELECT * FROM erp.customer WHERE crm_account_id = ANY($1::bigint[])"
_ERP_ORDERS = """
SELECT * FROM erp.sales_order WHERE crm_order_id = ANY($1::bigint[]) ORDER BY id FOR UPDATE
"""
_ERP_ORDERS_BY_ID = "SELECT * FROM erp.sales_order WHERE id = ANY($1::bigint[])"
_ERP_LINES = "SELECT * FROM erp.sales_order_line WHERE order_id = ANY($1::bigint[])"
_IDENTITY_UPSERT = """
INSERT INTO erp_integration.order_identity AS t (crm_order_id, erp_order_id, erp_order_name,
    crm_order_number, crm_order_version, crm_account_id, erp_customer_id,
    source_commit_lsn, source_lsn)
SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::integer[],
                     $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[])
ON CONFLICT (crm_order_id) DO UPDATE SET
    erp_order_id = EXCLUDED.erp_order_id, erp_order_name = EXCLUDED.erp_order_name,
    crm_order_number = EXCLUDED.crm_order_number,
    crm_order_version = EXCLUDED.crm_order_version, crm_account_id = EXCLUDED.crm_account_id,
    erp_customer_id = EXCLUDED.erp_customer_id, source_commit_lsn = EXCLUDED.source_commit_lsn,
    source_lsn = EXCLUDED.source_lsn, updated_at = now()
WHERE (t.source_commit_lsn, t.source_lsn) <= (EXCLUDED.source_commit_lsn, EXCLUDED.source_lsn)
"""
_REJECTED_IN_CRM = """
SELECT crm_order_id FROM crm_integration.order_sync_status
WHERE crm_order_id = ANY($1::bigint[]) AND sync_state = 'rejected'
"""
_CRM_ORDERS = "SELECT * FROM crm.sales_order WHERE id = ANY($1::bigint[])"
_CRM_LINES = "SELECT * FROM crm.sales_order_line WHERE order_id = ANY($1::bigint[])"


def _ids(values: Iterable[int]) -> list[int]:
    return sorted(set(values))


class ErpStore:
    """The PostgreSQL side of order-sync's CRM->ERP step; see the module docstring."""

    def __init__(
        self, crm: asyncpg.Pool, erp: asyncpg.Pool, memory: EchoMemory | None = None
    ) -> None:
        self.crm = crm
        self.erp = erp
        self.memory = memory if memory is not None else EchoMemory()

    def unit_of_work(self) -> ErpUnitOfWork:
        return ErpUnitOfWork(self.crm, self.erp, self.memory)

    async def rejected_orders(self, account_ids: Sequence[int] | None = None) -> list[int]:
        """CRM orders whose last decision was a rejection or a conflict (re-decided when
        reference data change); ``account_ids`` narrows to those accounts' orders."""
        rows = await self.erp.fetch(_REJECTED, None if account_ids is None else list(account_ids))
        return [int(r["crm_order_id"]) for r in rows]

    async def unsettled(self, crm_order_ids: Sequence[int]) -> list[int]:
        """Those of ``crm_order_ids`` whose last decision was a rejection or a conflict
        (re-decided when their ERP order changes: the ERP may have released what
        pinned a line)."""
        if not crm_order_ids:
            return []
        rows = await self.erp.fetch(_UNSETTLED, list(crm_order_ids))
        return sorted(int(r["crm_order_id"]) for r in rows)

    async def unsettled_by_lines(self, erp_line_ids: Sequence[int]) -> list[int]:
        """CRM orders in conflict (or rejected) owning any of these ERP order lines."""
        if not erp_line_ids:
            return []
        rows = await self.erp.fetch(_UNSETTLED_BY_LINES, list(erp_line_ids))
        return sorted(int(r["crm_order_id"]) for r in rows)


class _NotCommitted(Exception):
    """Ends a unit of work left without commit(): its transaction rolls back."""


class ErpUnitOfWork:
    """One ERP transaction (see :class:`~services.order_sync.unit_of_work.UnitOfWork`)."""

    def __init__(self, crm: asyncpg.Pool, erp: asyncpg.Pool, memory: EchoMemory) -> None:
        self.crm = crm
        self.erp = erp
        self.memory = memory
        self._stack: AsyncExitStack | None = None
        self._conn: asyncpg.Connection | None = None
        self._committed = False
        self._fingerprints: list[erp_writes.Fingerprint] = []
        self._orders: list[tuple[int, int, str]] = []
        # a large order's rows are parsed, encoded and fingerprinted in slices
        self.slicer = Slicer()

    async def __aenter__(self) -> Self:
        # the pool's and the transaction's own context managers, so an error inside
        # rolls back and releases exactly as ``async with acquire(), transaction()``
        stack = AsyncExitStack()
        try:
            conn = await stack.enter_async_context(self.erp.acquire())
            await stack.enter_async_context(conn.transaction())
        except BaseException:
            await stack.aclose()
            raise
        self._stack, self._conn, self._committed = stack, conn, False
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        stack, committed = self._stack, self._committed
        self._stack, self._conn = None, None
        if stack is None:
            return
        if error is None and not committed:
            # leaving without commit(): the transaction is rolled back, nothing raised
            kind, error, traceback = _NotCommitted, _NotCommitted(), None
        await stack.__aexit__(kind, error, traceback)  # COMMIT, or ROLLBACK on error
        if error is None:
            # committed: from now on these rows' echoes are recognised from memory
            self.memory.remember_writes(self._fingerprints)
            for erp_order_id, crm_order_id, name in self._orders:
                self.memory.remember_order(erp_order_id, crm_order_id, name)

    @property
    def conn(self) -> asyncpg.Connection:
        if self._conn is None:
            raise RuntimeError("the unit of work is not open")
        return self._conn

    # ------------------------------------------------------------------ reads

    async def lock_orders(self, crm_order_ids: Sequence[int]) -> dict[int, StoredOrder]:
        ids = list(crm_order_ids)
        await self.conn.execute(_LOCK_INSERT, ids)
        stored: dict[int, StoredOrder] = {}
        for row in await self.conn.fetch(_LOCK_SELECT, ids):
            order_id = int(row["crm_order_id"])
            draft = await self.slicer.drive(codec.decode_draft_steps(row["draft"], order_id))
            stored[order_id] = StoredOrder(draft, row["last_decision"])
        return stored

    async def rejected_in_crm(self, crm_order_ids: Sequence[int]) -> frozenset[int]:
        if not crm_order_ids:
            return frozenset()
        rows = await self.crm.fetch(_REJECTED_IN_CRM, list(crm_order_ids))
        return frozenset(int(r["crm_order_id"]) for r in rows)

    async def crm_orders(self, crm_order_ids: Sequence[int]) -> dict[int, CrmOrderRows]:
        if not crm_order_ids:
            return {}
        async with self.crm.acquire() as crm:
            headers = await crm.fetch(_CRM_ORDERS, list(crm_order_ids))
            lines = await crm.fetch(_CRM_LINES, list(crm_order_ids))
        by_order: dict[int, list[Mapping[str, Any]]] = {}
        for line in lines:
            by_order.setdefault(int(line["order_id"]), []).append(dict(line))
        return {
            int(h["id"]): CrmOrderRows(dict(h), by_order.get(int(h["id"]), []))
            for h in headers
        }

    async def references(
        self, account_ids: Sequence[int], product_ids: Sequence[int]
    ) -> References:
        async with self.crm.acquire() as crm:
            account_rows = await crm.fetch(_ACCOUNTS, list(account_ids)) if account_ids else []
            product_rows = await crm.fetch(_PRODUCTS, list(product_ids)) if product_ids else []
        accounts = {int(r["id"]): CrmAccount.from_row(dict(r)) for r in account_rows}
        products = [crm.Product.from_row(dict(r)) for r in product_rows]
        skus = {product.id: product.sku for product in products}
        conn = self.conn
        currencies = frozenset(str(r["code"]).strip() for r in await conn.fetch(_CURRENCIES))
        known = [erp.Warehouse.from_row(dict(r)) for r in await conn.fetch(_WAREHOUSES)]
        warehouses = {warehouse.code: warehouse.id for warehouse in known}
        default_code = known[0].code if known else None
        item_rows = await conn.fetch(_ITEMS, sorted(set(skus.values())))
        found = [ErpItem.from_row(dict(r)) for r in item_rows]
        items = {item.sku: item for item in found}
        customers = {
            int(r["crm_account_id"]): ErpCustomer.from_row(dict(r))
            for r in await conn.fetch(_CUSTOMERS, list(account_ids))
        }
        catalogue = StaticCatalogue(skus, items, warehouses, default_code)
        return References(accounts, catalogue, currencies, customers)

    async def erp_orders(self, crm_order_ids: Sequence[int]) -> dict[int, ErpOrderSnapshot]:
        if not crm_order_ids:
            return {}
        headers = await self.conn.fetch(_ERP_ORDERS, list(crm_order_ids))
        return await read_snapshots(self.conn, headers, key="crm_order_id", slicer=self.slicer)

    async def holds(self, snapshots: Iterable[ErpOrderSnapshot]) -> Holds:
        """The ERP documents pinning the lines of ``snapshots`` (open orders only: a
        closed or cancelled order takes no line change anyway)."""
        line_ids = sorted(
            line.id for snapshot in snapshots if snapshot.is_open for line in snapshot.lines
        )
        if not line_ids:
            return {}
        holds: list[LineHold] = []
        for r in await self.conn.fetch(_HOLDS, line_ids):
            if self.slicer.due():
                await self.slicer.pause()
            holds.append(LineHold(int(r["line_id"]), HoldKind(r["kind"]), str(r["document"]),
                                  Decimal(r["quantity"]), str(r["state"])))
        return holds_by_line(holds)

    # ------------------------------------------------------------------ writes

    async def write(self, writes: ErpWrites) -> Written:
        written, fingerprints = await erp_writes.write(self.conn, writes, self.slicer)
        self._fingerprints.extend(fingerprints)
        return written

    async def record(self, identities: Sequence[IdentityRow], states: Sequence[StateRow]) -> None:
        conn = self.conn
        if identities:
            records = [i.record for i in identities]
            await conn.execute(
                _IDENTITY_UPSERT,
                [r["crm_order_id"] for r in records],
                [r["erp_order_id"] for r in records],
                [r["erp_order_name"] for r in records],
                [r["crm_order_number"] for r in records],
                [r["crm_order_version"] for r in records],
                [r["crm_account_id"] for r in records],
                [r["erp_customer_id"] for r in records],
                [i.position.commit_lsn for i in identities],
                [i.position.lsn for i in identities],
            )
            self._orders.extend(
                (int(r["erp_order_id"]), int(r["crm_order_id"]), str(r["erp_order_name"]))
                for r in records
            )
        if states:
            positions = [s.draft.position for s in states]
            await conn.execute(
                _STATE_UPDATE,
                [s.draft.order_id for s in states],
                [await self.slicer.drive(codec.encode_draft_steps(s.draft)) for s in states],
                [s.last_decision for s in states],
                [s.crm_order_version for s in states],
                [s.crm_account_id for s in states],
                [p.commit_lsn for p in positions],
                [p.lsn for p in positions],
            )

    async def commit(self) -> None:
        """Commit when the unit of work ends (its transaction's own exit does it)."""
        if self._stack is None:
            raise RuntimeError("the unit of work is not open")
        self._committed = True

async def read_snapshots(
    conn: asyncpg.Connection, headers: Sequence[asyncpg.Record], *, key: str, slicer: Slicer
) -> dict[int, ErpOrderSnapshot]:
    """The ERP orders of ``headers`` with their lines, by the header column ``key``."""
    if not headers:
        return {}
    ids = [int(h["id"]) for h in headers]
    lines: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
    for row in await conn.fetch(_ERP_LINES, ids):
        if slicer.due():
            await slicer.pause()
        lines[int(row["order_id"])].append(dict(row))
    return {
        int(h[key]): await slicer.drive(
            ErpOrderSnapshot.parse_steps(dict(h), lines[int(h["id"])])
        )
        for h in headers
    }

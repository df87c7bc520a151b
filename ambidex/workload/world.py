"""What the workload knows about the two databases: connection pools and id pools.

Targets for an operation (an open quote, an open ERP order, a pending inspection…)
are picked from in-memory id pools, refreshed from the databases every few seconds
with cheap queries on partial indexes, and updated as operations create or finish
documents. A pool may be stale: every operation re-checks the row's state inside its
transaction, so a stale pick only costs a skipped operation.
"""

from __future__ import annotations

import contextlib
import random
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal

import asyncpg


class IdPool:
    """A set of ids with O(1) add, discard and random choice."""

    __slots__ = ("_index", "_items")

    def __init__(self, ids: list[int] | None = None) -> None:
        self._items: list[int] = []
        self._index: dict[int, int] = {}
        for i in ids or ():
            self.add(i)

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[int]:
        return iter(list(self._items))

    def __contains__(self, item: object) -> bool:
        return item in self._index

    def add(self, item: int) -> None:
        if item not in self._index:
            self._index[item] = len(self._items)
            self._items.append(item)

    def discard(self, item: int) -> None:
        pos = self._index.pop(item, None)
        if pos is None:
            return
        last = self._items.pop()
        if pos < len(self._items):
            self._items[pos] = last
            self._index[last] = pos

    def add_bounded(self, item: int, limit: int) -> None:
        """Add ``item`` unless the pool already holds ``limit`` ids (a pool kept only in
        memory must not grow with the length of the run)."""
        if len(self._items) < limit:
            self.add(item)

    def replace(self, ids: list[int]) -> None:
        self._items = []
        self._index = {}
        for i in ids:
            self.add(i)

    def choice(self, rng: random.Random, busy: set[tuple[str, int]], tag: str) -> int | None:
        """A random id not currently claimed under ``tag`` (``None`` if none found)."""
        if not self._items:
            return None
        for _ in range(6):
            item = self._items[rng.randrange(len(self._items))]
            if (tag, item) not in busy:
                return item
        return None


#: Ids a pool that is never refreshed from the databases keeps at most.
MEMORY_POOL_LIMIT = 500


@dataclass(frozen=True, slots=True)
class Product:
    id: int
    list_price: Decimal
    uom: str
    make_to_order: bool = False


@dataclass
class World:
    """Shared state of one workload run."""

    crm: asyncpg.Pool
    erp: asyncpg.Pool
    seed: int
    #: share of invoices, payments and amendments with a deliberate slip (schedules.Slip)
    discrepancy_rate: float = 0.0
    busy: set[tuple[str, int]] = field(default_factory=set)
    # CRM master data and documents
    accounts: dict[int, str] = field(default_factory=dict)  # id -> currency
    account_ids: IdPool = field(default_factory=IdPool)
    products: list[Product] = field(default_factory=list)
    open_quotes: IdPool = field(default_factory=IdPool)
    draft_orders: IdPool = field(default_factory=IdPool)
    live_orders: IdPool = field(default_factory=IdPool)
    active_contracts: IdPool = field(default_factory=IdPool)
    draft_contracts: IdPool = field(default_factory=IdPool)
    #: active contracts of accounts the ERP knows as a customer (the ERP can bill them)
    billable_contracts: IdPool = field(default_factory=IdPool)
    open_cases: IdPool = field(default_factory=IdPool)
    #: CRM accounts the ERP knows as a customer in the account's currency
    linked_accounts: IdPool = field(default_factory=IdPool)
    #: CRM orders whose ERP order is in production or further (complaints are about them)
    orders_in_fulfilment: IdPool = field(default_factory=IdPool)
    # ERP master data and documents
    customers: dict[int, str] = field(default_factory=dict)  # id -> currency
    customer_ids: IdPool = field(default_factory=IdPool)
    items: list[Product] = field(default_factory=list)
    stocked_items: list[Product] = field(default_factory=list)
    warehouses: dict[int, str] = field(default_factory=dict)  # id -> code
    open_erp_orders: IdPool = field(default_factory=IdPool)
    orders_with_reservations: IdPool = field(default_factory=IdPool)
    #: (item, warehouse) pairs a reservation recently found short; purchasing
    #: replenishes them first.
    shortages: deque[tuple[int, int]] = field(default_factory=lambda: deque(maxlen=500))
    active_production: IdPool = field(default_factory=IdPool)
    pending_inspections: IdPool = field(default_factory=IdPool)
    ready_shipments: IdPool = field(default_factory=IdPool)
    shipments_in_transit: IdPool = field(default_factory=IdPool)
    orders_to_invoice: IdPool = field(default_factory=IdPool)
    open_invoices: IdPool = field(default_factory=IdPool)
    #: posted invoices of CRM installments not paid at all (one paid in part is left to
    #: the customer's dispute: it is paid, if at all, as any open invoice)
    installment_invoices: IdPool = field(default_factory=IdPool)
    #: kept in memory only (no index finds them cheaply), at most MEMORY_POOL_LIMIT ids:
    #: what this run cancelled or received without an invoice reference
    cancelled_invoices: IdPool = field(default_factory=IdPool)
    unallocated_payments: IdPool = field(default_factory=IdPool)
    #: the reference cases' contracts (:mod:`.reference_case`): their invoices stay out of
    #: every pool, so no payment or cancellation of this run changes what they show
    reference_contracts: set[int] = field(default_factory=set)

    @contextlib.contextmanager
    def claim(self, tag: str, item: int) -> Iterator[None]:
        """Keep other workers of this run off ``(tag, item)`` while one works on it."""
        key = (tag, item)
        self.busy.add(key)
        try:
            yield
        finally:
            self.busy.discard(key)

    async def load_master_data(self) -> None:
        async with self.crm.acquire() as conn:
            rows = await conn.fetch("SELECT id, currency_code FROM crm.account")
            self.accounts = {r["id"]: r["currency_code"] for r in rows}
            self.account_ids.replace(list(self.accounts))
            self.products = [
                Product(r["id"], r["list_price"], r["uom"])
                for r in await conn.fetch(
                    "SELECT id, list_price, uom FROM crm.product WHERE active ORDER BY id"
                )
            ]
        async with self.erp.acquire() as conn:
            self.items = [
                Product(r["id"], r["list_price"], r["uom"], r["make_to_order"])
                for r in await conn.fetch(
                    "SELECT id, list_price, uom, make_to_order FROM erp.item WHERE active"
                    " ORDER BY id"
                )
            ]
            self.stocked_items = [i for i in self.items if not i.make_to_order]
            self.warehouses = {
                r["id"]: r["code"]
                for r in await conn.fetch(
                    "SELECT id, code FROM erp.warehouse WHERE active ORDER BY id"
                )
            }
        if not self.products or not self.items or not self.warehouses or not self.accounts:
            raise RuntimeError("reference databases are not seeded (run the seeder first)")

    async def refresh(self) -> None:
        """Re-read the open documents from both databases (cheap, index-backed)."""
        async with self.crm.acquire() as conn:
            self.open_quotes.replace(
                await _ids(
                    conn,
                    """
                SELECT id FROM crm.quote WHERE state IN ('draft', 'sent')
                ORDER BY id DESC LIMIT 5000""",
                )
            )
            self.draft_orders.replace(
                await _ids(
                    conn,
                    """
                SELECT id FROM crm.sales_order WHERE state = 'draft'
                ORDER BY id DESC LIMIT 5000""",
                )
            )
            self.live_orders.replace(
                await _ids(
                    conn,
                    """
                SELECT id FROM crm.sales_order WHERE state IN ('confirmed', 'amended')
                ORDER BY state, id DESC LIMIT 10000""",
                )
            )
            # reference cases (schedules.REFERENCE_PREFIX) stay as they were made
            self.reference_contracts |= set(await _ids(
                conn, "SELECT id FROM crm.contract WHERE number LIKE 'CT-REF-%'"))
            active = await conn.fetch(
                """SELECT id, account_id FROM crm.contract
                   WHERE state = 'active' AND number NOT LIKE 'CT-REF-%'
                   ORDER BY id DESC LIMIT 5000"""
            )
            self.active_contracts.replace([r["id"] for r in active])
            self.draft_contracts.replace(
                await _ids(
                    conn,
                    """
                SELECT id FROM crm.contract WHERE state = 'draft'
                ORDER BY id DESC LIMIT 5000""",
                )
            )
            self.open_cases.replace(
                await _ids(
                    conn,
                    """
                SELECT id FROM crm.service_case WHERE state IN ('new', 'open', 'waiting')
                ORDER BY id DESC LIMIT 5000""",
                )
            )
        async with self.erp.acquire() as conn:
            rows = await conn.fetch("SELECT id, currency_code FROM erp.customer WHERE active")
            self.customers = {r["id"]: r["currency_code"] for r in rows}
            self.customer_ids.replace(list(self.customers))
            linked = await conn.fetch(
                """SELECT crm_account_id, currency_code FROM erp.customer
                   WHERE active AND crm_account_id IS NOT NULL"""
            )
            self.linked_accounts.replace([
                r["crm_account_id"] for r in linked
                if self.accounts.get(r["crm_account_id"]) == r["currency_code"]
            ])
            self.billable_contracts.replace(
                [r["id"] for r in active if r["account_id"] in self.linked_accounts]
            )
            self.orders_in_fulfilment.replace(
                await _ids(
                    conn,
                    """
                SELECT crm_order_id FROM erp.sales_order
                WHERE crm_order_id IS NOT NULL
                  AND state IN ('reserved', 'in_production', 'shipped', 'invoiced', 'done')
                ORDER BY id DESC LIMIT 5000""",
                )
            )
            self.open_erp_orders.replace(
                await _ids(
                    conn,
                    """
                SELECT id FROM erp.sales_order
                WHERE state IN ('open', 'reserved', 'in_production')
                ORDER BY id DESC LIMIT 10000""",
                )
            )
            self.orders_with_reservations.replace(
                await _ids(
                    conn,
                    """
                SELECT DISTINCT l.order_id FROM erp.stock_reservation r
                JOIN erp.sales_order_line l ON l.id = r.sales_order_line_id
                WHERE r.state = 'active' LIMIT 5000""",
                )
            )
            self.active_production.replace(
                await _ids(
                    conn,
                    """
                SELECT id FROM erp.production_order
                WHERE state IN ('planned', 'confirmed', 'in_progress') AND qty_produced < quantity
                ORDER BY id DESC LIMIT 5000""",
                )
            )
            self.pending_inspections.replace(
                await _ids(
                    conn,
                    """
                SELECT id FROM erp.quality_inspection WHERE state = 'pending'
                ORDER BY id DESC LIMIT 5000""",
                )
            )
            self.ready_shipments.replace(
                await _ids(
                    conn,
                    """
                SELECT id FROM erp.shipment WHERE state = 'ready'
                ORDER BY id DESC LIMIT 5000""",
                )
            )
            self.shipments_in_transit.replace(
                await _ids(
                    conn,
                    """
                SELECT id FROM erp.shipment WHERE state = 'shipped'
                ORDER BY id DESC LIMIT 5000""",
                )
            )
            self.orders_to_invoice.replace(
                await _ids(
                    conn,
                    """
                SELECT DISTINCT order_id FROM erp.sales_order_line
                WHERE qty_delivered > qty_invoiced LIMIT 5000""",
                )
            )
            self.open_invoices.replace(
                await _ids(
                    conn,
                    """
                SELECT id FROM erp.invoice WHERE state = 'posted' AND amount_residual > 0
                  AND (crm_contract_id IS NULL OR crm_contract_id <> ALL($1::bigint[]))
                ORDER BY id DESC LIMIT 5000""",
                    sorted(self.reference_contracts),
                )
            )
            self.installment_invoices.replace(
                await _ids(
                    conn,
                    """
                SELECT id FROM erp.invoice
                WHERE state = 'posted' AND amount_residual > 0 AND crm_contract_id IS NOT NULL
                  AND amount_residual = amount_total
                  AND (crm_contract_id IS NULL OR crm_contract_id <> ALL($1::bigint[]))
                ORDER BY id DESC LIMIT 5000""",
                    sorted(self.reference_contracts),
                )
            )


async def _ids(conn: asyncpg.Connection, query: str, *args: object) -> list[int]:
    return [r[0] for r in await conn.fetch(query, *args)]

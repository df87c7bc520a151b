"""order-sync's effects: one ERP transaction per batch of CRM source transactions.

:meth:`ErpStore.apply` is the whole CRM->ERP step for a batch (one or more complete
CRM source transactions, plus orders to re-decide because reference data changed):

1. lock the orders' rows in ``erp_integration.order_state`` (inserted if new, then
   ``SELECT ... FOR UPDATE`` in id order) — two workers serialize per CRM order;
2. fold the transactions' events into the stored drafts (domain.fold_transaction:
   stale and redelivered changes are ignored by source position);
3. read what :func:`domain.decide` needs: the accounts and product SKUs from the CRM
   database (their latest versions), and inside the locked ERP transaction the ERP
   orders of these CRM orders (``FOR UPDATE``), their customers, the items by SKU, the
   accepted currencies and the warehouses;
4. decide each order, then write every effect — customers, headers *with* their lines,
   amendments, cancellations, the echo fingerprints (``erp_integration.written_row``),
   the identity mapping (``erp_integration.order_identity``, position-guarded) and the
   new drafts — and commit once. All of a CRM transaction or none of it reaches the ERP.

Exactly one ERP order per CRM order: the draft row lock serializes deciders and the
ERP's unique ``crm_order_id`` refuses a second order whatever happens; an ERP order
found for a CRM order is amended, never created again. Replays and redeliveries fold
to the same drafts, so :func:`decide` answers NothingToDo.

:class:`StatusWriter` does the CRM write-back and publishing *after* the ERP commit,
in this order: read the stored ``crm_integration.order_sync_status`` rows, publish the
events of the rows that change (identity, status, conflict), then upsert those rows
(position-guarded). A crash anywhere before the CRM upsert leaves the row unchanged, so
the redelivered batch (deciding NothingToDo) publishes again: at-least-once, consumers
keep the latest record per key (state topics) or deduplicate on ``event_id`` (alerts).
A replay from the beginning changes no row and publishes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import asyncpg

from services.order_sync import codec
from services.order_sync.codec import StatusRow
from services.order_sync.domain import (
    CRM_LINE_TABLE,
    CRM_ORDER_TABLE,
    ERP_LINE_TABLE,
    ERP_ORDER_TABLE,
    ROW_DELETED,
    AmendErpOrder,
    CancelErpOrder,
    Conflict,
    CreateErpOrder,
    CrmAccount,
    CrmOrder,
    CrmOrderState,
    CustomerRejected,
    CustomerUpsert,
    ErpCustomer,
    ErpItem,
    ErpOrderSnapshot,
    ErpOrderState,
    NothingToDo,
    OrderDraft,
    Reject,
    StaticCatalogue,
    SyncDecision,
    decide,
    decide_customer,
    fold_transaction,
    header_row,
    line_row,
    row_fingerprint,
)
from services.order_sync.holds import HoldKind, LineHold, holds_by_line
from services.shared.changes import ChangeEvent, ChangeOp
from services.shared.errors import BadInput
from services.shared.position import SourcePosition
from services.shared.runtime import AvroPublisher

log = logging.getLogger(__name__)

ACCOUNT_TABLE = "account"
PRODUCT_TABLE = "product"
FINGERPRINT_HISTORY = 8


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class OrderOutcome:
    """What happened to one CRM order in a batch (input of the status write-back)."""

    crm_order_id: int
    kind: str  # create | amend | cancel | reject | conflict | nothing
    status: StatusRow | None
    position: SourcePosition
    identity: dict[str, Any] | None = None
    conflict: dict[str, Any] | None = None


@dataclass
class BatchResult:
    outcomes: list[OrderOutcome] = field(default_factory=list)
    customers_written: int = 0
    customer_rejections: list[CustomerRejected] = field(default_factory=list)


# --------------------------------------------------------------------------- SQL

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
#: The ERP documents that pin order lines (services/order_sync/holds.py).
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
_CUSTOMER_UPSERT = """
INSERT INTO erp.customer AS c (name, street, city, postal_code, country_code, vat_number,
                               currency_code, origin, crm_account_id)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::text[], $8::text[], $9::bigint[])
ON CONFLICT (crm_account_id) WHERE crm_account_id IS NOT NULL DO UPDATE SET
    name = EXCLUDED.name, street = EXCLUDED.street, city = EXCLUDED.city,
    postal_code = EXCLUDED.postal_code, country_code = EXCLUDED.country_code,
    vat_number = EXCLUDED.vat_number, currency_code = EXCLUDED.currency_code,
    updated_at = now()
RETURNING id, crm_account_id
"""
_HEADER_INSERT = """
INSERT INTO erp.sales_order (customer_id, state, currency_code, requested_date, warehouse_id,
                             origin, crm_order_id, crm_order_version, client_order_ref,
                             amount_total)
SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::date[], $5::bigint[],
                     $6::text[], $7::bigint[], $8::integer[], $9::text[], $10::numeric[])
ON CONFLICT (crm_order_id) WHERE crm_order_id IS NOT NULL DO NOTHING
RETURNING id, name, crm_order_id
"""
_HEADER_UPDATE = """
UPDATE erp.sales_order AS o
SET customer_id = u.customer_id, currency_code = u.currency_code,
    requested_date = u.requested_date, warehouse_id = u.warehouse_id,
    crm_order_version = u.version, client_order_ref = u.ref, amount_total = u.total,
    updated_at = now()
FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::date[], $5::bigint[], $6::integer[],
            $7::text[], $8::numeric[])
     AS u(id, customer_id, currency_code, requested_date, warehouse_id, version, ref, total)
WHERE o.id = u.id
"""
_LINE_INSERT = """
INSERT INTO erp.sales_order_line (order_id, line_no, item_id, quantity, unit_price, discount_pct)
SELECT * FROM unnest($1::bigint[], $2::integer[], $3::bigint[], $4::numeric[], $5::numeric[],
                     $6::numeric[])
RETURNING id, order_id, line_no
"""
_LINE_UPDATE = """
UPDATE erp.sales_order_line AS l
SET item_id = u.item_id, quantity = u.quantity, unit_price = u.unit_price,
    discount_pct = u.discount_pct
FROM unnest($1::bigint[], $2::bigint[], $3::numeric[], $4::numeric[], $5::numeric[])
     AS u(id, item_id, quantity, unit_price, discount_pct)
WHERE l.id = u.id
"""
_LINE_DELETE = "DELETE FROM erp.sales_order_line WHERE id = ANY($1::bigint[])"
_CANCEL = """
UPDATE erp.sales_order SET state = 'cancelled', updated_at = now()
WHERE id = ANY($1::bigint[]) RETURNING id
"""
_FINGERPRINTS = """
INSERT INTO erp_integration.written_row AS w (tbl, row_id, fingerprints)
SELECT t, r, ARRAY[f] FROM unnest($1::text[], $2::bigint[], $3::text[]) AS u(t, r, f)
ON CONFLICT (tbl, row_id) DO UPDATE
SET fingerprints = (EXCLUDED.fingerprints || w.fingerprints)[1:8], updated_at = now()
"""
_FINGERPRINTS_READ = """
SELECT w.tbl, w.row_id, w.fingerprints FROM erp_integration.written_row AS w
JOIN unnest($1::text[], $2::bigint[]) AS u(t, r) ON w.tbl = u.t AND w.row_id = u.r
"""
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
_IDENTITY_BY_ERP = """
SELECT crm_order_id, erp_order_id, erp_order_name FROM erp_integration.order_identity
WHERE erp_order_id = ANY($1::bigint[])
"""


# --------------------------------------------------------------------------- helpers


def _ids(values: Iterable[int]) -> list[int]:
    return sorted(set(values))


def _strip(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


def order_ids_in(events: Iterable[ChangeEvent]) -> set[int]:
    from services.order_sync.domain import order_ids_of

    ids: set[int] = set()
    for event in events:
        if event.table in (CRM_ORDER_TABLE, CRM_LINE_TABLE):
            ids |= order_ids_of(event)
    return ids


def _row_id(event: ChangeEvent) -> int | None:
    value = event.key.get("id")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass
class _Writes:
    """Everything the batch writes, gathered per statement (one round trip each)."""

    customers: dict[int, CustomerUpsert] = field(default_factory=dict)
    creates: list[CreateErpOrder] = field(default_factory=list)
    amends: list[AmendErpOrder] = field(default_factory=list)
    cancels: list[CancelErpOrder] = field(default_factory=list)
    fingerprints: list[tuple[str, int, str]] = field(default_factory=list)


class TransientStoreError(RuntimeError):
    """A write conflicted with a concurrent writer; the batch is retried whole."""


# --------------------------------------------------------------------------- the ERP side


class EchoMemory:
    """What this process wrote to the ERP recently, to recognise echoes without a query.

    Per ERP row the fingerprints order-sync recorded for it (newest first, as in
    ``erp_integration.written_row``), per ERP order the CRM order it belongs to. Filled
    only after the ERP transaction that wrote them committed, so it never knows more
    than the database; a row it does not know (older, or written by another worker) is
    looked up in the database. Bounded: two generations of ``capacity`` entries each,
    the older dropped whole when the newer fills (cheaper than an LRU per lookup).
    """

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._rows: dict[tuple[str, int], list[str]] = {}
        self._old_rows: dict[tuple[str, int], list[str]] = {}
        self._orders: dict[int, tuple[int, str]] = {}
        self._old_orders: dict[int, tuple[int, str]] = {}

    def remember_writes(self, fingerprints: Iterable[tuple[str, int, str]]) -> None:
        for table, row_id, fingerprint in fingerprints:
            key = (table, row_id)
            history = self.history(table, row_id) or []
            self._rows[key] = [fingerprint, *history][:FINGERPRINT_HISTORY]
        if len(self._rows) > self.capacity:
            self._old_rows, self._rows = self._rows, {}

    def remember_order(self, erp_order_id: int, crm_order_id: int, erp_order_name: str) -> None:
        self._orders[erp_order_id] = (crm_order_id, erp_order_name)
        if len(self._orders) > self.capacity:
            self._old_orders, self._orders = self._orders, {}

    def history(self, table: str, row_id: int) -> list[str] | None:
        key = (table, row_id)
        found = self._rows.get(key)
        return found if found is not None else self._old_rows.get(key)

    def order(self, erp_order_id: int) -> tuple[int, str] | None:
        found = self._orders.get(erp_order_id)
        return found if found is not None else self._old_orders.get(erp_order_id)


class ErpStore:
    """CRM->ERP effects; see the module docstring."""

    def __init__(
        self, crm: asyncpg.Pool, erp: asyncpg.Pool, memory: EchoMemory | None = None
    ) -> None:
        self.crm = crm
        self.erp = erp
        self.memory = memory if memory is not None else EchoMemory()

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

    async def apply(
        self,
        events: Sequence[ChangeEvent],
        *,
        redecide: Iterable[int] = (),
        changed_accounts: Iterable[int] = (),
        refused: str | None = None,
    ) -> BatchResult:
        """Fold ``events`` (whole CRM transactions), decide every order they touch plus
        ``redecide``, sync the customers of ``changed_accounts``; one ERP transaction.

        ``refused``: the ERP refused these events' effects (the transaction that tried
        was rolled back). Then no order is written to the ERP (an account's billing
        change still is; if that was the refused part, this fails too), but the refusal
        is recorded in a transaction of its own: the CRM change is folded into the stored
        drafts (so the next change is decided against the CRM as it really is, and
        against the ERP as it really is), every order that would have been written
        becomes a conflict (a rejection if it has no ERP order yet) with ``refused`` as
        its reason — re-decided on later changes like every unsettled order.
        """
        order_ids = _ids([*order_ids_in(events), *redecide])
        account_changes = _ids(changed_accounts)
        result = BatchResult()
        if not order_ids and not account_changes:
            return result
        async with self.erp.acquire() as conn, conn.transaction():
            drafts: dict[int, OrderDraft] = {}
            stored_decisions: dict[int, str | None] = {}
            if order_ids:
                await conn.execute(_LOCK_INSERT, order_ids)
                for row in await conn.fetch(_LOCK_SELECT, order_ids):
                    order_id = int(row["crm_order_id"])
                    drafts[order_id] = codec.decode_draft(row["draft"], order_id)
                    stored_decisions[order_id] = row["last_decision"]
            folded = dict(drafts)
            folded.update(fold_transaction(drafts, events))
            orders: dict[int, CrmOrder | None] = {}
            bad: dict[int, str] = {}
            for order_id, draft in folded.items():
                try:
                    orders[order_id] = draft.to_order()
                except BadInput as error:
                    orders[order_id] = None
                    bad[order_id] = error.reason

            live = [o for o in orders.values() if o is not None]
            account_ids = _ids([*(o.account_id for o in live), *account_changes])
            product_ids = _ids(line.product_id for o in live for line in o.lines)
            accounts, skus = await self._crm_reference(account_ids, product_ids)

            currencies = {str(r["code"]).strip() for r in await conn.fetch(_CURRENCIES)}
            warehouse_rows = await conn.fetch(_WAREHOUSES)
            warehouses = {str(r["code"]): int(r["id"]) for r in warehouse_rows}
            default_code = str(warehouse_rows[0]["code"]) if warehouse_rows else None
            item_rows = await conn.fetch(_ITEMS, sorted(set(skus.values())))
            items = {
                str(r["sku"]): ErpItem(int(r["id"]), str(r["sku"]), bool(r["active"]))
                for r in item_rows
            }
            customers = {
                int(r["crm_account_id"]): ErpCustomer.from_row(dict(r))
                for r in await conn.fetch(_CUSTOMERS, account_ids)
            }
            snapshots = await self._erp_orders(conn, order_ids)
            holds = await self._holds(conn, snapshots.values())
            catalogue = StaticCatalogue(skus, items, warehouses, default_code)

            writes = _Writes()
            decisions: dict[int, SyncDecision] = {}
            for order_id in order_ids:
                order = orders.get(order_id)
                if order is None:
                    if order_id in bad:
                        decisions[order_id] = Reject(order_id, 0, (bad[order_id],))
                    continue
                decision = decide(
                    order,
                    accounts.get(order.account_id),
                    snapshots.get(order_id),
                    catalogue,
                    currencies,
                    erp_customer=customers.get(order.account_id),
                    holds=holds,
                )
                if refused is not None:
                    decision = _refusal(decision, snapshots.get(order_id), refused)
                decisions[order_id] = decision
                if isinstance(decision, CreateErpOrder):
                    writes.creates.append(decision)
                    if decision.customer is not None:
                        writes.customers[decision.customer.crm_account_id] = decision.customer
                elif isinstance(decision, AmendErpOrder):
                    writes.amends.append(decision)
                    if decision.customer is not None:
                        writes.customers[decision.customer.crm_account_id] = decision.customer
                elif isinstance(decision, CancelErpOrder):
                    writes.cancels.append(decision)
            for account_id in account_changes:
                account = accounts.get(account_id)
                if account is None or account_id in writes.customers:
                    continue
                change = decide_customer(account, customers.get(account_id), currencies)
                if isinstance(change, CustomerRejected):
                    result.customer_rejections.append(change)
                elif change is not None:
                    writes.customers[account_id] = change

            customer_ids = {a: c.id for a, c in customers.items()}
            customer_ids.update(await self._write_customers(conn, writes.customers))
            result.customers_written = len(writes.customers)
            created = await self._write_creates(conn, writes, customer_ids)
            await self._write_amends(conn, writes, customer_ids)
            cancelled = await self._write_cancels(conn, writes)
            if writes.fingerprints:
                await conn.execute(
                    _FINGERPRINTS,
                    [t for t, _, _ in writes.fingerprints],
                    [r for _, r, _ in writes.fingerprints],
                    [f for _, _, f in writes.fingerprints],
                )

            identities: list[tuple[int, dict[str, Any], SourcePosition]] = []
            for order_id, decision in decisions.items():
                outcome = self._outcome(
                    order_id, decision, orders.get(order_id), snapshots.get(order_id),
                    created, cancelled, customer_ids,
                )
                result.outcomes.append(outcome)
                if outcome.identity is not None and outcome.kind in ("create", "amend", "cancel"):
                    identities.append((order_id, outcome.identity, outcome.position))
            if identities:
                await conn.execute(
                    _IDENTITY_UPSERT,
                    [i for i, _, _ in identities],
                    [r["erp_order_id"] for _, r, _ in identities],
                    [r["erp_order_name"] for _, r, _ in identities],
                    [r["crm_order_number"] for _, r, _ in identities],
                    [r["crm_order_version"] for _, r, _ in identities],
                    [r["crm_account_id"] for _, r, _ in identities],
                    [r["erp_customer_id"] for _, r, _ in identities],
                    [p.commit_lsn for _, _, p in identities],
                    [p.lsn for _, _, p in identities],
                )
            # a replay or redelivery folds to the stored draft: leave those rows alone
            touched = {
                i: d for i, d in folded.items()
                if d != drafts.get(i)
                or stored_decisions.get(i) != (_kind(decisions[i]) if i in decisions else None)
            }
            await self._write_states(conn, touched, orders, decisions)
        # committed: from now on these rows' echoes are recognised from memory
        self.memory.remember_writes(writes.fingerprints)
        for _, identity, _ in identities:
            self.memory.remember_order(
                int(identity["erp_order_id"]), int(identity["crm_order_id"]),
                str(identity["erp_order_name"]),
            )
        return result

    # ------------------------------------------------------------------ reads

    async def _crm_reference(
        self, account_ids: list[int], product_ids: list[int]
    ) -> tuple[dict[int, CrmAccount], dict[int, str]]:
        async with self.crm.acquire() as crm:
            account_rows = await crm.fetch(_ACCOUNTS, account_ids) if account_ids else []
            product_rows = await crm.fetch(_PRODUCTS, product_ids) if product_ids else []
        accounts = {int(r["id"]): CrmAccount.from_row(dict(r)) for r in account_rows}
        skus = {int(r["id"]): str(r["sku"]) for r in product_rows}
        return accounts, skus

    @staticmethod
    async def _holds(
        conn: asyncpg.Connection, snapshots: Iterable[ErpOrderSnapshot]
    ) -> dict[int, tuple[LineHold, ...]]:
        """The ERP documents pinning the lines of ``snapshots`` (open orders only: a
        closed or cancelled order takes no line change anyway)."""
        line_ids = sorted(
            line.id for snapshot in snapshots if snapshot.is_open for line in snapshot.lines
        )
        if not line_ids:
            return {}
        rows = await conn.fetch(_HOLDS, line_ids)
        return holds_by_line(
            LineHold(int(r["line_id"]), HoldKind(r["kind"]), str(r["document"]),
                     Decimal(r["quantity"]), str(r["state"]))
            for r in rows
        )

    @staticmethod
    async def _erp_orders(
        conn: asyncpg.Connection, crm_order_ids: list[int]
    ) -> dict[int, ErpOrderSnapshot]:
        if not crm_order_ids:
            return {}
        headers = await conn.fetch(_ERP_ORDERS, crm_order_ids)
        return await _snapshots(conn, headers, key="crm_order_id")

    # ------------------------------------------------------------------ writes

    @staticmethod
    async def _write_customers(
        conn: asyncpg.Connection, upserts: Mapping[int, CustomerUpsert]
    ) -> dict[int, int]:
        if not upserts:
            return {}
        ordered = [upserts[a] for a in sorted(upserts)]
        rows = await conn.fetch(
            _CUSTOMER_UPSERT,
            [c.name for c in ordered],
            [c.street for c in ordered],
            [c.city for c in ordered],
            [c.postal_code for c in ordered],
            [c.country_code for c in ordered],
            [c.vat_number for c in ordered],
            [c.currency for c in ordered],
            [c.origin for c in ordered],
            [c.crm_account_id for c in ordered],
        )
        return {int(r["crm_account_id"]): int(r["id"]) for r in rows}

    @staticmethod
    def _customer_of(header_customer: int | None, account_id: int, ids: Mapping[int, int]) -> int:
        customer = ids.get(account_id, header_customer)
        if customer is None:
            raise RuntimeError(f"no ERP customer resolved for CRM account {account_id}")
        return customer

    async def _write_creates(
        self, conn: asyncpg.Connection, writes: _Writes, customer_ids: Mapping[int, int]
    ) -> dict[int, tuple[int, str]]:
        if not writes.creates:
            return {}
        creates = sorted(writes.creates, key=lambda d: d.header.crm_order_id)
        customers = [
            self._customer_of(d.header.customer_id, d.header.crm_account_id, customer_ids)
            for d in creates
        ]
        rows = await conn.fetch(
            _HEADER_INSERT,
            customers,
            [str(d.header.state) for d in creates],
            [d.header.currency for d in creates],
            [d.header.requested_date for d in creates],
            [d.header.warehouse_id for d in creates],
            [d.header.origin for d in creates],
            [d.header.crm_order_id for d in creates],
            [d.header.crm_order_version for d in creates],
            [d.header.client_order_ref for d in creates],
            [d.header.amount_total.amount for d in creates],
        )
        created = {int(r["crm_order_id"]): (int(r["id"]), str(r["name"])) for r in rows}
        if len(created) != len(creates):
            raise TransientStoreError("an ERP order appeared for a CRM order being created")
        line_args: list[list[Any]] = [[], [], [], [], [], []]
        for decision, customer in zip(creates, customers, strict=True):
            erp_id, _ = created[decision.header.crm_order_id]
            writes.fingerprints.append(
                (ERP_ORDER_TABLE, erp_id,
                 row_fingerprint(ERP_ORDER_TABLE, header_row(decision.header, customer)))
            )
            for spec in decision.lines:
                for column, value in zip(line_args, _line_values(erp_id, spec), strict=True):
                    column.append(value)
        if line_args[0]:
            await self._insert_lines(conn, line_args, writes)
        return created

    @staticmethod
    async def _insert_lines(
        conn: asyncpg.Connection, args: list[list[Any]], writes: _Writes
    ) -> None:
        rows = await conn.fetch(_LINE_INSERT, *args)
        by_key = {(int(r["order_id"]), int(r["line_no"])): int(r["id"]) for r in rows}
        for order_id, line_no, item_id, quantity, price, discount in zip(*args, strict=True):
            row = {"order_id": order_id, "line_no": line_no, "item_id": item_id,
                   "quantity": quantity, "unit_price": price, "discount_pct": discount}
            writes.fingerprints.append(
                (ERP_LINE_TABLE, by_key[(order_id, line_no)],
                 row_fingerprint(ERP_LINE_TABLE, row))
            )

    async def _write_amends(
        self, conn: asyncpg.Connection, writes: _Writes, customer_ids: Mapping[int, int]
    ) -> None:
        if not writes.amends:
            return
        amends = sorted(writes.amends, key=lambda d: d.erp_order_id)
        customers = [
            self._customer_of(d.header.customer_id, d.header.crm_account_id, customer_ids)
            for d in amends
        ]
        await conn.execute(
            _HEADER_UPDATE,
            [d.erp_order_id for d in amends],
            customers,
            [d.header.currency for d in amends],
            [d.header.requested_date for d in amends],
            [d.header.warehouse_id for d in amends],
            [d.header.crm_order_version for d in amends],
            [d.header.client_order_ref for d in amends],
            [d.header.amount_total.amount for d in amends],
        )
        removals = sorted(r.erp_line_id for d in amends for r in d.remove_lines)
        if removals:
            await conn.execute(_LINE_DELETE, removals)
            writes.fingerprints.extend((ERP_LINE_TABLE, i, ROW_DELETED) for i in removals)
        updates = sorted((u for d in amends for u in d.update_lines), key=lambda u: u.erp_line_id)
        if updates:
            await conn.execute(
                _LINE_UPDATE,
                [u.erp_line_id for u in updates],
                [u.line.item_id for u in updates],
                [u.line.quantity for u in updates],
                [u.line.unit_price.amount for u in updates],
                [u.line.discount_pct for u in updates],
            )
            for decision in amends:
                for update in decision.update_lines:
                    row = line_row(update.line, decision.erp_order_id)
                    writes.fingerprints.append(
                        (ERP_LINE_TABLE, update.erp_line_id, row_fingerprint(ERP_LINE_TABLE, row))
                    )
        line_args: list[list[Any]] = [[], [], [], [], [], []]
        for decision, customer in zip(amends, customers, strict=True):
            writes.fingerprints.append((
                ERP_ORDER_TABLE, decision.erp_order_id,
                row_fingerprint(ERP_ORDER_TABLE, header_row(decision.header, customer)),
            ))
            for spec in decision.add_lines:
                for column, value in zip(
                    line_args, _line_values(decision.erp_order_id, spec), strict=True
                ):
                    column.append(value)
        if line_args[0]:
            await self._insert_lines(conn, line_args, writes)

    @staticmethod
    async def _write_cancels(conn: asyncpg.Connection, writes: _Writes) -> set[int]:
        if not writes.cancels:
            return set()
        ids = sorted(d.erp_order_id for d in writes.cancels)
        rows = await conn.fetch(_CANCEL, ids)
        # the fingerprint of a cancelled header: its sync-owned columns as they are, cancelled
        headers = await conn.fetch(_ERP_ORDERS_BY_ID, ids)
        for header in headers:
            row = dict(header)
            row["state"] = ErpOrderState.CANCELLED
            writes.fingerprints.append(
                (ERP_ORDER_TABLE, int(row["id"]), row_fingerprint(ERP_ORDER_TABLE, row))
            )
        return {int(r["id"]) for r in rows}

    async def _write_states(
        self,
        conn: asyncpg.Connection,
        folded: Mapping[int, OrderDraft],
        orders: Mapping[int, CrmOrder | None],
        decisions: Mapping[int, SyncDecision],
    ) -> None:
        if not folded:
            return
        ids = sorted(folded)
        kinds = [_kind(decisions[i]) if i in decisions else None for i in ids]
        positions = [folded[i].position for i in ids]
        await conn.execute(
            _STATE_UPDATE,
            ids,
            [codec.encode_draft(folded[i]) for i in ids],
            kinds,
            [o.version if (o := orders.get(i)) is not None else None for i in ids],
            [o.account_id if (o := orders.get(i)) is not None else None for i in ids],
            [p.commit_lsn for p in positions],
            [p.lsn for p in positions],
        )

    # ------------------------------------------------------------------ outcomes

    @staticmethod
    def _outcome(
        order_id: int,
        decision: SyncDecision,
        order: CrmOrder | None,
        snapshot: ErpOrderSnapshot | None,
        created: Mapping[int, tuple[int, str]],
        cancelled: set[int],
        customer_ids: Mapping[int, int],
    ) -> OrderOutcome:
        kind = _kind(decision)
        position = order.position if order is not None else SourcePosition.zero()
        version = order.version if order is not None else None
        erp_id: int | None = snapshot.id if snapshot is not None else None
        erp_name: str | None = snapshot.name if snapshot is not None else None
        identity: dict[str, Any] | None = None
        conflict: dict[str, Any] | None = None
        sync_state: str | None = "synced"
        reason: str | None = None
        if isinstance(decision, CreateErpOrder):
            erp_id, erp_name = created[order_id]
            identity = _identity(order, erp_id, erp_name,
                                 customer_ids.get(decision.header.crm_account_id),
                                 decision.header.amount_total.amount, decision.header.currency,
                                 cancelled=False)
        elif isinstance(decision, AmendErpOrder):
            identity = _identity(order, decision.erp_order_id, erp_name or "",
                                 customer_ids.get(decision.header.crm_account_id),
                                 decision.header.amount_total.amount, decision.header.currency,
                                 cancelled=False)
        elif isinstance(decision, CancelErpOrder):
            sync_state = "cancelled"
            if snapshot is not None:
                identity = _identity(order, snapshot.id, snapshot.name, snapshot.customer_id,
                                     snapshot.amount_total.amount, snapshot.currency,
                                     cancelled=decision.erp_order_id in cancelled)
        elif isinstance(decision, Reject | Conflict):
            sync_state = "rejected" if isinstance(decision, Reject) else "conflict"
            reason = codec.reason_text(decision.reasons)
            conflict = codec.conflict_record(
                kind=sync_state, crm_order_id=order_id,
                crm_order_version=decision.crm_order_version, erp_order_id=erp_id,
                reasons=decision.reasons,
            )
        elif isinstance(decision, NothingToDo):
            if order is None:
                return OrderOutcome(order_id, kind, None, position)
            if order.state is CrmOrderState.CANCELLED:
                sync_state = "cancelled"
            elif order.state is CrmOrderState.DRAFT or snapshot is None:
                return OrderOutcome(order_id, kind, None, position)
            if snapshot is not None:
                identity = _identity(order, snapshot.id, snapshot.name, snapshot.customer_id,
                                     snapshot.amount_total.amount, snapshot.currency,
                                     cancelled=snapshot.state is ErpOrderState.CANCELLED)
        status = StatusRow(order_id, sync_state, None, reason, version, erp_id, erp_name)
        return OrderOutcome(order_id, kind, status, position, identity, conflict)


def _refusal(
    decision: SyncDecision, snapshot: ErpOrderSnapshot | None, reason: str
) -> SyncDecision:
    """What a decision the ERP refused becomes (see :meth:`ErpStore.apply`)."""
    if isinstance(decision, CreateErpOrder):
        header = decision.header
        return Reject(header.crm_order_id, header.crm_order_version, (reason,))
    if isinstance(decision, AmendErpOrder):
        header = decision.header
        return Conflict(header.crm_order_id, header.crm_order_version, decision.erp_order_id,
                        (reason,))
    if isinstance(decision, CancelErpOrder):
        return Conflict(decision.crm_order_id, decision.crm_order_version,
                        decision.erp_order_id, (reason,))
    return decision


def _line_values(erp_order_id: int, spec: Any) -> tuple[Any, ...]:
    return (erp_order_id, spec.line_no, spec.item_id, spec.quantity, spec.unit_price.amount,
            spec.discount_pct)


def _kind(decision: SyncDecision) -> str:
    if isinstance(decision, CreateErpOrder):
        return "create"
    if isinstance(decision, AmendErpOrder):
        return "amend"
    if isinstance(decision, CancelErpOrder):
        return "cancel"
    if isinstance(decision, Reject):
        return "reject"
    if isinstance(decision, Conflict):
        return "conflict"
    return "nothing"


def _identity(
    order: CrmOrder | None,
    erp_order_id: int,
    erp_order_name: str,
    customer_id: int | None,
    amount: Decimal,
    currency: str,
    *,
    cancelled: bool,
) -> dict[str, Any] | None:
    if order is None or customer_id is None:
        return None
    return codec.identity_record(
        crm_order_id=order.id,
        crm_order_number=order.number,
        crm_order_version=order.version,
        crm_account_id=order.account_id,
        erp_order_id=erp_order_id,
        erp_order_name=erp_order_name,
        erp_customer_id=customer_id,
        amount_total=amount,
        currency=currency,
        cancelled=cancelled,
    )


async def _snapshots(
    conn: asyncpg.Connection, headers: Sequence[asyncpg.Record], *, key: str
) -> dict[int, ErpOrderSnapshot]:
    if not headers:
        return {}
    ids = [int(h["id"]) for h in headers]
    lines: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
    for row in await conn.fetch(_ERP_LINES, ids):
        lines[int(row["order_id"])].append(dict(row))
    return {
        int(h[key]): ErpOrderSnapshot.from_rows(dict(h), lines[int(h["id"])]) for h in headers
    }


# --------------------------------------------------------------------------- ERP progress


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
        from services.order_sync.domain import is_echo

        memory = self.memory
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
            return await _snapshots(conn, headers, key="id")


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


# --------------------------------------------------------------------------- CRM side

_STATUS_READ = """
SELECT crm_order_id, sync_state, progress, reason, crm_order_version, erp_order_id,
       erp_order_name, source_commit_lsn, source_lsn, erp_commit_lsn, erp_lsn
FROM crm_integration.order_sync_status WHERE crm_order_id = ANY($1::bigint[])
"""
_STATUS_SYNC_UPSERT = """
INSERT INTO crm_integration.order_sync_status AS s (crm_order_id, sync_state, reason,
    crm_order_version, erp_order_id, erp_order_name, source_commit_lsn, source_lsn)
SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::integer[], $5::bigint[],
                     $6::text[], $7::bigint[], $8::bigint[])
ON CONFLICT (crm_order_id) DO UPDATE SET
    sync_state = EXCLUDED.sync_state, reason = EXCLUDED.reason,
    crm_order_version = EXCLUDED.crm_order_version,
    erp_order_id = coalesce(EXCLUDED.erp_order_id, s.erp_order_id),
    erp_order_name = coalesce(EXCLUDED.erp_order_name, s.erp_order_name),
    source_commit_lsn = EXCLUDED.source_commit_lsn, source_lsn = EXCLUDED.source_lsn,
    updated_at = now()
WHERE (s.source_commit_lsn, s.source_lsn) <= (EXCLUDED.source_commit_lsn, EXCLUDED.source_lsn)
"""
_STATUS_PROGRESS_UPSERT = """
INSERT INTO crm_integration.order_sync_status AS s (crm_order_id, progress, erp_order_id,
    erp_order_name, erp_commit_lsn, erp_lsn)
SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::bigint[],
                     $6::bigint[])
ON CONFLICT (crm_order_id) DO UPDATE SET
    progress = EXCLUDED.progress,
    erp_order_id = coalesce(s.erp_order_id, EXCLUDED.erp_order_id),
    erp_order_name = coalesce(s.erp_order_name, EXCLUDED.erp_order_name),
    erp_commit_lsn = EXCLUDED.erp_commit_lsn, erp_lsn = EXCLUDED.erp_lsn, updated_at = now()
WHERE (s.erp_commit_lsn, s.erp_lsn) <= (EXCLUDED.erp_commit_lsn, EXCLUDED.erp_lsn)
"""

PublishItem = tuple[str, str, bytes, dict[str, Any]]


class StatusWriter:
    """CRM write-back plus publishing; see the module docstring for the order of steps.

    One lock per process: the CRM side and the ERP side both write these rows, and the
    last record published per key must be the row's final state.
    """

    def __init__(self, crm: asyncpg.Pool, publisher: AvroPublisher) -> None:
        self.crm = crm
        self.publisher = publisher
        self._lock = asyncio.Lock()

    async def write_sync(self, outcomes: Sequence[OrderOutcome]) -> int:
        """CRM-side outcomes (create/amend/cancel/reject/conflict/nothing); returns
        how many status rows changed (and were published)."""
        wanted = {o.crm_order_id: o for o in outcomes if o.status is not None}
        if not wanted:
            return 0
        async with self._lock:
            stored = await self._read(list(wanted))
            changed: list[OrderOutcome] = []
            items: list[PublishItem] = []
            for order_id, outcome in sorted(wanted.items()):
                assert outcome.status is not None
                row = stored.get(order_id)
                if row is not None and (row["source_commit_lsn"], row["source_lsn"]) > (
                    outcome.position.commit_lsn, outcome.position.lsn
                ):
                    continue  # a newer CRM version has been decided already
                new = outcome.status
                if row is not None and (
                    row["sync_state"], row["reason"], row["crm_order_version"],
                    row["erp_order_id"], row["erp_order_name"],
                ) == (new.sync_state, new.reason, new.crm_order_version,
                      new.erp_order_id or row["erp_order_id"],
                      new.erp_order_name or row["erp_order_name"]):
                    continue
                merged = StatusRow(
                    order_id, new.sync_state, row["progress"] if row is not None else None,
                    new.reason, new.crm_order_version,
                    new.erp_order_id or (row["erp_order_id"] if row is not None else None),
                    new.erp_order_name or (row["erp_order_name"] if row is not None else None),
                )
                key = codec.kafka_key(order_id)
                if outcome.identity is not None:
                    items.append((codec.IDENTITY_TOPIC, codec.IDENTITY_SCHEMA, key,
                                  outcome.identity))
                if outcome.conflict is not None:
                    items.append((codec.CONFLICT_TOPIC, codec.CONFLICT_SCHEMA, key,
                                  outcome.conflict))
                items.append((codec.STATUS_TOPIC, codec.STATUS_SCHEMA, key,
                              codec.status_record(merged)))
                changed.append(outcome)
            if not changed:
                return 0
            await self.publisher.publish_many(items)
            statuses = [o.status for o in changed if o.status is not None]
            await self.crm.execute(
                _STATUS_SYNC_UPSERT,
                [s.crm_order_id for s in statuses],
                [s.sync_state for s in statuses],
                [s.reason for s in statuses],
                [s.crm_order_version for s in statuses],
                [s.erp_order_id for s in statuses],
                [s.erp_order_name for s in statuses],
                [o.position.commit_lsn for o in changed],
                [o.position.lsn for o in changed],
            )
            return len(changed)

    async def write_progress(
        self, progress: Sequence[tuple[ProgressCandidate, str]], *, known_only: bool = False
    ) -> int:
        """ERP-side progress per CRM order; returns how many rows changed.

        ``known_only``: only rows that already have a progress (after order-sync's own
        amendment: an order the ERP has not touched yet has none to correct)."""
        if not progress:
            return 0
        async with self._lock:
            stored = await self._read([c.crm_order_id for c, _ in progress])
            changed: list[tuple[ProgressCandidate, str]] = []
            items: list[PublishItem] = []
            for candidate, status in sorted(progress, key=lambda p: p[0].crm_order_id):
                row = stored.get(candidate.crm_order_id)
                if known_only and (row is None or row["progress"] is None):
                    continue
                if row is not None and (
                    (row["erp_commit_lsn"], row["erp_lsn"])
                    > (candidate.position.commit_lsn, candidate.position.lsn)
                    or row["progress"] == status
                ):
                    continue
                merged = StatusRow(
                    candidate.crm_order_id,
                    row["sync_state"] if row is not None else None,
                    status,
                    row["reason"] if row is not None else None,
                    row["crm_order_version"] if row is not None else None,
                    (row["erp_order_id"] if row is not None else None) or candidate.erp_order_id,
                    (row["erp_order_name"] if row is not None else None)
                    or candidate.erp_order_name,
                )
                items.append((codec.STATUS_TOPIC, codec.STATUS_SCHEMA,
                              codec.kafka_key(candidate.crm_order_id),
                              codec.status_record(merged)))
                changed.append((candidate, status))
            if not changed:
                return 0
            await self.publisher.publish_many(items)
            await self.crm.execute(
                _STATUS_PROGRESS_UPSERT,
                [c.crm_order_id for c, _ in changed],
                [s for _, s in changed],
                [c.erp_order_id for c, _ in changed],
                [c.erp_order_name for c, _ in changed],
                [c.position.commit_lsn for c, _ in changed],
                [c.position.lsn for c, _ in changed],
            )
            return len(changed)

    async def _read(self, ids: list[int]) -> dict[int, asyncpg.Record]:
        rows = await self.crm.fetch(_STATUS_READ, ids)
        return {int(r["crm_order_id"]): r for r in rows}

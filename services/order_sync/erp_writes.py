"""order-sync's ERP writes: the decisions of a batch as a few set-based statements.

Everything of one kind in a batch is one statement (one round trip): customers, new
headers, their lines, header and line amendments, line removals, cancellations. Each
row written is fingerprinted as order-sync intends it (:func:`~.domain.echoes.row_fingerprint`,
or :data:`~.domain.echoes.ROW_DELETED`), recorded in ``erp_integration.written_row`` in the
same transaction, so its CDC echo is recognised (:mod:`services.order_sync.erp_progress`).
Runs on the connection of an :class:`~services.order_sync.erp_unit_of_work.ErpUnitOfWork`;
decides nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import asyncpg

from services.order_sync.domain.decisions import CustomerUpsert, ErpLineSpec
from services.order_sync.domain.echoes import ROW_DELETED, header_row, line_row, row_fingerprint
from services.order_sync.domain.erp_orders import ERP_LINE_TABLE, ERP_ORDER_TABLE
from services.order_sync.unit_of_work import ErpWrites, Written
from services.shared.cooperative import Slicer
from services.shared.source_records.erp import ErpOrderState

#: Fingerprints written: (table, row id, fingerprint).
Fingerprint = tuple[str, int, str]

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
_ERP_ORDERS_BY_ID = "SELECT * FROM erp.sales_order WHERE id = ANY($1::bigint[])"
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


class TransientStoreError(RuntimeError):
    """A write conflicted with a concurrent writer; the batch is retried whole."""


async def write(
    conn: asyncpg.Connection, writes: ErpWrites, slicer: Slicer
) -> tuple[Written, list[Fingerprint]]:
    """Execute ``writes`` in the caller's transaction; what the ERP answered and the
    fingerprints recorded (to remember once committed)."""
    fingerprints: list[Fingerprint] = []
    customer_ids = dict(writes.known_customers)
    customer_ids.update(await _write_customers(conn, writes.customers))
    created = await _write_creates(conn, writes, customer_ids, fingerprints, slicer)
    await _write_amends(conn, writes, customer_ids, fingerprints, slicer)
    cancelled = await _write_cancels(conn, writes, fingerprints)
    if fingerprints:
        await conn.execute(
            _FINGERPRINTS,
            [t for t, _, _ in fingerprints],
            [r for _, r, _ in fingerprints],
            [f for _, _, f in fingerprints],
        )
    return Written(customer_ids, created, frozenset(cancelled)), fingerprints


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


def _customer_of(header_customer: int | None, account_id: int, ids: Mapping[int, int]) -> int:
    customer = ids.get(account_id, header_customer)
    if customer is None:
        raise RuntimeError(f"no ERP customer resolved for CRM account {account_id}")
    return customer


async def _write_creates(
    conn: asyncpg.Connection, writes: ErpWrites, customer_ids: Mapping[int, int],
    fingerprints: list[Fingerprint],
    slicer: Slicer,
) -> dict[int, tuple[int, str]]:
    if not writes.creates:
        return {}
    creates = sorted(writes.creates, key=lambda d: d.header.crm_order_id)
    customers = [
        _customer_of(d.header.customer_id, d.header.crm_account_id, customer_ids)
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
        fingerprints.append(
            (ERP_ORDER_TABLE, erp_id,
             row_fingerprint(ERP_ORDER_TABLE, header_row(decision.header, customer)))
        )
        for spec in decision.lines:
            if slicer.due():
                await slicer.pause()
            for column, value in zip(line_args, _line_values(erp_id, spec), strict=True):
                column.append(value)
    if line_args[0]:
        await _insert_lines(conn, line_args, fingerprints, slicer)
    return created


async def _insert_lines(
    conn: asyncpg.Connection, args: list[list[Any]], fingerprints: list[Fingerprint],
    slicer: Slicer,
) -> None:
    rows = await conn.fetch(_LINE_INSERT, *args)
    by_key = {(int(r["order_id"]), int(r["line_no"])): int(r["id"]) for r in rows}
    for order_id, line_no, item_id, quantity, price, discount in zip(*args, strict=True):
        if slicer.due():
            await slicer.pause()
        row = {"order_id": order_id, "line_no": line_no, "item_id": item_id,
               "quantity": quantity, "unit_price": price, "discount_pct": discount}
        fingerprints.append(
            (ERP_LINE_TABLE, by_key[(order_id, line_no)],
             row_fingerprint(ERP_LINE_TABLE, row))
        )


async def _write_amends(
    conn: asyncpg.Connection, writes: ErpWrites, customer_ids: Mapping[int, int],
    fingerprints: list[Fingerprint],
    slicer: Slicer,
) -> None:
    if not writes.amends:
        return
    amends = sorted(writes.amends, key=lambda d: d.erp_order_id)
    customers = [
        _customer_of(d.header.customer_id, d.header.crm_account_id, customer_ids)
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
        fingerprints.extend((ERP_LINE_TABLE, i, ROW_DELETED) for i in removals)
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
                if slicer.due():
                    await slicer.pause()
                row = line_row(update.line, decision.erp_order_id)
                fingerprints.append(
                    (ERP_LINE_TABLE, update.erp_line_id, row_fingerprint(ERP_LINE_TABLE, row))
                )
    line_args: list[list[Any]] = [[], [], [], [], [], []]
    for decision, customer in zip(amends, customers, strict=True):
        fingerprints.append((
            ERP_ORDER_TABLE, decision.erp_order_id,
            row_fingerprint(ERP_ORDER_TABLE, header_row(decision.header, customer)),
        ))
        for spec in decision.add_lines:
            if slicer.due():
                await slicer.pause()
            for column, value in zip(
                line_args, _line_values(decision.erp_order_id, spec), strict=True
            ):
                column.append(value)
    if line_args[0]:
        await _insert_lines(conn, line_args, fingerprints, slicer)


async def _write_cancels(
    conn: asyncpg.Connection, writes: ErpWrites, fingerprints: list[Fingerprint]
) -> set[int]:
    if not writes.cancels:
        return set()
    ids = sorted(d.erp_order_id for d in writes.cancels)
    rows = await conn.fetch(_CANCEL, ids)
    # the fingerprint of a cancelled header: its sync-owned columns as they are, cancelled
    headers = await conn.fetch(_ERP_ORDERS_BY_ID, ids)
    for header in headers:
        row = dict(header)
        row["state"] = ErpOrderState.CANCELLED
        fingerprints.append(
            (ERP_ORDER_TABLE, int(row["id"]), row_fingerprint(ERP_ORDER_TABLE, row))
        )
    return {int(r["id"]) for r in rows}


def _line_values(erp_order_id: int, spec: ErpLineSpec) -> tuple[Any, ...]:
    return (erp_order_id, spec.line_no, spec.item_id, spec.quantity, spec.unit_price.amount,
            spec.discount_pct)

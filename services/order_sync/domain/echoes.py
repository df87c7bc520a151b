"""Recognising order-sync's own ERP writes when they come back as CDC changes.

order-sync records, per ERP row it writes, the :func:`row_fingerprint` of the row *as
it intends to write it* (or :data:`ROW_DELETED`) **before** writing it. An ERP change
of an ``ambidex`` order is an echo (:func:`is_echo`) iff it carries nothing but that:
its after-image has the recorded fingerprint and no ERP-owned column changed (header:
state other than order-sync's own cancel, name; lines: qty_reserved, qty_delivered,
qty_invoiced); a delete is an echo iff the record says order-sync deleted the row.
Everything else (an ERP user shipping, reserving, cancelling, editing) is not an echo
and flows back as progress.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import date
from decimal import Decimal
from types import MappingProxyType
from typing import Any

import orjson

from services.order_sync.domain.decisions import ErpHeaderSpec, ErpLineSpec
from services.order_sync.domain.erp_orders import (
    ERP_LINE_TABLE,
    ERP_ORDER_TABLE,
    ORIGIN_AMBIDEX,
)
from services.shared.changes import ChangeEvent, ChangeOp
from services.shared.source_records.erp import ErpOrderState

#: What :func:`is_echo` expects order-sync to have recorded for a row it deleted.
ROW_DELETED = "deleted"


#: Columns of ERP rows that order-sync writes (what a fingerprint covers).
SYNC_OWNED_COLUMNS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    ERP_ORDER_TABLE: ("customer_id", "currency_code", "requested_date", "warehouse_id",
                      "origin", "crm_order_id", "crm_order_version", "client_order_ref",
                      "amount_total"),
    ERP_LINE_TABLE: ("order_id", "line_no", "item_id", "quantity", "unit_price",
                     "discount_pct"),
})
#: Columns only the ERP (its users and processes) changes.
ERP_OWNED_COLUMNS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    ERP_ORDER_TABLE: ("state", "name"),
    ERP_LINE_TABLE: ("qty_reserved", "qty_delivered", "qty_invoiced"),
})


def _canonical(value: Any) -> Any:
    if isinstance(value, Decimal):
        if not value.is_finite():
            return str(value)
        text = format(value.normalize(), "f")  # 5 == 5.000 == 5.00
        return text
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):
        return value.strip()
    return value


def row_fingerprint(table: str, row: Mapping[str, Any]) -> str:
    """Fingerprint of the order-sync-owned columns of an ERP ``sales_order`` or
    ``sales_order_line`` row; for a header it also covers whether it is cancelled (the
    one state change order-sync makes). Equal for equal values whatever the Decimal
    scale or char padding, so the shell's written row and the CDC image match."""
    try:
        columns = SYNC_OWNED_COLUMNS[table]
    except KeyError:
        raise ValueError(f"order-sync writes no {table!r} rows") from None
    document: dict[str, Any] = {name: _canonical(row.get(name)) for name in columns}
    if table == ERP_ORDER_TABLE:
        document["cancelled"] = row.get("state") == ErpOrderState.CANCELLED
    text = orjson.dumps([table, document], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(text).hexdigest()


def header_row(
    header: ErpHeaderSpec, customer_id: int, *, cancelled: bool = False
) -> dict[str, Any]:
    """The ``erp.sales_order`` column values of a header spec (customer resolved)."""
    return {
        "customer_id": customer_id,
        "currency_code": header.currency,
        "requested_date": header.requested_date,
        "warehouse_id": header.warehouse_id,
        "origin": header.origin,
        "crm_order_id": header.crm_order_id,
        "crm_order_version": header.crm_order_version,
        "client_order_ref": header.client_order_ref,
        "amount_total": header.amount_total.amount,
        "state": ErpOrderState.CANCELLED if cancelled else header.state,
    }


def line_row(line: ErpLineSpec, erp_order_id: int) -> dict[str, Any]:
    """The ``erp.sales_order_line`` column values of a line spec."""
    return {
        "order_id": erp_order_id,
        "line_no": line.line_no,
        "item_id": line.item_id,
        "quantity": line.quantity,
        "unit_price": line.unit_price.amount,
        "discount_pct": line.discount_pct,
    }


def _erp_owned_changed(table: str, before: Mapping[str, Any], after: Mapping[str, Any]) -> bool:
    for name in ERP_OWNED_COLUMNS[table]:
        old, new = before.get(name), after.get(name)
        if old == new:
            continue
        if table == ERP_ORDER_TABLE and name == "state" and new == ErpOrderState.CANCELLED:
            continue  # the fingerprint says whether order-sync cancelled it
        return True
    return False


def is_echo(
    change: ChangeEvent, last_written: str | None, *, fingerprint: str | None = None
) -> bool:
    """True iff this ERP change carries nothing but order-sync's own write.

    ``last_written`` is what order-sync recorded for that row before writing it: the
    :func:`row_fingerprint` of the row as written, :data:`ROW_DELETED`, or None if it
    never wrote the row. Only meaningful for rows of ``ambidex`` orders.
    ``fingerprint`` is the change's own :func:`row_fingerprint` when the caller has it.
    """
    if change.table not in SYNC_OWNED_COLUMNS or last_written is None:
        return False
    if change.op is ChangeOp.TRUNCATE:
        return False
    if change.is_delete:
        return last_written == ROW_DELETED
    after = change.after
    if after is None:
        return False
    if (fingerprint or row_fingerprint(change.table, after)) != last_written:
        return False
    if change.before is None:
        return True  # an insert with exactly what order-sync wrote
    return not _erp_owned_changed(change.table, change.before, after)


def is_ambidex_order(row: Mapping[str, Any]) -> bool:
    """An ``erp.sales_order`` row order-sync owns (created from a CRM order)."""
    return row.get("origin") == ORIGIN_AMBIDEX and row.get("crm_order_id") is not None

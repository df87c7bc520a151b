"""What a rejected CRM transaction means to the people who entered it.

A CRM source transaction with a member that cannot be read (e.g. a line whose unit
price is NaN), or one given up for another reason by the shared holder (incomplete
beyond the hold bound, inconsistent, too large to hold: :mod:`services.shared.holding`)
is rejected whole
(nothing of it reaches the ERP, every record of it goes to the dead letters). Every
CRM order it touched is then marked ``rejected`` in ``crm_integration.order_sync_status``
with a reason a salesperson can act on — "line 2: unit price is not a number (NaN)" —
rather than a decoder message; the technical reason stays in the dead letters.

Pure: plain functions over decoded events and :class:`UndecodedChange` records.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from services.order_sync.domain.crm_orders import (
    CRM_ACCOUNT_TABLE,
    CRM_LINE_TABLE,
    CRM_ORDER_TABLE,
    CRM_PRODUCT_TABLE,
)
from services.order_sync.domain.folding import order_ids_of
from services.shared.changes import ChangeEvent, UndecodedChange
from services.shared.errors import BadInput
from services.shared.holding import GivenUp, GiveUpCause
from services.shared.transactions import CompleteTransaction


@dataclass(frozen=True, slots=True)
class Rejection:
    """Per CRM order touched: its version (if the transaction carried the header) and
    the reason to show; ``accounts``: CRM accounts whose change was not synced, with
    the reason (reported in the log and the dead letters; accounts have no status)."""

    orders: Mapping[int, tuple[int | None, str]]
    accounts: Mapping[int, str]


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _words(column: str) -> str:
    return column.replace("_", " ")


def describe_defect(defect: UndecodedChange) -> str:
    """One change that could not be read, in business words."""
    row = defect.row or {}
    what = (
        f"{_words(defect.column)} {defect.problem}"
        if defect.column is not None and defect.problem is not None
        else "could not be read"
    )
    if defect.table == CRM_LINE_TABLE:
        line_no = _int(row.get("line_no"))
        return f"line {line_no}: {what}" if line_no is not None else f"a line: {what}"
    if defect.table == CRM_ORDER_TABLE:
        return f"order: {what}"
    if defect.table == CRM_ACCOUNT_TABLE:
        account = _int(row.get("id"))
        return f"account {account}: {what}" if account is not None else f"account: {what}"
    if defect.table == CRM_PRODUCT_TABLE:
        sku = row.get("sku")
        return f"product {sku}: {what}" if isinstance(sku, str) else f"product: {what}"
    return f"{defect.table}: {what}"


def _defect_orders(defect: UndecodedChange) -> set[int]:
    row = defect.row or {}
    key = "id" if defect.table == CRM_ORDER_TABLE else "order_id"
    if defect.table not in (CRM_ORDER_TABLE, CRM_LINE_TABLE):
        return set()
    order_id = _int(row.get(key))
    return set() if order_id is None else {order_id}


def _event_orders(event: ChangeEvent) -> set[int]:
    if event.table not in (CRM_ORDER_TABLE, CRM_LINE_TABLE):
        return set()
    try:
        return set(order_ids_of(event))
    except BadInput:
        return set()


def _versions(events: Iterable[ChangeEvent], defects: Iterable[UndecodedChange]) -> dict[int, int]:
    versions: dict[int, int] = {}
    for event in events:
        if event.table == CRM_ORDER_TABLE and event.after is not None:
            order_id, version = _int(event.key.get("id")), _int(event.after.get("version"))
            if order_id is not None and version is not None:
                versions[order_id] = version
    for defect in defects:
        if defect.table == CRM_ORDER_TABLE and defect.row is not None:
            order_id, version = _int(defect.row.get("id")), _int(defect.row.get("version"))
            if order_id is not None and version is not None:
                versions.setdefault(order_id, version)
    return versions


def rejection_of(
    transaction: CompleteTransaction | None,
    events: Iterable[ChangeEvent] = (),
    defects: Iterable[UndecodedChange] = (),
    *,
    general: str | None = None,
) -> Rejection:
    """The orders (and accounts) a rejected transaction touched, each with the reason
    to report. ``general`` is the reason when there is no defect to name (a transaction
    given up incomplete); otherwise an order's own defects come first and an order
    whose rows were all readable is told what else in the same change was not."""
    all_events = list(events) + (list(transaction.events) if transaction else [])
    all_defects = list(defects) + (list(transaction.defects) if transaction else [])
    own: dict[int, list[str]] = {}
    touched: set[int] = set()
    for event in all_events:
        touched |= _event_orders(event)
    for defect in all_defects:
        for order_id in _defect_orders(defect):
            own.setdefault(order_id, []).append(describe_defect(defect))
            touched.add(order_id)
    described = [describe_defect(d) for d in all_defects]
    versions = _versions(all_events, all_defects)
    orders: dict[int, tuple[int | None, str]] = {}
    for order_id in sorted(touched):
        if order_id in own:
            reason = "not synced: " + "; ".join(own[order_id])
        elif described:
            reason = "not synced: saved in the same CRM change as data that cannot be read (" \
                + "; ".join(described) + ")"
        else:
            reason = "not synced: " + (general or "the change could not be read completely")
        orders[order_id] = (versions.get(order_id), reason)
    accounts: dict[int, str] = {}
    for defect in all_defects:
        if defect.table == CRM_ACCOUNT_TABLE and defect.row is not None:
            account = _int(defect.row.get("id"))
            if account is not None:
                accounts[account] = describe_defect(defect)
    for event in all_events:
        account = _int(event.key.get("id")) if event.table == CRM_ACCOUNT_TABLE else None
        if account is not None and account not in accounts:
            accounts[account] = general or "; ".join(described) or "rejected"
    return Rejection(orders, accounts)


#: what a salesperson is told when a transaction was given up without a defect to name
GIVEN_UP_REASONS = {
    GiveUpCause.INCOMPLETE: "the change could not be read completely from the CRM",
    GiveUpCause.INCONSISTENT: "the change could not be read completely from the CRM",
    GiveUpCause.OVERFLOW: "the change was too large to sync",
}


def rejection_of_given_up(given_up: GivenUp) -> Rejection:
    """The orders (and accounts) of a transaction the shared holder gave up."""
    return rejection_of(
        None, given_up.events, given_up.defects, general=GIVEN_UP_REASONS.get(given_up.cause)
    )

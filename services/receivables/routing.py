"""receivables' router policy: every change to the contract it belongs to (issue 16).

Scale-out (``docs/adr/0003-scale-out.md``, "Step 5: receivables"): the state is
partitioned by **contract**, the key a contract's figures, slots, plan and most
discrepancies are about. :func:`route_key` is the kit router's ``route_key``
(:mod:`services.shared.routing`):

* ``crm.contract``: its own id. A contract never changes key.
* ``crm.installment``: its ``contract_id``; an installment moved to another contract
  leaves the old one (its worker gets a delete of it).
* ``erp.invoice``: its ``crm_contract_id``, or, billing no contract (a sales order's
  invoice), the invoice itself. An invoice moved to another contract leaves the old one
  with its payments and brings them to the new one: the router keeps each payment's
  latest version under its invoice (a subscription), so the new contract's worker gets
  payments it never saw and the old one keeps none (were one to stay, it would count
  again, wrongly, should the invoice come back after the payment moved on). A deleted
  invoice's payments leave its key the same way and come back with it.
* ``erp.payment``: where its invoice is; a payment of no invoice is its own key (the
  ``payment_without_invoice`` discrepancy); a payment whose invoice the router has not
  seen yet goes nowhere but its subscription and comes with the invoice (the single
  process counts it only from then on too).

The key map (ids only): installment -> key, invoice -> key, payment -> invoice. Every
row is typed with :func:`services.receivables.records.parse` here: a bad row rejects its
transaction whole at the router, so no worker ever applies a part of a transaction
another worker refused.
"""

from __future__ import annotations

from services.receivables.records import Installment, Invoice, Payment, Table, parse
from services.shared.changes import ChangeEvent, ChangeOp
from services.shared.errors import BadInput
from services.shared.routing import Route
from services.shared.state.store import KeyValue

_INSTALLMENT, _INVOICE, _PAYMENT = b"i", b"v", b"p"
#: the key map's value for "a payment of no invoice"
_NO_INVOICE = b""


def contract_key(contract_id: int) -> bytes:
    return b"contract:%d" % contract_id


def invoice_key(invoice_id: int) -> bytes:
    """The key of an invoice that bills no contract."""
    return b"invoice:%d" % invoice_id


def payment_key(payment_id: int) -> bytes:
    """The key of a payment that names no invoice."""
    return b"payment:%d" % payment_id


def payments_of(invoice_id: int) -> bytes:
    """The subscription an invoice's payments are kept under."""
    return b"payments-of:%d" % invoice_id


def route_key(event: ChangeEvent, key_map: KeyValue) -> Route:
    """Where one change of a consumed table goes (see the module)."""
    table = Table(event.data_collection)
    row_id = event.key.get("id")
    if isinstance(row_id, bool) or not isinstance(row_id, int):
        raise BadInput(f"{table.value} key {event.key!r} has no integer id")
    record = parse(table, None if event.op is ChangeOp.DELETE else event.after)
    if table is Table.CONTRACT:
        return Route(keys=(contract_key(row_id),))
    if table is Table.INSTALLMENT:
        assert record is None or isinstance(record, Installment)
        new = None if record is None else contract_key(record.contract_id)
        return _moved(key_map, _INSTALLMENT + b"%d" % row_id, new)
    if table is Table.INVOICE:
        assert record is None or isinstance(record, Invoice)
        return _invoice(key_map, row_id, record)
    assert record is None or isinstance(record, Payment)
    return _payment(key_map, row_id, record)


def _moved(key_map: KeyValue, entry: bytes, new: bytes | None) -> Route:
    """A row whose key is ``new`` now (None: deleted), and was the key map's ``entry``."""
    old = key_map.get(entry)
    if new is None:
        key_map.delete(entry)
        return Route(keys=() if old is None else (old,))
    key_map.put(entry, new)
    return Route(keys=(new,), leaves=() if old is None or old == new else (old,))


def _invoice(key_map: KeyValue, invoice_id: int, record: Invoice | None) -> Route:
    entry = _INVOICE + b"%d" % invoice_id
    old = key_map.get(entry)
    if record is None:
        new = None
    elif record.contract_id is None:
        new = invoice_key(invoice_id)
    else:
        new = contract_key(record.contract_id)
    route = _moved(key_map, entry, new)
    payments = payments_of(invoice_id)
    if new is None:
        # deleted: its payments leave with it (the router keeps them; they come back
        # with the invoice, wherever it is then)
        return Route(route.keys, takes=() if old is None else ((payments, old),))
    if new == old:
        return route
    # first seen or moved: its payments (kept by the router) leave the key it was at
    # with it and come to the key it is at now
    return Route(route.keys, route.leaves, brings=((payments, new),),
                 takes=() if old is None else ((payments, old),))


def _payment(key_map: KeyValue, payment_id: int, record: Payment | None) -> Route:
    entry = _PAYMENT + b"%d" % payment_id
    before = key_map.get(entry)
    old_invoice = None if not before else int(before)
    old_key = None if before is None else _payment_at(key_map, payment_id, old_invoice)
    if record is None:
        key_map.delete(entry)
        return Route(keys=() if old_key is None else (old_key,),
                     unfollows=None if old_invoice is None else payments_of(old_invoice))
    invoice = record.invoice_id
    key_map.put(entry, _NO_INVOICE if invoice is None else b"%d" % invoice)
    new_key = _payment_at(key_map, payment_id, invoice)
    return Route(
        keys=() if new_key is None else (new_key,),
        leaves=() if old_key is None or old_key == new_key else (old_key,),
        follows=None if invoice is None else payments_of(invoice),
        unfollows=None if old_invoice is None else payments_of(old_invoice),
    )


def _payment_at(key_map: KeyValue, payment_id: int, invoice_id: int | None) -> bytes | None:
    """Where a payment of ``invoice_id`` is: its invoice's key (None: not seen yet)."""
    if invoice_id is None:
        return payment_key(payment_id)
    return key_map.get(_INVOICE + b"%d" % invoice_id)


__all__ = ["contract_key", "invoice_key", "payment_key", "payments_of", "route_key"]

"""How receivables' state entries are written as bytes (pure; JSON via orjson, money
as decimal text, dates as ordinals, ids in keys as 8-byte big-endian so key order is
numeric order)."""

from __future__ import annotations

import struct
from datetime import date
from decimal import Decimal
from typing import Any

import orjson

from services.receivables.records import (
    Contract,
    ContractState,
    Installment,
    Invoice,
    InvoiceState,
    Payment,
    Record,
    Table,
)
from services.receivables.rules import (
    BilledInvoice,
    ContractPosition,
    CustomerPosition,
    Discrepancy,
    Kind,
    PlannedInstallment,
    SlotFacts,
    Sums,
)

_id = struct.Struct(">q").pack
_slot = struct.Struct(">qi").pack
_day = struct.Struct(">i").pack

TABLE_CODES = {Table.CONTRACT: b"c", Table.INSTALLMENT: b"l", Table.INVOICE: b"i",
               Table.PAYMENT: b"p"}


def day(d: date) -> bytes:
    return _day(d.toordinal())


def row_key(table: Table, row_id: int) -> bytes:
    return b"R" + TABLE_CODES[table] + _id(row_id)


def slot_key(contract_id: int, seq: int) -> bytes:
    return b"S" + _slot(contract_id, seq)


def payments_key(invoice_id: int) -> bytes:
    return b"Y" + _id(invoice_id)


def sums_key(contract_id: int) -> bytes:
    return b"A" + _id(contract_id)


def dated_prefix(contract_id: int) -> bytes:
    return b"D" + _id(contract_id)


def dated_key(contract_id: int, due: date) -> bytes:
    return dated_prefix(contract_id) + day(due)


def calendar_key(due: date, contract_id: int) -> bytes:
    return b"G" + day(due) + _id(contract_id)


def short_key(due: date, invoice_id: int) -> bytes:
    return b"H" + day(due) + _id(invoice_id)


def uninvoiced_prefix(contract_id: int) -> bytes:
    return b"N" + _id(contract_id)


def uninvoiced_key(contract_id: int, seq: int) -> bytes:
    return b"N" + _slot(contract_id, seq)


def position_key(contract_id: int) -> bytes:
    return b"P" + _id(contract_id)


def customer_key(account_id: int, currency: str) -> bytes:
    return b"C" + _id(account_id) + currency.encode()


def customer_position_key(account_id: int, currency: str) -> bytes:
    return b"K" + _id(account_id) + currency.encode()


#: a customer's amounts next due per date (:mod:`.due_days`)
DUE_DAY = b"W"


def due_day_prefix(account_id: int, currency: str) -> bytes:
    return DUE_DAY + _id(account_id) + currency.encode()


def due_day_key(account_id: int, currency: str, due: date) -> bytes:
    return due_day_prefix(account_id, currency) + day(due)


def open_key(identity: str) -> bytes:
    return b"O" + identity.encode()


def bad_payment_prefix(invoice_id: int) -> bytes:
    return b"B" + _id(invoice_id)


def bad_payment_key(invoice_id: int, payment_id: int) -> bytes:
    return bad_payment_prefix(invoice_id) + _id(payment_id)


def incomplete_key(contract_id: int) -> bytes:
    return b"X" + _id(contract_id)


META = b"M"


def decode_int(raw: bytes) -> int:
    return int.from_bytes(raw, "big", signed=True)


def decode_day(raw: bytes) -> date:
    return date.fromordinal(int.from_bytes(raw, "big", signed=True))


def _d(d: date | None) -> int | None:
    return None if d is None else d.toordinal()


def _u(n: int | None) -> date | None:
    return None if n is None else date.fromordinal(n)


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


def loads(raw: bytes) -> Any:
    return orjson.loads(raw)


# ---------------------------------------------------------------- rows


def encode_record(record: Record | None) -> Any:
    if record is None:
        return None
    if isinstance(record, Contract):
        return [record.id, record.number, record.account_id, record.state.value,
                record.currency, str(record.total), _d(record.start_date)]
    if isinstance(record, Installment):
        return [record.id, record.contract_id, record.seq, _d(record.due_date),
                str(record.amount), record.currency, record.waived]
    if isinstance(record, Invoice):
        return [record.id, record.name, record.customer_id, record.contract_id, record.seq,
                record.state.value, record.currency, str(record.total), str(record.residual),
                _d(record.due_date)]
    return [record.id, record.reference, record.customer_id, record.invoice_id,
            str(record.amount), record.currency, record.posted, _d(record.paid_on)]


def decode_record(table: Table, data: Any) -> Record | None:
    if data is None:
        return None
    if table is Table.CONTRACT:
        return Contract(data[0], data[1], data[2], ContractState(data[3]), data[4],
                        Decimal(data[5]), date.fromordinal(data[6]))
    if table is Table.INSTALLMENT:
        return Installment(data[0], data[1], data[2], date.fromordinal(data[3]),
                           Decimal(data[4]), data[5], data[6])
    if table is Table.INVOICE:
        return Invoice(data[0], data[1], data[2], data[3], data[4], InvoiceState(data[5]),
                       data[6], Decimal(data[7]), Decimal(data[8]), _u(data[9]))
    return Payment(data[0], data[1], data[2], data[3], Decimal(data[4]), data[5], data[6],
                   _u(data[7]))


# ---------------------------------------------------------------- derived


def encode_sums(s: Sums) -> list[Any]:
    return [s.entries, s.invoices, s.installments, str(s.scheduled), str(s.invoiced),
            str(s.paid), str(s.outstanding), *(str(a) for a in s.aging)]


def decode_sums(data: list[Any]) -> Sums:
    return Sums(data[0], data[1], data[2], Decimal(data[3]), Decimal(data[4]),
                Decimal(data[5]), Decimal(data[6]),
                (Decimal(data[7]), Decimal(data[8]), Decimal(data[9]), Decimal(data[10])))


def encode_slot(facts: SlotFacts) -> bytes:
    return dumps({
        "i": [[i.id, _d(i.due_date), str(i.amount), i.currency, i.waived]
              for i in facts.installments],
        "v": [[v.id, v.currency, str(v.total), v.billed, v.cancelled,
               [[c, str(a)] for c, a in v.paid], _d(v.last_paid_on)] for v in facts.invoices],
    })


def decode_slot(raw: bytes | None) -> SlotFacts:
    if raw is None:
        return SlotFacts()
    data = loads(raw)
    return SlotFacts(
        tuple(PlannedInstallment(i[0], date.fromordinal(i[1]), Decimal(i[2]), i[3], i[4])
              for i in data["i"]),
        tuple(BilledInvoice(v[0], v[1], Decimal(v[2]), v[3], v[4],
                            tuple((c, Decimal(a)) for c, a in v[5]), _u(v[6]))
              for v in data["v"]),
    )


def encode_contract_position(p: ContractPosition) -> bytes:
    return dumps([p.contract_id, p.number, p.account_id, p.state, p.currency,
                  str(p.contracted), p.installments, str(p.scheduled), str(p.invoiced),
                  str(p.paid), str(p.outstanding), str(p.overdue), [str(a) for a in p.aging],
                  _d(p.next_due_date),
                  None if p.next_due_amount is None else str(p.next_due_amount),
                  list(p.incomplete)])


def decode_contract_position(raw: bytes | None) -> ContractPosition | None:
    if raw is None:
        return None
    d = loads(raw)
    a = [Decimal(x) for x in d[12]]
    return ContractPosition(d[0], d[1], d[2], d[3], d[4], Decimal(d[5]), d[6], Decimal(d[7]),
                            Decimal(d[8]), Decimal(d[9]), Decimal(d[10]), Decimal(d[11]),
                            (a[0], a[1], a[2], a[3]), _u(d[13]),
                            None if d[14] is None else Decimal(d[14]), tuple(d[15]))


def encode_customer_position(p: CustomerPosition) -> bytes:
    return dumps([p.account_id, p.currency, p.contracts, str(p.contracted), str(p.scheduled),
                  str(p.invoiced), str(p.paid), str(p.outstanding), str(p.overdue),
                  [str(a) for a in p.aging], _d(p.next_due_date),
                  None if p.next_due_amount is None else str(p.next_due_amount)])


def decode_customer_position(raw: bytes | None) -> CustomerPosition | None:
    if raw is None:
        return None
    d = loads(raw)
    a = [Decimal(x) for x in d[9]]
    return CustomerPosition(d[0], d[1], d[2], Decimal(d[3]), Decimal(d[4]), Decimal(d[5]),
                            Decimal(d[6]), Decimal(d[7]), Decimal(d[8]), (a[0], a[1], a[2], a[3]),
                            _u(d[10]), None if d[11] is None else Decimal(d[11]))


def _amount(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def encode_discrepancy(d: Discrepancy) -> bytes:
    return dumps([d.identity, d.kind.value, d.reason, d.currency, _amount(d.crm_amount),
                  _amount(d.erp_amount), d.contract_id, d.installment_seq, d.crm_installment_id,
                  list(d.erp_invoice_ids), list(d.erp_payment_ids), d.erp_customer_id,
                  _d(d.due_date)])


def decode_discrepancy(raw: bytes | None) -> Discrepancy | None:
    if raw is None:
        return None
    d = loads(raw)
    return Discrepancy(d[0], Kind(d[1]), d[2], d[3], None if d[4] is None else Decimal(d[4]),
                       None if d[5] is None else Decimal(d[5]), d[6], d[7], d[8],
                       tuple(d[9]), tuple(d[10]), d[11], _u(d[12]))

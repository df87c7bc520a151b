"""The source rows receivables reads, as typed records (pure).

Four captured tables (see ``deploy/sql/crm/010_crm_tables.sql`` and
``deploy/sql/erp/010_erp_tables.sql``):

* ``crm.contract``: the contracted total, its currency, its state and its customer
  (``account_id``);
* ``crm.installment``: one due date and amount of a contract's plan, by ``seq``;
* ``erp.invoice``: names the installment it bills by ``(crm_contract_id,
  installment_seq)`` (both NULL for an invoice of a sales order, which receivables
  does not reconcile); ``amount_total`` is what it bills;
* ``erp.payment``: money received against ``invoice_id`` (NULL: unallocated).

The ``from_row`` parsers take a decoded change's row (``Decimal``, ``date``, ``int``,
``str`` values, see :mod:`services.shared.changes`) and refuse what cannot be reconciled
(NaN or negative money, a currency that is not an ISO code, a non-positive ``seq``) with
:class:`BadRow`, before anything is folded: the shell dead-letters the row and marks
its contract incomplete.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date
from decimal import Decimal
from enum import StrEnum
from typing import Any

from services.shared import rows
from services.shared.errors import BadInput
from services.shared.rows import BadColumn, Sign

CENT = Decimal("0.01")
ZERO = Decimal("0.00")


class Table(StrEnum):
    CONTRACT = "crm.contract"
    INSTALLMENT = "crm.installment"
    INVOICE = "erp.invoice"
    PAYMENT = "erp.payment"


class BadRow(BadInput):
    """A source row receivables cannot reconcile (the reason names the column)."""


_T = "receivables"  # a BadColumn's table; the reason of a BadRow names the column only


@contextmanager
def _bad_row() -> Iterator[None]:
    """A bad column (:mod:`services.shared.rows`, the one reading rule set) as a
    :class:`BadRow` naming the column; the fold names the table and row."""
    try:
        yield
    except BadColumn as error:
        raise BadRow(f"{error.column} {error.problem}") from None


def _field(row: Mapping[str, Any], name: str) -> Any:
    if name not in row:
        raise BadRow(f"{name} is missing (the row has no column of that name)")
    return row[name]


# The readers below raise the shared rules' BadColumn; each ``from_row`` turns it into a
# BadRow once for the whole row (a context per column was a tenth of a replay's fold).


def _int(row: Mapping[str, Any], name: str, *, optional: bool = False) -> int | None:
    return rows.optional_int(row, name, _T) if optional else rows.required_int(row, name, _T)


def _id(row: Mapping[str, Any], name: str) -> int:
    return rows.required_int(row, name, _T)


def _text(row: Mapping[str, Any], name: str) -> str:
    return rows.text(row, name, _T)


def _currency(row: Mapping[str, Any]) -> str:
    return rows.currency(row, "currency_code", _T)


def _money(value: Any, name: str, *, positive: bool = False) -> Decimal:
    """A money column as an exact Decimal of cents (:func:`services.shared.rows.amount`);
    NaN, infinities, fractions of a cent and negative amounts are bad input
    (``positive``: zero too)."""
    return rows.amount(value, name, _T, sign=Sign.POSITIVE if positive else Sign.NON_NEGATIVE)


def _date(row: Mapping[str, Any], name: str, *, optional: bool = False) -> date | None:
    return rows.optional_day(row, name, _T) if optional else rows.day(row, name, _T)


class ContractState(StrEnum):
    DRAFT = "draft"
    ACTIVE = "active"
    COMPLETED = "completed"
    TERMINATED = "terminated"


class InvoiceState(StrEnum):
    DRAFT = "draft"
    POSTED = "posted"
    PAID = "paid"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class Contract:
    id: int
    number: str
    account_id: int
    state: ContractState
    currency: str
    total: Decimal
    start_date: date

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Contract:
        with _bad_row():
            return cls._read(row)

    @classmethod
    def _read(cls, row: Mapping[str, Any]) -> Contract:
        state = _text(row, "state")
        if state not in ContractState.__members__.values():
            raise BadRow(f"state {state!r} is not a contract state")
        start = _date(row, "start_date")
        assert start is not None
        return cls(_id(row, "id"), _text(row, "number"), _id(row, "account_id"),
                   ContractState(state), _currency(row),
                   _money(_field(row, "total_amount"), "total_amount"), start)


@dataclass(frozen=True, slots=True)
class Installment:
    id: int
    contract_id: int
    seq: int
    due_date: date
    amount: Decimal
    currency: str
    waived: bool

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Installment:
        with _bad_row():
            return cls._read(row)

    @classmethod
    def _read(cls, row: Mapping[str, Any]) -> Installment:
        seq = _id(row, "seq")
        if seq <= 0:
            raise BadRow(f"seq is {seq}: installments are numbered from 1")
        due = _date(row, "due_date")
        assert due is not None
        return cls(_id(row, "id"), _id(row, "contract_id"), seq, due,
                   _money(_field(row, "amount"), "amount"), _currency(row),
                   _text(row, "state") == "waived")


@dataclass(frozen=True, slots=True)
class Invoice:
    id: int
    name: str
    customer_id: int
    contract_id: int | None
    seq: int | None
    state: InvoiceState
    currency: str
    total: Decimal
    residual: Decimal
    due_date: date | None

    @property
    def billed(self) -> bool:
        """Issued to the customer: posted or paid (a draft is not, a cancelled no longer)."""
        return self.state in (InvoiceState.POSTED, InvoiceState.PAID)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Invoice:
        with _bad_row():
            return cls._read(row)

    @classmethod
    def _read(cls, row: Mapping[str, Any]) -> Invoice:
        state = _text(row, "state")
        if state not in InvoiceState.__members__.values():
            raise BadRow(f"state {state!r} is not an invoice state")
        contract_id = _int(row, "crm_contract_id", optional=True)
        seq = _int(row, "installment_seq", optional=True)
        if (contract_id is None) != (seq is None):
            raise BadRow("crm_contract_id and installment_seq are set together or not at all")
        if seq is not None and seq <= 0:
            raise BadRow(f"installment_seq is {seq}: installments are numbered from 1")
        return cls(_id(row, "id"), _text(row, "name"), _id(row, "customer_id"), contract_id,
                   seq, InvoiceState(state), _currency(row),
                   _money(_field(row, "amount_total"), "amount_total"),
                   _money(_field(row, "amount_residual"), "amount_residual"),
                   _date(row, "due_date", optional=True))


@dataclass(frozen=True, slots=True)
class Payment:
    id: int
    reference: str
    customer_id: int
    invoice_id: int | None
    amount: Decimal
    currency: str
    posted: bool
    paid_on: date | None = None
    """The day (UTC) of ``paid_at``."""

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Payment:
        with _bad_row():
            return cls._read(row)

    @classmethod
    def _read(cls, row: Mapping[str, Any]) -> Payment:
        paid_at = rows.optional_instant(row, "paid_at", _T)
        return cls(_id(row, "id"), _text(row, "reference"), _id(row, "customer_id"),
                   _int(row, "invoice_id", optional=True),
                   _money(_field(row, "amount"), "amount", positive=True), _currency(row),
                   _text(row, "state") == "posted",
                   None if paid_at is None else paid_at.astimezone(UTC).date())


Record = Contract | Installment | Invoice | Payment

PARSERS: dict[Table, Any] = {
    Table.CONTRACT: Contract.from_row,
    Table.INSTALLMENT: Installment.from_row,
    Table.INVOICE: Invoice.from_row,
    Table.PAYMENT: Payment.from_row,
}


def parse(table: Table, row: Mapping[str, Any] | None) -> Record | None:
    """The typed record of one row version (None: the row is deleted)."""
    if row is None:
        return None
    record: Record = PARSERS[table](row)
    return record

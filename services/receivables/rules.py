"""The rules of receivables, as pure functions shared by the fold and the recomputation.

Vocabulary (finance's words; DESIGN.md pain 3):

* a **slot** is one installment of one contract, ``(contract id, seq)``: the CRM's
  installment with that number (if any) and every ERP invoice naming it (with the
  payments received against each invoice);
* **scheduled**: the installment's amount; **invoiced**: the total of its billed
  (posted or paid) invoices; **paid**: the posted payments against its invoices
  (whatever the invoice's state: money received is received);
* **due** is what the customer owes for the slot: the scheduled amount (nothing when
  the installment is waived), or, for invoices naming an installment the CRM does not
  have, what they bill; **outstanding** = due - paid, never below zero (an
  overpayment is a discrepancy, not a negative debt);
* **overdue**: the outstanding of an installment whose due date is before the as-of
  date, in an **aging bucket** by days past due: 1-30, 31-60, 61-90, over 90;
* **next due**: the first installment due on or after the as-of date with something
  outstanding, and that amount.

No conversion between currencies, ever: every figure is kept per currency; a
contract's position is the figures in the contract's currency, and any amount in
another currency is a ``currency_mismatch`` discrepancy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from enum import StrEnum

from services.receivables.records import ZERO, ContractState

#: aging buckets by days past due (1-30, 31-60, 61-90, over 90); index = bucket number
BUCKETS = ("0-30", "31-60", "61-90", "90+")
#: the days past due at which an amount moves to the next bucket
BUCKET_LIMITS = (0, 30, 60, 90)


def days_past_due(due: date, as_of: date) -> int:
    return (as_of - due).days


def bucket_of(due: date, as_of: date) -> int | None:
    """Aging bucket index of an amount due on ``due``; None: not overdue yet."""
    days = days_past_due(due, as_of)
    if days <= 0:
        return None
    if days <= 30:
        return 0
    if days <= 60:
        return 1
    return 2 if days <= 90 else 3


@dataclass(frozen=True, slots=True)
class Rules:
    """Settings of the rules. ``grace_days``: how long past its due date an installment
    may stay without an invoice, and a posted invoice partly paid, before it is a
    discrepancy."""

    grace_days: int = 5

    def crossings(self) -> tuple[int, ...]:
        """Days past due at which a figure or a verdict changes (the fold re-evaluates
        what crosses one of them when the as-of date advances)."""
        return tuple(sorted({*BUCKET_LIMITS, self.grace_days}))


# ---------------------------------------------------------------- slot facts


@dataclass(frozen=True, slots=True)
class PlannedInstallment:
    """A CRM installment's part of its slot."""

    id: int
    due_date: date
    amount: Decimal
    currency: str
    waived: bool


@dataclass(frozen=True, slots=True)
class BilledInvoice:
    """An ERP invoice's part of its slot: what it bills and what was paid against it."""

    id: int
    currency: str
    total: Decimal
    billed: bool
    cancelled: bool
    paid: tuple[tuple[str, Decimal], ...] = ()
    """Posted payments per currency, sorted by currency."""
    last_paid_on: date | None = None


@dataclass(frozen=True, slots=True)
class SlotFacts:
    installments: tuple[PlannedInstallment, ...] = ()
    """By id."""
    invoices: tuple[BilledInvoice, ...] = ()
    """By id."""

    @property
    def installment(self) -> PlannedInstallment | None:
        """The slot's installment. ``UNIQUE (contract_id, seq)`` makes it one; while
        two rows' changes cross (a renumbering) the lowest id stands for the slot."""
        return self.installments[0] if self.installments else None

    @property
    def empty(self) -> bool:
        return not self.installments and not self.invoices

    @property
    def has_billed(self) -> bool:
        return any(i.billed for i in self.invoices)


@dataclass(frozen=True, slots=True)
class Sums:
    """Figures in one currency (of a slot, a contract or a customer)."""

    entries: int = 0
    """Rows counted in this currency (installments, invoices, payment sums)."""
    invoices: int = 0
    """Invoices billed or paid against in this currency."""
    installments: int = 0
    scheduled: Decimal = ZERO
    invoiced: Decimal = ZERO
    paid: Decimal = ZERO
    outstanding: Decimal = ZERO
    aging: tuple[Decimal, Decimal, Decimal, Decimal] = (ZERO, ZERO, ZERO, ZERO)

    @property
    def overdue(self) -> Decimal:
        return sum(self.aging, ZERO)

    def plus(self, other: Sums, sign: int = 1) -> Sums:
        if sign < 0:
            return Sums(
                self.entries - other.entries, self.invoices - other.invoices,
                self.installments - other.installments, self.scheduled - other.scheduled,
                self.invoiced - other.invoiced, self.paid - other.paid,
                self.outstanding - other.outstanding,
                (self.aging[0] - other.aging[0], self.aging[1] - other.aging[1],
                 self.aging[2] - other.aging[2], self.aging[3] - other.aging[3]))
        return Sums(
            self.entries + other.entries, self.invoices + other.invoices,
            self.installments + other.installments, self.scheduled + other.scheduled,
            self.invoiced + other.invoiced, self.paid + other.paid,
            self.outstanding + other.outstanding,
            (self.aging[0] + other.aging[0], self.aging[1] + other.aging[1],
             self.aging[2] + other.aging[2], self.aging[3] + other.aging[3]))

    @property
    def is_zero(self) -> bool:
        return self == EMPTY


EMPTY = Sums()


def with_aging(sums: Sums, bucket: int | None) -> Sums:
    """``sums`` with its outstanding counted overdue in ``bucket`` (None: not overdue)."""
    if bucket is None or not sums.outstanding:
        return sums
    aging = [ZERO, ZERO, ZERO, ZERO]
    aging[bucket] = sums.outstanding
    return Sums(sums.entries, sums.invoices, sums.installments, sums.scheduled,
                sums.invoiced, sums.paid, sums.outstanding, (aging[0], aging[1], aging[2],
                                                             aging[3]))


def slot_sums(facts: SlotFacts) -> dict[str, Sums]:
    """A slot's figures per currency, WITHOUT aging (aging depends on the as-of date;
    :func:`slot_sums_as_of` adds it)."""
    scheduled: dict[str, Decimal] = {}
    invoiced: dict[str, Decimal] = {}
    paid: dict[str, Decimal] = {}
    entries: dict[str, int] = {}
    invoices: dict[str, int] = {}
    inst = facts.installment
    if inst is not None:
        scheduled[inst.currency] = inst.amount
        entries[inst.currency] = 1
    for inv in facts.invoices:
        touched = set()
        if inv.billed:
            invoiced[inv.currency] = invoiced.get(inv.currency, ZERO) + inv.total
            touched.add(inv.currency)
        for currency, amount in inv.paid:
            paid[currency] = paid.get(currency, ZERO) + amount
            touched.add(currency)
        for currency in touched:
            entries[currency] = entries.get(currency, 0) + 1
            invoices[currency] = invoices.get(currency, 0) + 1
    result: dict[str, Sums] = {}
    for currency in entries:
        if inst is None:
            due = invoiced.get(currency, ZERO)
        elif inst.waived:
            due = ZERO
        else:
            due = scheduled.get(currency, ZERO)
        got = paid.get(currency, ZERO)
        result[currency] = Sums(
            entries[currency], invoices.get(currency, 0),
            1 if inst is not None and inst.currency == currency else 0,
            scheduled.get(currency, ZERO), invoiced.get(currency, ZERO), got,
            max(due - got, ZERO),
        )
    return result


def slot_sums_as_of(facts: SlotFacts, as_of: date,
                    sums: dict[str, Sums] | None = None) -> dict[str, Sums]:
    """:func:`slot_sums` (or ``sums``, already computed) with the installment's
    outstanding aged as of ``as_of`` (only an installment has a due date; invoices
    without one are outstanding, not aged)."""
    sums = dict(slot_sums(facts) if sums is None else sums)
    inst = facts.installment
    if inst is not None and inst.currency in sums:
        sums[inst.currency] = with_aging(sums[inst.currency], bucket_of(inst.due_date, as_of))
    return sums


# ---------------------------------------------------------------- positions


@dataclass(frozen=True, slots=True)
class InstallmentPosition:
    """What a salesperson sees per installment: "paid on 12 Nov, 8,000 of 10,000"."""

    contract_id: int
    seq: int
    installment_id: int
    due_date: date
    currency: str
    scheduled: Decimal
    invoiced: Decimal
    paid: Decimal
    outstanding: Decimal
    overdue: Decimal
    aging_bucket: str | None
    waived: bool
    last_paid_on: date | None
    invoice_ids: tuple[int, ...]


def installment_position(contract_id: int, seq: int, facts: SlotFacts, as_of: date,
                         unaged: dict[str, Sums] | None = None, *,
                         aged: Mapping[str, Sums] | None = None) -> InstallmentPosition | None:
    """(``unaged``: the slot's :func:`slot_sums`, ``aged``: its :func:`slot_sums_as_of`,
    when already computed.)"""
    inst = facts.installment
    if inst is None:
        return None
    if aged is None:
        aged = slot_sums_as_of(facts, as_of, unaged)
    sums = aged.get(inst.currency, EMPTY)
    bucket = bucket_of(inst.due_date, as_of) if sums.outstanding else None
    paid_on = [i.last_paid_on for i in facts.invoices if i.last_paid_on is not None]
    return InstallmentPosition(
        contract_id, seq, inst.id, inst.due_date, inst.currency, sums.scheduled,
        sums.invoiced, sums.paid, sums.outstanding, sums.overdue,
        None if bucket is None else BUCKETS[bucket], inst.waived,
        max(paid_on) if paid_on else None, tuple(sorted(i.id for i in facts.invoices)),
    )


@dataclass(frozen=True, slots=True)
class ContractHeader:
    """What the slot and contract rules need of a ``crm.contract`` row."""

    number: str
    account_id: int
    state: ContractState
    currency: str
    total: Decimal


@dataclass(frozen=True, slots=True)
class ContractPosition:
    contract_id: int
    number: str
    account_id: int
    state: str
    currency: str
    contracted: Decimal
    installments: int
    scheduled: Decimal
    invoiced: Decimal
    paid: Decimal
    outstanding: Decimal
    overdue: Decimal
    aging: tuple[Decimal, Decimal, Decimal, Decimal]
    next_due_date: date | None
    next_due_amount: Decimal | None
    incomplete: tuple[str, ...] = ()
    """Why the figures may be missing rows (rows dead-lettered), empty when complete."""


def contract_position(contract_id: int, header: ContractHeader, sums: Sums,
                      next_due: tuple[date, Decimal] | None,
                      incomplete: Iterable[str] = ()) -> ContractPosition:
    return ContractPosition(
        contract_id, header.number, header.account_id, header.state.value, header.currency,
        header.total, sums.installments, sums.scheduled, sums.invoiced, sums.paid,
        sums.outstanding, sums.overdue, sums.aging,
        None if next_due is None else next_due[0], None if next_due is None else next_due[1],
        tuple(sorted(incomplete)),
    )


def customer_contribution(position: ContractPosition) -> Sums:
    """What one contract adds to its customer's figures (``installments`` holds the
    number of contracts, ``scheduled`` etc. their sums; ``invoices`` is unused)."""
    return Sums(1, 0, 1, position.scheduled, position.invoiced, position.paid,
                position.outstanding, position.aging)


@dataclass(frozen=True, slots=True)
class CustomerPosition:
    """A CRM account's figures in one currency, over its contracts in that currency."""

    account_id: int
    currency: str
    contracts: int
    contracted: Decimal
    scheduled: Decimal
    invoiced: Decimal
    paid: Decimal
    outstanding: Decimal
    overdue: Decimal
    aging: tuple[Decimal, Decimal, Decimal, Decimal]
    next_due_date: date | None
    next_due_amount: Decimal | None


def merge_customer_parts(parts: Iterable[CustomerPosition]) -> CustomerPosition:
    """One customer position from its parts: the same account and currency over disjoint
    sets of contracts (the shards of a scaled-out receivables, each over its own
    contracts). Every figure adds up; the next due date is the earliest, its amount what
    falls due on it in every part."""
    found = list(parts)
    if not found or len({(p.account_id, p.currency) for p in found}) != 1:
        raise ValueError("parts of one customer position: one account and currency")
    total = EMPTY
    for p in found:  # a part as the sums it was made of (customer_position)
        total = total.plus(Sums(installments=p.contracts, scheduled=p.scheduled,
                                invoiced=p.invoiced, paid=p.paid, outstanding=p.outstanding,
                                aging=p.aging))
    dates = [p.next_due_date for p in found if p.next_due_date is not None]
    next_due = None
    if dates:
        day = min(dates)
        next_due = (day, sum((p.next_due_amount or ZERO for p in found
                              if p.next_due_date == day), ZERO))
    merged = customer_position(found[0].account_id, found[0].currency, total,
                               sum((p.contracted for p in found), ZERO), next_due)
    assert merged is not None  # every part counts at least one installment
    return merged


def customer_position(account_id: int, currency: str, sums: Sums, contracted: Decimal,
                      next_due: tuple[date, Decimal] | None) -> CustomerPosition | None:
    if sums.installments <= 0:
        return None
    return CustomerPosition(
        account_id, currency, sums.installments, contracted, sums.scheduled, sums.invoiced,
        sums.paid, sums.outstanding, sums.overdue, sums.aging,
        None if next_due is None else next_due[0], None if next_due is None else next_due[1],
    )


# ---------------------------------------------------------------- discrepancies


class Kind(StrEnum):
    INSTALLMENT_NOT_INVOICED = "installment_not_invoiced"
    INVOICE_AMOUNT_MISMATCH = "invoice_amount_mismatch"
    UNKNOWN_INSTALLMENT = "unknown_installment"
    UNKNOWN_CONTRACT = "unknown_contract"
    INSTALLMENTS_TOTAL_MISMATCH = "installments_total_mismatch"
    CURRENCY_MISMATCH = "currency_mismatch"
    PAYMENT_SHORT = "payment_short"
    PAYMENT_OVER = "payment_over"
    PAYMENT_WITHOUT_INVOICE = "payment_without_invoice"
    INVOICE_CANCELLED_AFTER_PAYMENT = "invoice_cancelled_after_payment"
    TERMINATED_WITH_OUTSTANDING = "terminated_with_outstanding"


SLOT_KINDS = (Kind.INSTALLMENT_NOT_INVOICED, Kind.INVOICE_AMOUNT_MISMATCH,
              Kind.UNKNOWN_INSTALLMENT)
CONTRACT_KINDS = (Kind.UNKNOWN_CONTRACT, Kind.INSTALLMENTS_TOTAL_MISMATCH,
                  Kind.TERMINATED_WITH_OUTSTANDING)
INVOICE_KINDS = (Kind.PAYMENT_SHORT, Kind.PAYMENT_OVER, Kind.INVOICE_CANCELLED_AFTER_PAYMENT)


def slot_identity(kind: Kind, contract_id: int, seq: int) -> str:
    return f"{kind.value}/contract={contract_id}/seq={seq}"


def contract_identity(kind: Kind, contract_id: int) -> str:
    return f"{kind.value}/contract={contract_id}"


def currency_prefix(contract_id: int) -> str:
    return f"{Kind.CURRENCY_MISMATCH.value}/contract={contract_id}/"


def invoice_identity(kind: Kind, invoice_id: int) -> str:
    return f"{kind.value}/invoice={invoice_id}"


def payment_identity(payment_id: int) -> str:
    return f"{Kind.PAYMENT_WITHOUT_INVOICE.value}/payment={payment_id}"


@dataclass(frozen=True, slots=True)
class Discrepancy:
    """One open cause, with both sides' figures and the ids to open in each system.

    ``identity`` (kind + the ids it is about) is stable: the same cause found again
    is the same discrepancy, so it is raised once and resolved once."""

    identity: str
    kind: Kind
    reason: str
    currency: str
    crm_amount: Decimal | None
    erp_amount: Decimal | None
    contract_id: int | None = None
    installment_seq: int | None = None
    crm_installment_id: int | None = None
    erp_invoice_ids: tuple[int, ...] = ()
    erp_payment_ids: tuple[int, ...] = ()
    erp_customer_id: int | None = None
    due_date: date | None = None


def _m(amount: Decimal, currency: str) -> str:
    return f"{amount:,} {currency}"


def slot_discrepancies(contract_id: int, seq: int, facts: SlotFacts,
                       header: ContractHeader | None, as_of: date,
                       rules: Rules) -> list[Discrepancy]:
    """The slot's causes: an installment due without an invoice (active contracts,
    after the grace), invoices that bill another amount than the installment, invoices
    naming an installment the CRM does not have."""
    found: list[Discrepancy] = []
    inst = facts.installment
    ids = tuple(sorted(i.id for i in facts.invoices if i.billed or i.paid))
    sums = slot_sums(facts)
    if inst is not None:
        if (not inst.waived and not facts.has_billed and header is not None
                and header.state is ContractState.ACTIVE
                and days_past_due(inst.due_date, as_of) > rules.grace_days):
            found.append(Discrepancy(
                slot_identity(Kind.INSTALLMENT_NOT_INVOICED, contract_id, seq),
                Kind.INSTALLMENT_NOT_INVOICED,
                f"installment {seq} of contract {header.number} ({_m(inst.amount, inst.currency)}"
                f", due {inst.due_date.isoformat()}) has no ERP invoice",
                inst.currency, inst.amount, ZERO, contract_id, seq, inst.id,
                due_date=inst.due_date))
        if facts.has_billed:
            invoiced = sums.get(inst.currency, EMPTY).invoiced
            if invoiced != inst.amount:
                billed = tuple(sorted(i.id for i in facts.invoices if i.billed))
                found.append(Discrepancy(
                    slot_identity(Kind.INVOICE_AMOUNT_MISMATCH, contract_id, seq),
                    Kind.INVOICE_AMOUNT_MISMATCH,
                    f"installment {seq} is {_m(inst.amount, inst.currency)}, its invoices bill "
                    f"{_m(invoiced, inst.currency)}",
                    inst.currency, inst.amount, invoiced, contract_id, seq, inst.id, billed,
                    due_date=inst.due_date))
    elif ids:
        currency = min(sums) if sums else ""
        amount = sums[currency].invoiced if currency else ZERO
        found.append(Discrepancy(
            slot_identity(Kind.UNKNOWN_INSTALLMENT, contract_id, seq),
            Kind.UNKNOWN_INSTALLMENT,
            f"ERP invoices name installment {seq} of contract {contract_id}, which the CRM "
            "does not have",
            currency, None, amount, contract_id, seq, None, ids))
    return found


def contract_discrepancies(contract_id: int, header: ContractHeader | None,
                           sums: Mapping[str, Sums]) -> list[Discrepancy]:
    """The contract's causes: invoices naming a contract the CRM does not have,
    installments not adding up to the total, amounts in another currency, a terminated
    contract with billed money unpaid."""
    found: list[Discrepancy] = []
    if header is None:
        invoices = sum(s.invoices for s in sums.values())
        if invoices:
            currency = min(c for c, s in sums.items() if s.invoices)
            found.append(Discrepancy(
                contract_identity(Kind.UNKNOWN_CONTRACT, contract_id), Kind.UNKNOWN_CONTRACT,
                f"{invoices} ERP invoice(s) name contract {contract_id}, which the CRM does "
                "not have", currency, None, sums[currency].invoiced, contract_id))
        return found
    own = sums.get(header.currency, EMPTY)
    if (header.state in (ContractState.ACTIVE, ContractState.COMPLETED)
            and own.scheduled != header.total):
        found.append(Discrepancy(
            contract_identity(Kind.INSTALLMENTS_TOTAL_MISMATCH, contract_id),
            Kind.INSTALLMENTS_TOTAL_MISMATCH,
            f"contract {header.number} is {_m(header.total, header.currency)}, its "
            f"{own.installments} installment(s) add up to {_m(own.scheduled, header.currency)}",
            header.currency, header.total, own.scheduled, contract_id))
    for currency in sorted(sums):
        other = sums[currency]
        if currency == header.currency or not other.entries:
            continue
        found.append(Discrepancy(
            f"{currency_prefix(contract_id)}currency={currency}", Kind.CURRENCY_MISMATCH,
            f"contract {header.number} is in {header.currency}; {other.installments} "
            f"installment(s) and {other.invoices} invoice(s) are in {currency} (scheduled "
            f"{other.scheduled}, invoiced {other.invoiced}, paid {other.paid}); not converted",
            currency, other.scheduled, other.invoiced, contract_id))
    if header.state is ContractState.TERMINATED and own.invoiced > own.paid:
        found.append(Discrepancy(
            contract_identity(Kind.TERMINATED_WITH_OUTSTANDING, contract_id),
            Kind.TERMINATED_WITH_OUTSTANDING,
            f"contract {header.number} is terminated with "
            f"{_m(own.invoiced - own.paid, header.currency)} invoiced and not paid",
            header.currency, own.invoiced - own.paid, own.paid, contract_id))
    return found


@dataclass(frozen=True, slots=True)
class InvoiceFacts:
    """An invoice of a contract with the posted payments against it."""

    id: int
    contract_id: int
    seq: int
    customer_id: int
    state: str
    currency: str
    total: Decimal
    due_date: date | None
    payments: tuple[tuple[int, str, Decimal], ...] = field(default=())
    """(payment id, currency, amount), by id."""

    def paid(self, currency: str | None = None) -> Decimal:
        return sum((a for _, c, a in self.payments if currency is None or c == currency), ZERO)


def partly_paid(invoice: InvoiceFacts) -> bool:
    """Posted and paid in part: becomes ``payment_short`` once past due and grace."""
    paid = invoice.paid(invoice.currency)
    return invoice.state == "posted" and ZERO < paid < invoice.total


def invoice_discrepancies(invoice: InvoiceFacts, as_of: date,
                          rules: Rules) -> list[Discrepancy]:
    """An invoice paid over its total; paid short of it although the ERP says it is
    paid, or past its due date and grace; cancelled with payments against it."""
    found: list[Discrepancy] = []
    paid = invoice.paid(invoice.currency)
    ids = tuple(p for p, _, _ in invoice.payments)

    def make(kind: Kind, reason: str, erp_amount: Decimal) -> Discrepancy:
        return Discrepancy(invoice_identity(kind, invoice.id), kind, reason, invoice.currency,
                           invoice.total, erp_amount, invoice.contract_id, invoice.seq, None,
                           (invoice.id,), ids, invoice.customer_id, invoice.due_date)

    if invoice.state == "cancelled":
        if invoice.payments:
            found.append(make(Kind.INVOICE_CANCELLED_AFTER_PAYMENT,
                              f"invoice {invoice.id} was cancelled after "
                              f"{len(ids)} payment(s) of {_m(paid, invoice.currency)}", paid))
        return found
    if paid > invoice.total:
        found.append(make(Kind.PAYMENT_OVER, f"invoice {invoice.id} of "
                          f"{_m(invoice.total, invoice.currency)} was paid "
                          f"{_m(paid, invoice.currency)}", paid))
    elif paid < invoice.total and (
        invoice.state == "paid"
        or (partly_paid(invoice) and invoice.due_date is not None
            and days_past_due(invoice.due_date, as_of) > rules.grace_days)):
        found.append(make(Kind.PAYMENT_SHORT, f"invoice {invoice.id} of "
                          f"{_m(invoice.total, invoice.currency)} is "
                          f"{'marked paid' if invoice.state == 'paid' else 'past due'} with "
                          f"{_m(paid, invoice.currency)} received", paid))
    return found


def payment_discrepancy(payment_id: int, customer_id: int, reference: str, currency: str,
                        amount: Decimal) -> Discrepancy:
    return Discrepancy(payment_identity(payment_id), Kind.PAYMENT_WITHOUT_INVOICE,
                       f"payment {reference} of {_m(amount, currency)} names no invoice",
                       currency, None, amount, erp_payment_ids=(payment_id,),
                       erp_customer_id=customer_id)

"""The incremental fold of receivables over a key-value state (pure; no I/O).

:meth:`Receivables.apply` folds one source row version, :meth:`Receivables.advance`
moves the as-of date (Debezium heartbeats); both return an :class:`Outcome`: the
positions that changed (per installment, contract, customer), the expected-receivables
plan entries that changed, and the discrepancies raised, changed and resolved.

State is a function of the latest version of each row (DESIGN.md 6): every row's
version is kept with its source position (a stale or redelivered version is refused
before anything moves; a delete keeps its position as a tombstone) and every derived
entry is replaced as a *contribution*: the row's old part is taken out and its new part
put in. So replaying any history yields the state a recomputation from the final rows
gives (:mod:`services.receivables.recompute`, ``tests/unit/test_receivables_fold.py``).

Cost per change does not grow with the contract (DESIGN.md 4): a change touches one
slot (one installment with its invoices, :class:`~.rules.SlotFacts`) and its contract's
per-currency sums; aging is kept as sums per bucket, moved when the as-of date carries
an installment's due date across a bucket limit (found through a calendar index), and
the next due date is the first entry of the contract's dated index from the as-of date.
Only a contract header change that flips whether its installments must be invoiced
(active or not, known or not) visits its not-invoiced installments, each of which then
changes verdict.

Key layout (ids 8-byte big-endian, dates 4-byte ordinals, see :mod:`.codec`):
``R<table><id>`` row versions; ``S<contract><seq>`` slot facts; ``Y<invoice>`` posted
payments of an invoice; ``A<contract>`` sums per currency; ``D<contract><date>`` listed
slots of a due date with their outstanding, mirrored by the calendar ``G<date><contract>``;
``H<date><invoice>`` invoices paid in part, by due date; ``N<contract><seq>`` installments
without an invoice; ``P<contract>`` contract position; ``C/K<account><currency>``
customer sums and position; ``Q<account><currency><date><contract>`` next due amounts;
``O<identity>`` open discrepancies; ``X<contract>`` why its figures are incomplete;
``M`` the as-of date.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any, Protocol

from services.receivables import codec
from services.receivables.records import (
    ZERO,
    BadRow,
    Contract,
    ContractState,
    Installment,
    Invoice,
    Payment,
    Record,
    Table,
    parse,
)
from services.receivables.rules import (
    CONTRACT_KINDS,
    EMPTY,
    INVOICE_KINDS,
    SLOT_KINDS,
    BilledInvoice,
    ContractHeader,
    ContractPosition,
    CustomerPosition,
    Discrepancy,
    InstallmentPosition,
    InvoiceFacts,
    PlannedInstallment,
    Rules,
    SlotFacts,
    Sums,
    bucket_of,
    contract_discrepancies,
    contract_identity,
    contract_position,
    currency_prefix,
    customer_contribution,
    customer_position,
    installment_position,
    invoice_discrepancies,
    invoice_identity,
    partly_paid,
    payment_discrepancy,
    payment_identity,
    slot_discrepancies,
    slot_identity,
    slot_sums,
    slot_sums_as_of,
    with_aging,
)
from services.shared.position import SourcePosition

#: the as-of date before the first heartbeat
EPOCH = date(1970, 1, 1)


class KeyValue(Protocol):
    """Ordered raw key-value access (the shared state component's overlay fits)."""

    def get(self, key: bytes) -> bytes | None: ...

    def put(self, key: bytes, value: bytes) -> None: ...

    def delete(self, key: bytes) -> None: ...

    def scan(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        ...


@dataclass(frozen=True, slots=True)
class PlanEntry:
    """One row of the ERP's expected-receivables plan: an installment as the CRM has it."""

    contract_id: int
    seq: int
    installment_id: int
    due_date: date
    amount: Decimal
    currency: str
    waived: bool


@dataclass(frozen=True, slots=True)
class PlanHeader:
    """The head of a contract's expected-receivables plan in the ERP."""

    contract_id: int
    status: str
    number: str | None
    account_id: int | None
    currency: str | None
    total: Decimal | None


def plan_header(contract_id: int, header: ContractHeader | None) -> PlanHeader:
    if header is None:
        return PlanHeader(contract_id, plan_status(None), None, None, None, None)
    return PlanHeader(contract_id, plan_status(header), header.number, header.account_id,
                      header.currency, header.total)


def plan_status(header: ContractHeader | None) -> str:
    """The plan's status for finance: a draft is not handed over yet, a terminated
    contract's plan has ended, a deleted contract's is withdrawn."""
    if header is None:
        return "withdrawn"
    return {ContractState.DRAFT: "draft", ContractState.ACTIVE: "active",
            ContractState.COMPLETED: "completed",
            ContractState.TERMINATED: "ended"}[header.state]


@dataclass
class Outcome:
    """What fold steps changed; None values mean "gone" (delete the row).

    :meth:`merge` nets the outcomes of several steps (a source transaction, a batch):
    a discrepancy raised and resolved within them is neither; a position written twice
    is written once. So the shell publishes each cause once per batch, not per change."""

    installments: dict[tuple[int, int], InstallmentPosition | None] = field(default_factory=dict)
    contracts: dict[int, ContractPosition | None] = field(default_factory=dict)
    customers: dict[tuple[int, str], CustomerPosition | None] = field(default_factory=dict)
    plan: dict[tuple[int, int], PlanEntry | None] = field(default_factory=dict)
    plan_headers: dict[int, PlanHeader] = field(default_factory=dict)
    discrepancies: dict[str, tuple[Discrepancy | None, Discrepancy | None]] = field(
        default_factory=dict)
    """Per identity: (before, after) the steps; None = not open."""
    stale: bool = False
    """The version was not newer than the one folded: nothing moved."""
    rejected: str | None = None
    """The version was bad input (dead-letter it): the row counts as absent and its
    contract's position says it is incomplete."""

    @property
    def raised(self) -> list[Discrepancy]:
        return [a for b, a in self.discrepancies.values() if b is None and a is not None]

    @property
    def changed(self) -> list[Discrepancy]:
        return [a for b, a in self.discrepancies.values() if b is not None and a is not None]

    @property
    def resolved(self) -> list[Discrepancy]:
        return [b for b, a in self.discrepancies.values() if b is not None and a is None]

    def note(self, before: Discrepancy | None, after: Discrepancy | None) -> None:
        identity = (after or before).identity  # type: ignore[union-attr]
        first = self.discrepancies[identity][0] if identity in self.discrepancies else before
        if first == after:
            self.discrepancies.pop(identity, None)
        else:
            self.discrepancies[identity] = (first, after)

    def merge(self, other: Outcome) -> Outcome:
        """This outcome followed by ``other``, netted (``other`` is left as it is)."""
        self.installments.update(other.installments)
        self.contracts.update(other.contracts)
        self.customers.update(other.customers)
        self.plan.update(other.plan)
        self.plan_headers.update(other.plan_headers)
        for before, after in other.discrepancies.values():
            self.note(before, after)
        self.stale = self.stale and other.stale
        return self


@dataclass
class _Touched:
    contracts: set[int] = field(default_factory=set)
    slots: set[tuple[int, int]] = field(default_factory=set)
    invoices: set[int] = field(default_factory=set)
    payments: dict[int, Payment | None] = field(default_factory=dict)


def header_of(contract: Contract | None) -> ContractHeader | None:
    if contract is None:
        return None
    return ContractHeader(contract.number, contract.account_id, contract.state,
                          contract.currency, contract.total)


def _awaits_invoice(facts: SlotFacts) -> bool:
    inst = facts.installment
    return inst is not None and not inst.waived and not facts.has_billed


def _listing(facts: SlotFacts) -> tuple[date, str, Decimal] | None:
    """Where the slot is listed in its contract's dated index: (due date, currency,
    outstanding) when it has an installment with something outstanding or awaiting an
    invoice (what can change with the as-of date)."""
    inst = facts.installment
    if inst is None:
        return None
    outstanding = slot_sums(facts).get(inst.currency, EMPTY).outstanding
    if outstanding or _awaits_invoice(facts):
        return inst.due_date, inst.currency, outstanding
    return None


def _plan_entry(contract_id: int, seq: int, facts: SlotFacts) -> PlanEntry | None:
    inst = facts.installment
    if inst is None:
        return None
    return PlanEntry(contract_id, seq, inst.id, inst.due_date, inst.amount, inst.currency,
                     inst.waived)


def _billed_invoice(invoice: Invoice, payments: list[Any]) -> BilledInvoice:
    paid: dict[str, Decimal] = {}
    last: int | None = None
    for _, currency, amount, paid_on in payments:
        paid[currency] = paid.get(currency, ZERO) + Decimal(amount)
        if paid_on is not None and (last is None or paid_on > last):
            last = paid_on
    return BilledInvoice(invoice.id, invoice.currency, invoice.total, invoice.billed,
                         invoice.state == "cancelled", tuple(sorted(paid.items())),
                         None if last is None else date.fromordinal(last))


def _add_sums(table: dict[str, Sums], sums: Mapping[str, Sums], sign: int) -> None:
    for currency, s in sums.items():
        total = table.get(currency, EMPTY).plus(s, sign)
        if total.entries == 0 and total.is_zero:
            table.pop(currency, None)
        else:
            table[currency] = total


class Receivables:
    """The fold over a :class:`KeyValue` (the shell's per-batch overlay)."""

    def __init__(self, kv: KeyValue, rules: Rules | None = None) -> None:
        self.kv = kv
        self.rules = rules or Rules()
        raw = kv.get(codec.META)
        self.as_of = EPOCH if raw is None else date.fromordinal(codec.loads(raw)["as_of"])

    # ------------------------------------------------------------ row versions

    def _row(self, table: Table, row_id: int) -> tuple[SourcePosition, Record | None,
                                                       int | None] | None:
        raw = self.kv.get(codec.row_key(table, row_id))
        if raw is None:
            return None
        commit, lsn, data, noted = codec.loads(raw)
        return SourcePosition(commit, lsn), codec.decode_record(table, data), noted

    def record(self, table: Table, row_id: int) -> Record | None:
        row = self._row(table, row_id)
        return None if row is None else row[1]

    def contract_known(self, contract_id: int) -> bool:
        """Whether the CRM contract is present (the shell holds installments until)."""
        return self.record(Table.CONTRACT, contract_id) is not None

    def apply(self, table: Table, row_id: int, position: SourcePosition,
              row: Mapping[str, Any] | None) -> Outcome:
        """Fold one version of one row (``row`` None: deleted)."""
        out = Outcome()
        stored = self._row(table, row_id)
        old: Record | None = None
        noted: int | None = None
        if stored is not None:
            if position <= stored[0]:
                out.stale = True
                return out
            old, noted = stored[1], stored[2]
        touched = _Touched()
        try:
            new = parse(table, row)
        except BadRow as bad:
            new, out.rejected = None, f"{table.value} {row_id}: {bad.reason}"
        label = f"{table.value}:{row_id}"
        if noted is not None:
            self._unnote(table, row_id, label, noted, touched)
        now_noted: int | None = None
        if out.rejected is not None:
            now_noted = self._note(table, row_id, row, label, out.rejected, touched)
        self.kv.put(codec.row_key(table, row_id), codec.dumps(
            [position.commit_lsn, position.lsn, codec.encode_record(new), now_noted]))
        if table is Table.CONTRACT:
            self._contract(row_id, old, new, touched, out)  # type: ignore[arg-type]
        elif table is Table.INSTALLMENT:
            self._installment(old, new, touched, out)  # type: ignore[arg-type]
        elif table is Table.INVOICE:
            self._invoice(row_id, old, new, touched, out)  # type: ignore[arg-type]
        else:
            self._payment(row_id, old, new, touched, out)  # type: ignore[arg-type]
        self._settle(touched, out)
        return out

    def _note(self, table: Table, row_id: int, row: Mapping[str, Any] | None, label: str,
              reason: str, touched: _Touched) -> int | None:
        """Say on the rejected row's contract that its figures are incomplete and why.
        A payment's note is kept under its invoice (``B<invoice><payment>``) and follows
        the invoice's contract. Returns what was noted on (contract, or invoice for a
        payment)."""
        if row is None:
            return None
        name = {Table.CONTRACT: "id", Table.INSTALLMENT: "contract_id",
                Table.INVOICE: "crm_contract_id", Table.PAYMENT: "invoice_id"}[table]
        value = row.get(name)
        if not isinstance(value, int) or isinstance(value, bool):
            return None
        contract_id: int | None = value
        if table is Table.PAYMENT:
            self.kv.put(codec.bad_payment_key(value, row_id), reason.encode())
            contract_id = self._contract_of_invoice(value)
        if contract_id is not None:
            self._note_incomplete(contract_id, label, reason)
            touched.contracts.add(contract_id)
        return value

    def _unnote(self, table: Table, row_id: int, label: str, noted: int,
                touched: _Touched) -> None:
        contract_id: int | None = noted
        if table is Table.PAYMENT:
            self.kv.delete(codec.bad_payment_key(noted, row_id))
            contract_id = self._contract_of_invoice(noted)
        if contract_id is not None:
            self._note_incomplete(contract_id, label, None)
            touched.contracts.add(contract_id)

    def _contract_of_invoice(self, invoice_id: int) -> int | None:
        invoice = self.record(Table.INVOICE, invoice_id)
        return invoice.contract_id if isinstance(invoice, Invoice) else None

    def _move_payment_notes(self, invoice_id: int, before: int | None, after: int | None,
                            touched: _Touched) -> None:
        """The invoice moved to another contract: its rejected payments' notes move too."""
        if before == after:
            return
        prefix = codec.bad_payment_prefix(invoice_id)
        for key, raw in self.kv.scan(prefix):
            label = f"{Table.PAYMENT.value}:{codec.decode_int(key[9:17])}"
            for contract_id, reason in ((before, None), (after, raw.decode())):
                if contract_id is not None:
                    self._note_incomplete(contract_id, label, reason)
                    touched.contracts.add(contract_id)

    def _note_incomplete(self, contract_id: int, label: str, reason: str | None) -> None:
        key = codec.incomplete_key(contract_id)
        raw = self.kv.get(key)
        notes: dict[str, str] = {} if raw is None else codec.loads(raw)
        if reason is None:
            notes.pop(label, None)
        else:
            notes[label] = reason
        if notes:
            self.kv.put(key, codec.dumps(notes))
        else:
            self.kv.delete(key)

    # ------------------------------------------------------------ per table

    def _contract(self, contract_id: int, old: Contract | None, new: Contract | None,
                  touched: _Touched, out: Outcome) -> None:
        touched.contracts.add(contract_id)
        before, after = header_of(old), header_of(new)
        if plan_header(contract_id, before) != plan_header(contract_id, after):
            out.plan_headers[contract_id] = plan_header(contract_id, after)

        def active(h: ContractHeader | None) -> bool:
            return h is not None and h.state is ContractState.ACTIVE

        if active(before) != active(after):
            # only these slots' verdict (installment not invoiced) depends on the header
            prefix = codec.uninvoiced_prefix(contract_id)
            for key, _ in self.kv.scan(prefix):
                touched.slots.add((contract_id, codec.decode_int(key[9:13])))

    def _installment(self, old: Installment | None, new: Installment | None,
                     touched: _Touched, out: Outcome) -> None:
        if old is not None:
            gone = old.id
            self._edit_slot(old.contract_id, old.seq, touched, out, lambda f: SlotFacts(
                tuple(i for i in f.installments if i.id != gone), f.invoices))
        if new is not None:
            planned = PlannedInstallment(new.id, new.due_date, new.amount, new.currency,
                                         new.waived)
            self._edit_slot(new.contract_id, new.seq, touched, out, lambda f: SlotFacts(
                tuple(sorted((*(i for i in f.installments if i.id != planned.id), planned),
                             key=lambda i: i.id)), f.invoices))

    def _payments(self, invoice_id: int) -> list[Any]:
        raw = self.kv.get(codec.payments_key(invoice_id))
        return [] if raw is None else list(codec.loads(raw))

    def _invoice(self, invoice_id: int, old: Invoice | None, new: Invoice | None,
                 touched: _Touched, out: Outcome) -> None:
        payments = self._payments(invoice_id)
        touched.invoices.add(invoice_id)
        self._move_payment_notes(invoice_id, None if old is None else old.contract_id,
                                 None if new is None else new.contract_id, touched)
        self._index_short(old, payments, new, payments)
        if old is not None and old.contract_id is not None and old.seq is not None:
            self._edit_slot(old.contract_id, old.seq, touched, out, lambda f: SlotFacts(
                f.installments, tuple(v for v in f.invoices if v.id != invoice_id)))
        if new is not None and new.contract_id is not None and new.seq is not None:
            self._put_invoice_in_slot(new, payments, touched, out)

    def _put_invoice_in_slot(self, invoice: Invoice, payments: list[Any], touched: _Touched,
                             out: Outcome) -> None:
        assert invoice.contract_id is not None and invoice.seq is not None
        billed = _billed_invoice(invoice, payments)
        self._edit_slot(invoice.contract_id, invoice.seq, touched, out, lambda f: SlotFacts(
            f.installments,
            tuple(sorted((*(v for v in f.invoices if v.id != invoice.id), billed),
                         key=lambda v: v.id))))

    def _payment(self, payment_id: int, old: Payment | None, new: Payment | None,
                 touched: _Touched, out: Outcome) -> None:
        touched.payments[payment_id] = new
        affected: set[int] = set()
        for version in (old, new):
            if version is not None and version.invoice_id is not None:
                affected.add(version.invoice_id)
        for invoice_id in sorted(affected):
            before = self._payments(invoice_id)
            after = [p for p in before if p[0] != payment_id]
            if (new is not None and new.posted and new.invoice_id == invoice_id):
                after.append([payment_id, new.currency, str(new.amount),
                              None if new.paid_on is None else new.paid_on.toordinal()])
                after.sort(key=lambda p: p[0])
            if after == before:
                continue
            key = codec.payments_key(invoice_id)
            if after:
                self.kv.put(key, codec.dumps(after))
            else:
                self.kv.delete(key)
            invoice = self.record(Table.INVOICE, invoice_id)
            if not isinstance(invoice, Invoice):
                continue  # its invoice is not (yet) folded: counted when it is
            touched.invoices.add(invoice_id)
            self._index_short(invoice, before, invoice, after)
            if invoice.contract_id is not None:
                self._put_invoice_in_slot(invoice, after, touched, out)

    # ------------------------------------------------------------ indexes

    def _index_short(self, old: Invoice | None, old_payments: list[Any], new: Invoice | None,
                     new_payments: list[Any]) -> None:
        """``H<due><invoice>``: contract invoices posted and paid in part, by due date
        (``payment_short`` once the as-of date passes due date and grace)."""
        def entry(inv: Invoice | None, payments: list[Any]) -> bytes | None:
            if inv is None or inv.contract_id is None or inv.due_date is None:
                return None
            if not partly_paid(_invoice_facts(inv, payments)):
                return None
            return codec.short_key(inv.due_date, inv.id)

        before, after = entry(old, old_payments), entry(new, new_payments)
        if before != after:
            if before is not None:
                self.kv.delete(before)
            if after is not None:
                self.kv.put(after, b"")

    def _edit_slot(self, contract_id: int, seq: int, touched: _Touched, out: Outcome,
                   edit: Any) -> None:
        key = codec.slot_key(contract_id, seq)
        old: SlotFacts = codec.decode_slot(self.kv.get(key))
        new: SlotFacts = edit(old)
        if new.empty:
            self.kv.delete(key)
        else:
            self.kv.put(key, codec.encode_slot(new))
        touched.slots.add((contract_id, seq))
        touched.contracts.add(contract_id)
        # the contract's sums: the slot's old part out, its new part in
        raw = self.kv.get(codec.sums_key(contract_id))
        table = {} if raw is None else {c: codec.decode_sums(s)
                                        for c, s in codec.loads(raw).items()}
        _add_sums(table, slot_sums_as_of(old, self.as_of), -1)
        _add_sums(table, slot_sums_as_of(new, self.as_of), 1)
        self._put_sums(contract_id, table)
        # the dated index and the calendar
        before, after = _listing(old), _listing(new)
        if before is not None:
            self._list(contract_id, before, seq, -1)
        if after is not None:
            self._list(contract_id, after, seq, 1)
        # installments awaiting an invoice
        if _awaits_invoice(old) != _awaits_invoice(new):
            if _awaits_invoice(new):
                self.kv.put(codec.uninvoiced_key(contract_id, seq), b"")
            else:
                self.kv.delete(codec.uninvoiced_key(contract_id, seq))
        position = installment_position(contract_id, seq, new, self.as_of)
        if installment_position(contract_id, seq, old, self.as_of) != position:
            out.installments[(contract_id, seq)] = position
        entry = _plan_entry(contract_id, seq, new)
        if _plan_entry(contract_id, seq, old) != entry:
            out.plan[(contract_id, seq)] = entry

    def _put_sums(self, contract_id: int, table: Mapping[str, Sums]) -> None:
        key = codec.sums_key(contract_id)
        if table:
            self.kv.put(key, codec.dumps({c: codec.encode_sums(s) for c, s in table.items()}))
        else:
            self.kv.delete(key)

    def _sums(self, contract_id: int) -> dict[str, Sums]:
        raw = self.kv.get(codec.sums_key(contract_id))
        return {} if raw is None else {c: codec.decode_sums(s)
                                       for c, s in codec.loads(raw).items()}

    def _list(self, contract_id: int, listing: tuple[date, str, Decimal], seq: int,
              sign: int) -> None:
        due, currency, outstanding = listing
        key = codec.dated_key(contract_id, due)
        raw = self.kv.get(key)
        entry: dict[str, Any] = {"s": [], "o": {}} if raw is None else codec.loads(raw)
        seqs: list[int] = entry["s"]
        amounts: dict[str, str] = entry["o"]
        if sign > 0:
            seqs.append(seq)
            seqs.sort()
        else:
            seqs.remove(seq)
        total = Decimal(amounts.get(currency, "0")) + (outstanding if sign > 0 else -outstanding)
        if total:
            amounts[currency] = str(total)
        else:
            amounts.pop(currency, None)
        if seqs:
            self.kv.put(key, codec.dumps(entry))
            self.kv.put(codec.calendar_key(due, contract_id), b"")
        else:
            self.kv.delete(key)
            self.kv.delete(codec.calendar_key(due, contract_id))

    def _next_due(self, contract_id: int, currency: str) -> tuple[date, Decimal] | None:
        prefix = codec.dated_prefix(contract_id)
        for key, raw in self.kv.scan(prefix, prefix + codec.day(self.as_of)):
            amount = codec.loads(raw)["o"].get(currency)
            if amount is not None:
                return codec.decode_day(key[9:13]), Decimal(amount)
        return None

    # ------------------------------------------------------------ the as-of date

    def advance(self, as_of: date) -> Outcome:
        """Move the as-of date forward (never back): what crosses an aging limit or a
        grace moves; the rest is not visited."""
        out = Outcome()
        before = self.as_of
        if as_of <= before:
            return out
        touched = _Touched()
        due_dates: set[tuple[date, int]] = set()
        for limit in self.rules.crossings():
            low = max(before.toordinal() - limit, 1)
            high = as_of.toordinal() - limit
            if high <= low:
                continue
            start, stop = b"G" + _ordinal(low), b"G" + _ordinal(high)
            for key, _ in self.kv.scan(b"G", start):
                if key >= stop:
                    break
                due_dates.add((codec.decode_day(key[1:5]), codec.decode_int(key[5:13])))
            start, stop = b"H" + _ordinal(low), b"H" + _ordinal(high)
            if limit == self.rules.grace_days:
                for key, _ in self.kv.scan(b"H", start):
                    if key >= stop:
                        break
                    touched.invoices.add(codec.decode_int(key[5:13]))
        for due, contract_id in sorted(due_dates):
            raw = self.kv.get(codec.dated_key(contract_id, due))
            if raw is None:
                continue
            entry = codec.loads(raw)
            table = self._sums(contract_id)
            for currency, amount in entry["o"].items():
                moved = Sums(outstanding=Decimal(amount))
                _add_sums(table, {currency: with_aging(moved, bucket_of(due, before))}, -1)
                _add_sums(table, {currency: with_aging(moved, bucket_of(due, as_of))}, 1)
            self._put_sums(contract_id, table)
            touched.contracts.add(contract_id)
            for seq in entry["s"]:
                touched.slots.add((contract_id, seq))
                facts = codec.decode_slot(self.kv.get(codec.slot_key(contract_id, seq)))
                old = installment_position(contract_id, seq, facts, before)
                new = installment_position(contract_id, seq, facts, as_of)
                if old != new:
                    out.installments[(contract_id, seq)] = new
        self.as_of = as_of
        self.kv.put(codec.META, codec.dumps({"as_of": as_of.toordinal()}))
        self._settle(touched, out)
        return out

    # ------------------------------------------------------------ evaluation

    def _header(self, contract_id: int) -> ContractHeader | None:
        contract = self.record(Table.CONTRACT, contract_id)
        return header_of(contract) if isinstance(contract, Contract) else None

    def _settle(self, touched: _Touched, out: Outcome) -> None:
        customers: set[tuple[int, str]] = set()
        for contract_id in sorted(touched.contracts):
            header = self._header(contract_id)
            sums = self._sums(contract_id)
            self._contract_figures(contract_id, header, sums, customers, out)
            found = contract_discrepancies(contract_id, header, sums)
            identities = [contract_identity(k, contract_id) for k in CONTRACT_KINDS]
            prefix = codec.open_key(currency_prefix(contract_id))
            identities += [k[1:].decode() for k, _ in self.kv.scan(prefix)]
            self._reconcile(identities, found, out)
        for contract_id, seq in sorted(touched.slots):
            facts = codec.decode_slot(self.kv.get(codec.slot_key(contract_id, seq)))
            found = slot_discrepancies(contract_id, seq, facts, self._header(contract_id),
                                       self.as_of, self.rules)
            self._reconcile([slot_identity(k, contract_id, seq) for k in SLOT_KINDS], found,
                            out)
        for invoice_id in sorted(touched.invoices):
            invoice = self.record(Table.INVOICE, invoice_id)
            found = []
            if isinstance(invoice, Invoice) and invoice.contract_id is not None:
                invoice_facts = _invoice_facts(invoice, self._payments(invoice_id))
                found = invoice_discrepancies(invoice_facts, self.as_of, self.rules)
            self._reconcile([invoice_identity(k, invoice_id) for k in INVOICE_KINDS], found,
                            out)
        for payment_id, payment in sorted(touched.payments.items()):
            found = []
            if payment is not None and payment.posted and payment.invoice_id is None:
                found = [payment_discrepancy(payment.id, payment.customer_id, payment.reference,
                                             payment.currency, payment.amount)]
            self._reconcile([payment_identity(payment_id)], found, out)
        for account_id, currency in sorted(customers):
            self._customer_figures(account_id, currency, out)

    def _contract_figures(self, contract_id: int, header: ContractHeader | None,
                          sums: Mapping[str, Sums], customers: set[tuple[int, str]],
                          out: Outcome) -> None:
        new: ContractPosition | None = None
        if header is not None:
            raw = self.kv.get(codec.incomplete_key(contract_id))
            incomplete = () if raw is None else tuple(codec.loads(raw).values())
            new = contract_position(contract_id, header, sums.get(header.currency, EMPTY),
                                    self._next_due(contract_id, header.currency), incomplete)
        old = codec.decode_contract_position(self.kv.get(codec.position_key(contract_id)))
        if old == new:
            return
        out.contracts[contract_id] = new
        if new is None:
            self.kv.delete(codec.position_key(contract_id))
        else:
            self.kv.put(codec.position_key(contract_id), codec.encode_contract_position(new))
        for position, sign in ((old, -1), (new, 1)):
            if position is None:
                continue
            key = codec.customer_key(position.account_id, position.currency)
            customers.add((position.account_id, position.currency))
            raw = self.kv.get(key)
            totals, contracted = (EMPTY, ZERO) if raw is None else (
                codec.decode_sums(codec.loads(raw)[0]), Decimal(codec.loads(raw)[1]))
            totals = totals.plus(customer_contribution(position), sign)
            contracted += position.contracted if sign > 0 else -position.contracted
            if totals.installments <= 0:
                self.kv.delete(key)
            else:
                self.kv.put(key, codec.dumps([codec.encode_sums(totals), str(contracted)]))
            if position.next_due_date is not None and position.next_due_amount is not None:
                next_key = codec.next_due_key(position.account_id, position.currency,
                                              position.next_due_date, contract_id)
                if sign > 0:
                    self.kv.put(next_key, str(position.next_due_amount).encode())
                else:
                    self.kv.delete(next_key)

    def _customer_figures(self, account_id: int, currency: str, out: Outcome) -> None:
        raw = self.kv.get(codec.customer_key(account_id, currency))
        new: CustomerPosition | None = None
        if raw is not None:
            data = codec.loads(raw)
            new = customer_position(account_id, currency, codec.decode_sums(data[0]),
                                    Decimal(data[1]), self._customer_next_due(account_id,
                                                                              currency))
        key = codec.customer_position_key(account_id, currency)
        if codec.decode_customer_position(self.kv.get(key)) == new:
            return
        out.customers[(account_id, currency)] = new
        if new is None:
            self.kv.delete(key)
        else:
            self.kv.put(key, codec.encode_customer_position(new))

    def _customer_next_due(self, account_id: int, currency: str) -> tuple[date, Decimal] | None:
        prefix = codec.next_due_prefix(account_id, currency)
        first: date | None = None
        total = ZERO
        for key, raw in self.kv.scan(prefix, prefix + codec.day(self.as_of)):
            due = codec.decode_day(key[12:16])
            if first is not None and due != first:
                break
            first = due
            total += Decimal(raw.decode())
        return None if first is None else (first, total)

    def _reconcile(self, identities: list[str], found: list[Discrepancy], out: Outcome) -> None:
        by_identity = {d.identity: d for d in found}
        for identity in sorted(set(identities) | by_identity.keys()):
            key = codec.open_key(identity)
            old = codec.decode_discrepancy(self.kv.get(key))
            new = by_identity.get(identity)
            if old == new:
                continue
            if new is None:
                self.kv.delete(key)
            else:
                self.kv.put(key, codec.encode_discrepancy(new))
            out.note(old, new)

    # ------------------------------------------------------------ reads

    def open_discrepancies(self) -> dict[str, Discrepancy]:
        result = {}
        for _, raw in self.kv.scan(b"O"):
            d = codec.decode_discrepancy(raw)
            assert d is not None
            result[d.identity] = d
        return result

    def contract_positions(self) -> dict[int, ContractPosition]:
        result = {}
        for key, raw in self.kv.scan(b"P"):
            p = codec.decode_contract_position(raw)
            assert p is not None
            result[codec.decode_int(key[1:9])] = p
        return result

    def customer_positions(self) -> dict[tuple[int, str], CustomerPosition]:
        result = {}
        for _, raw in self.kv.scan(b"K"):
            p = codec.decode_customer_position(raw)
            assert p is not None
            result[(p.account_id, p.currency)] = p
        return result

    def installment_positions(self) -> dict[tuple[int, int], InstallmentPosition]:
        result = {}
        for key, raw in self.kv.scan(b"S"):
            contract_id, seq = codec.decode_int(key[1:9]), codec.decode_int(key[9:13])
            p = installment_position(contract_id, seq, codec.decode_slot(raw), self.as_of)
            if p is not None:
                result[(contract_id, seq)] = p
        return result

    def plan(self) -> dict[tuple[int, int], PlanEntry]:
        result = {}
        for key, raw in self.kv.scan(b"S"):
            contract_id, seq = codec.decode_int(key[1:9]), codec.decode_int(key[9:13])
            entry = _plan_entry(contract_id, seq, codec.decode_slot(raw))
            if entry is not None:
                result[(contract_id, seq)] = entry
        return result


def _ordinal(n: int) -> bytes:
    return n.to_bytes(4, "big", signed=True)


def _invoice_facts(invoice: Invoice, payments: list[Any]) -> InvoiceFacts:
    return InvoiceFacts(invoice.id, invoice.contract_id or 0, invoice.seq or 0,
                        invoice.customer_id, invoice.state.value, invoice.currency,
                        invoice.total, invoice.due_date,
                        tuple((p[0], p[1], Decimal(p[2])) for p in payments))


__all__ = ["EPOCH", "KeyValue", "Outcome", "PlanEntry", "PlanHeader", "Receivables",
           "plan_header", "plan_status"]

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
customer sums and position; ``W<account><currency><date>`` what the customer's contracts
next fall due on that date, summed (:mod:`.due_days`; layout 1 had one ``Q`` entry a
contract); ``O<identity>`` open discrepancies; ``X<contract>`` why its figures are
incomplete; ``B<invoice><payment>`` rejected payments of an invoice; ``M`` the as-of
date and the layout (:data:`.due_days.LAYOUT`: an older state is migrated before
anything folds). Reading and evaluating are in :mod:`services.receivables.views`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date
from decimal import Decimal
from typing import Any

from services.receivables import codec, due_days
from services.receivables.effects import Outcome, header_of, plan_header
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
    EMPTY,
    BilledInvoice,
    ContractHeader,
    PlannedInstallment,
    SlotFacts,
    Sums,
    bucket_of,
    installment_position,
    partly_paid,
    slot_sums,
    slot_sums_as_of,
    with_aging,
)
from services.receivables.views import (
    EPOCH,
    StateView,
    Touched,
    invoice_facts,
    plan_entry,
)
from services.shared.cooperative import Pausable, run_to_end
from services.shared.position import SourcePosition
from services.shared.state.store import KeyValue

#: one row version: (table, row id, source position, the row or None for a delete); the
#: row may come typed already (a :data:`~.records.Record`: the shell parsed it to accept
#: its transaction, and parsing was a fifth of a replay's fold)
Change = tuple[Table, int, SourcePosition, Mapping[str, Any] | Record | None]

_TYPED = (Contract, Installment, Invoice, Payment)

#: calendar entries read between two pauses of an as-of move: a replay's first as-of
#: date reads the whole calendar once a crossing (five), over a second unpaused with a
#: million changes
SCAN_SLICE = 1000


def _awaits_invoice(facts: SlotFacts) -> bool:
    inst = facts.installment
    return inst is not None and not inst.waived and not facts.has_billed


def _listing(facts: SlotFacts, sums: Mapping[str, Sums]) -> tuple[date, str, Decimal] | None:
    """Where the slot is listed in its contract's dated index: (due date, currency,
    outstanding) when it has an installment with something outstanding or awaiting an
    invoice (what can change with the as-of date). ``sums``: its :func:`slot_sums`."""
    inst = facts.installment
    if inst is None:
        return None
    outstanding = sums.get(inst.currency, EMPTY).outstanding
    if outstanding or _awaits_invoice(facts):
        return inst.due_date, inst.currency, outstanding
    return None


def _unmatched(payment: Payment | None) -> bool:
    return payment is not None and payment.posted and payment.invoice_id is None


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


class Receivables(StateView):
    """The fold over a :class:`KeyValue` (the shell's per-batch overlay)."""

    def apply(self, table: Table, row_id: int, position: SourcePosition,
              row: Mapping[str, Any] | None) -> Outcome:
        """Fold one version of one row (``row`` None: deleted)."""
        return self.apply_all([(table, row_id, position, row)])

    def apply_all(self, changes: Iterable[Change]) -> Outcome:
        """Fold several row versions (a source transaction, a batch), then evaluate what
        they touched once: a contract touched by a hundred changes of a batch is
        evaluated once, and the outcome is netted."""
        out = self.fold_pending(changes)
        out.merge(run_to_end(self.settling()))
        return out

    def fold_pending(self, changes: Iterable[Change]) -> Outcome:
        """Fold row versions, leaving what they touched to evaluate at the step's end
        (:meth:`settling`): the service folds a batch transaction by transaction, and a
        contract whose invoices and payments come one per transaction was evaluated
        (positions, its customer's, every open discrepancy) after each of them, most of
        a replay's time (issue 11)."""
        self._migrate()
        out = Outcome(stale=True)
        try:
            for table, row_id, position, row in changes:
                self._fold(table, row_id, position, row, self._pending, out)
        except BaseException:
            self._pending = Touched()
            self._discard()  # the shell discards the batch's writes too
            raise
        return out

    def settling(self) -> Pausable[Outcome]:
        """Evaluate everything folded since the last evaluation, once (pausable
        between any two contracts, slots, invoices, payments or customers)."""
        yield from self.migrating()
        touched, self._pending = self._pending, Touched()
        out = Outcome(stale=True)
        try:
            yield from self._settling(touched, out)
        except BaseException:
            self._discard()
            raise
        self._flush()
        return out

    def _fold(self, table: Table, row_id: int, position: SourcePosition,
              row: Mapping[str, Any] | Record | None, touched: Touched, out: Outcome) -> None:
        stored = self._row(table, row_id)
        old: Record | None = None
        noted: int | None = None
        if stored is not None:
            if position <= stored[0]:
                return
            old, noted = stored[1], stored[2]
        out.stale = False
        rejected: str | None = None
        new: Record | None
        if isinstance(row, _TYPED):
            new = row
        else:
            try:
                new = parse(table, row)
            except BadRow as bad:
                new, rejected = None, f"{table.value} {row_id}: {bad.reason}"
                out.rejected.append(rejected)
        label = f"{table.value}:{row_id}"
        if noted is not None:
            self._unnote(table, row_id, label, noted, touched)
        now_noted: int | None = None
        if rejected is not None:
            assert row is not None and not isinstance(row, _TYPED)
            now_noted = self._note(table, row_id, row, label, rejected, touched)
        self._store(codec.row_key(table, row_id), (position, new, now_noted),
                    lambda v: codec.dumps([v[0].commit_lsn, v[0].lsn,
                                           codec.encode_record(v[1]), v[2]]))
        if table is Table.CONTRACT:
            self._contract(row_id, old, new, touched, out)  # type: ignore[arg-type]
        elif table is Table.INSTALLMENT:
            self._installment(old, new, touched, out)  # type: ignore[arg-type]
        elif table is Table.INVOICE:
            self._invoice(row_id, old, new, touched, out)  # type: ignore[arg-type]
        else:
            self._payment(row_id, old, new, touched, out)  # type: ignore[arg-type]

    def _note(self, table: Table, row_id: int, row: Mapping[str, Any] | None, label: str,
              reason: str, touched: Touched) -> int | None:
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
                touched: Touched) -> None:
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
                            touched: Touched) -> None:
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

    def note_incomplete(self, notes: Iterable[tuple[int, str, str | None]]) -> Outcome:
        """Say on each contract that its figures are incomplete and why (a reason of
        None takes the note back): ``(contract id, label, reason)``; for rows the shell
        rejected before folding them (a source transaction rejected whole)."""
        self._migrate()
        out = Outcome(stale=True)
        touched = Touched()
        for contract_id, label, reason in notes:
            self._note_incomplete(contract_id, label, reason)
            touched.contracts.add(contract_id)
        if touched.contracts:
            out.stale = False
            self._settle(touched, out)
            self._flush()
        return out

    # ------------------------------------------------------------ per table

    def _contract(self, contract_id: int, old: Contract | None, new: Contract | None,
                  touched: Touched, out: Outcome) -> None:
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
                     touched: Touched, out: Outcome) -> None:
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

    def _invoice(self, invoice_id: int, old: Invoice | None, new: Invoice | None,
                 touched: Touched, out: Outcome) -> None:
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

    def _put_invoice_in_slot(self, invoice: Invoice, payments: list[Any], touched: Touched,
                             out: Outcome) -> None:
        assert invoice.contract_id is not None and invoice.seq is not None
        billed = _billed_invoice(invoice, payments)
        self._edit_slot(invoice.contract_id, invoice.seq, touched, out, lambda f: SlotFacts(
            f.installments,
            tuple(sorted((*(v for v in f.invoices if v.id != invoice.id), billed),
                         key=lambda v: v.id))))

    def _payment(self, payment_id: int, old: Payment | None, new: Payment | None,
                 touched: Touched, out: Outcome) -> None:
        if _unmatched(old) or _unmatched(new):
            # only a posted payment without an invoice is a discrepancy, so one whose
            # versions never were cannot open or close one (no read of its ``O`` entry)
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
            self._store(codec.payments_key(invoice_id), after,
                        lambda v: codec.dumps(v) if v else None)
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
            if not partly_paid(invoice_facts(inv, payments)):
                return None
            return codec.short_key(inv.due_date, inv.id)

        before, after = entry(old, old_payments), entry(new, new_payments)
        if before != after:
            if before is not None:
                self.kv.delete(before)
            if after is not None:
                self.kv.put(after, b"")

    def _edit_slot(self, contract_id: int, seq: int, touched: Touched, out: Outcome,
                   edit: Any) -> None:
        old = self._slot(contract_id, seq)
        new: SlotFacts = edit(old)
        if new == old:
            return
        self._store(codec.slot_key(contract_id, seq), new,
                    lambda v: None if v.empty else codec.encode_slot(v))
        touched.slots.add((contract_id, seq))
        touched.contracts.add(contract_id)
        # the contract's sums: the slot's old part out, its new part in
        table = self._sums(contract_id)
        old_sums, new_sums = slot_sums(old), slot_sums(new)
        old_aged = slot_sums_as_of(old, self.as_of, old_sums)
        new_aged = slot_sums_as_of(new, self.as_of, new_sums)
        _add_sums(table, old_aged, -1)
        _add_sums(table, new_aged, 1)
        self._put_sums(contract_id, table)
        # the dated index and the calendar
        before, after = _listing(old, old_sums), _listing(new, new_sums)
        if before is not None and after is not None and before[0] == after[0]:
            if before != after:  # same due date (a payment, say): its amounts only
                self._relist(contract_id, before, after)
        else:
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
        position = installment_position(contract_id, seq, new, self.as_of, aged=new_aged)
        if installment_position(contract_id, seq, old, self.as_of, aged=old_aged) != position:
            out.installments[(contract_id, seq)] = position
        entry = plan_entry(contract_id, seq, new)
        if plan_entry(contract_id, seq, old) != entry:
            out.plan[(contract_id, seq)] = entry

    def _put_sums(self, contract_id: int, table: Mapping[str, Sums]) -> None:
        self._store(codec.sums_key(contract_id), dict(table), lambda v: codec.dumps(
            {c: codec.encode_sums(s) for c, s in v.items()}) if v else None)

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

    def _relist(self, contract_id: int, before: tuple[date, str, Decimal],
                after: tuple[date, str, Decimal]) -> None:
        key = codec.dated_key(contract_id, before[0])
        raw = self.kv.get(key)
        assert raw is not None
        entry: dict[str, Any] = codec.loads(raw)
        amounts: dict[str, str] = entry["o"]
        for currency, delta in ((before[1], -before[2]), (after[1], after[2])):
            total = Decimal(amounts.get(currency, "0")) + delta
            if total:
                amounts[currency] = str(total)
            else:
                amounts.pop(currency, None)
        self.kv.put(key, codec.dumps(entry))

    # ------------------------------------------------------------ the as-of date

    def advance(self, as_of: date) -> Outcome:
        """Move the as-of date forward (never back): what crosses an aging limit or a
        grace moves; the rest is not visited."""
        return run_to_end(self.advancing(as_of))

    def advancing(self, as_of: date) -> Pausable[Outcome]:
        """:meth:`advance`, pausable between the due dates and the figures it moves: a
        day can age thousands of installments (a replay's first as-of date all of them),
        too long to hold the event loop. Nothing else may use the fold until it ends."""
        before = self.as_of
        if as_of <= before:
            return Outcome()
        yield from self.migrating()
        try:
            out = yield from self._advance(before, as_of)
        except BaseException:
            self.as_of = before
            self._discard()
            raise
        self._flush()
        return out

    def _advance(self, before: date, as_of: date) -> Pausable[Outcome]:
        out = Outcome()
        touched = Touched()
        due_dates: set[tuple[date, int]] = set()
        for limit in self.rules.crossings():
            low = max(before.toordinal() - limit, 1)
            high = as_of.toordinal() - limit
            if high <= low:
                continue
            start, stop = b"G" + _ordinal(low), b"G" + _ordinal(high)
            for n, (key, _) in enumerate(self.kv.scan(b"G", start), 1):
                if key >= stop:
                    break
                due_dates.add((codec.decode_day(key[1:5]), codec.decode_int(key[5:13])))
                if n % SCAN_SLICE == 0:
                    yield None
            start, stop = b"H" + _ordinal(low), b"H" + _ordinal(high)
            if limit == self.rules.grace_days:
                for n, (key, _) in enumerate(self.kv.scan(b"H", start), 1):
                    if key >= stop:
                        break
                    touched.invoices.add(codec.decode_int(key[5:13]))
                    if n % SCAN_SLICE == 0:
                        yield None
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
                facts = self._slot(contract_id, seq)
                old = installment_position(contract_id, seq, facts, before)
                new = installment_position(contract_id, seq, facts, as_of)
                if old != new:
                    out.installments[(contract_id, seq)] = new
            yield None
        self.as_of = as_of
        self.kv.put(codec.META, codec.dumps({"as_of": as_of.toordinal(),
                                             "layout": due_days.LAYOUT}))
        yield from self._settling(touched, out)
        return out


def _ordinal(n: int) -> bytes:
    return n.to_bytes(4, "big", signed=True)


__all__ = ["EPOCH", "Change", "KeyValue", "Receivables"]

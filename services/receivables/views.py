"""Reading and evaluating receivables' key-value state (pure; no I/O).

:class:`StateView` is the half of :class:`~services.receivables.fold.Receivables` that
reads: the row versions, a contract's sums and dated index, and the evaluation that
turns what a fold step touched into positions and discrepancy changes
(:meth:`StateView._settle`): each contract, slot, invoice and payment touched is
evaluated with :mod:`services.receivables.rules` and compared with what the state
last said (``P``/``K`` positions, ``O`` open discrepancies). The key layout is in
:mod:`services.receivables.fold`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any

from services.receivables import codec, due_days
from services.receivables.effects import Outcome, PlanEntry, header_of
from services.receivables.records import ZERO, Contract, Invoice, Payment, Record, Table
from services.receivables.rules import (
    CONTRACT_KINDS,
    EMPTY,
    INVOICE_KINDS,
    SLOT_KINDS,
    ContractHeader,
    ContractPosition,
    CustomerPosition,
    Discrepancy,
    InstallmentPosition,
    InvoiceFacts,
    Rules,
    SlotFacts,
    Sums,
    contract_discrepancies,
    contract_identity,
    contract_position,
    currency_prefix,
    customer_contribution,
    customer_position,
    installment_position,
    invoice_discrepancies,
    invoice_identity,
    payment_discrepancy,
    payment_identity,
    slot_discrepancies,
    slot_identity,
)
from services.shared.cooperative import Pausable, run_to_end
from services.shared.position import SourcePosition
from services.shared.state.store import KeyValue

#: the as-of date before the first heartbeat
EPOCH = date(1970, 1, 1)


@dataclass
class Touched:
    contracts: set[int] = field(default_factory=set)
    slots: set[tuple[int, int]] = field(default_factory=set)
    invoices: set[int] = field(default_factory=set)
    payments: dict[int, Payment | None] = field(default_factory=dict)


def _decode_list(raw: bytes | None) -> list[Any]:
    return [] if raw is None else list(codec.loads(raw))


def _decode_sums(raw: bytes | None) -> dict[str, Sums]:
    return {} if raw is None else {c: codec.decode_sums(s) for c, s in codec.loads(raw).items()}


def plan_entry(contract_id: int, seq: int, facts: SlotFacts) -> PlanEntry | None:
    inst = facts.installment
    if inst is None:
        return None
    return PlanEntry(contract_id, seq, inst.id, inst.due_date, inst.amount, inst.currency,
                     inst.waived)


class StateView:
    """Reads and evaluation over the state (see the module docstring)."""

    def __init__(self, kv: KeyValue, rules: Rules | None = None) -> None:
        self.kv = kv
        self.rules = rules or Rules()
        raw = kv.get(codec.META)
        meta = None if raw is None else codec.loads(raw)
        ordinal = None if meta is None else meta.get("as_of")
        self.as_of = EPOCH if ordinal is None else date.fromordinal(ordinal)
        #: whether the state has the current layout (:mod:`.due_days`); until it does,
        #: nothing may be folded (:meth:`migrating` first)
        self.migrated = due_days.layout_of(meta) == due_days.LAYOUT
        # Entries decoded during the current step (row versions, slots, sums, payments:
        # point reads only, never scanned mid-step), written back encoded once by
        # :meth:`_flush`. A batch folds dozens of changes into the same contract's sums
        # and slots; decoding and encoding them per change was most of the fold.
        self._objects: dict[bytes, Any] = {}
        self._encoders: dict[bytes, Callable[[Any], bytes | None]] = {}
        #: what was folded and is not evaluated yet (see Receivables.fold_pending)
        self._pending = Touched()

    def migrating(self) -> Pausable[int]:
        """Bring a state of an older layout to :data:`~.due_days.LAYOUT` (pausable; the
        entries migrated). Through :attr:`kv`: in the service, the checkpoint's overlay,
        so the migration reaches the changelog with the next batch."""
        moved = 0
        if not self.migrated:
            moved = yield from due_days.migrating(self.kv)
            self.migrated = True
        return moved

    def _migrate(self) -> None:
        """:meth:`migrating` in one go, if due (the service pauses for it first:
        :meth:`~.source_fold.ReceivablesFold.steps`)."""
        if not self.migrated:
            run_to_end(self.migrating())

    def _load(self, key: bytes, decode: Callable[[bytes | None], Any]) -> Any:
        if key in self._objects:
            return self._objects[key]
        value = self._objects[key] = decode(self.kv.get(key))
        return value

    def _store(self, key: bytes, value: Any, encode: Callable[[Any], bytes | None]) -> None:
        """Keep ``value`` for ``key`` until the flush (``encode`` returning None: delete)."""
        self._objects[key] = value
        self._encoders[key] = encode

    def _flush(self) -> None:
        for key, encode in self._encoders.items():
            raw = encode(self._objects[key])
            if raw is None:
                self.kv.delete(key)
            else:
                self.kv.put(key, raw)
        self._discard()

    def _discard(self) -> None:
        self._objects.clear()
        self._encoders.clear()

    def _row(self, table: Table, row_id: int) -> tuple[SourcePosition, Record | None,
                                                       int | None] | None:
        def decode(raw: bytes | None) -> tuple[SourcePosition, Record | None,
                                                int | None] | None:
            if raw is None:
                return None
            commit, lsn, data, noted = codec.loads(raw)
            return SourcePosition(commit, lsn), codec.decode_record(table, data), noted

        row: tuple[SourcePosition, Record | None, int | None] | None = self._load(
            codec.row_key(table, row_id), decode)
        return row

    def record(self, table: Table, row_id: int) -> Record | None:
        row = self._row(table, row_id)
        return None if row is None else row[1]

    def contract_known(self, contract_id: int) -> bool:
        """Whether the CRM contract is present (the shell holds installments until)."""
        return self.record(Table.CONTRACT, contract_id) is not None

    def _payments(self, invoice_id: int) -> list[Any]:
        payments: list[Any] = self._load(codec.payments_key(invoice_id), _decode_list)
        return list(payments)

    def _sums(self, contract_id: int) -> dict[str, Sums]:
        sums: dict[str, Sums] = self._load(codec.sums_key(contract_id), _decode_sums)
        return dict(sums)

    def _slot(self, contract_id: int, seq: int) -> SlotFacts:
        facts: SlotFacts = self._load(codec.slot_key(contract_id, seq), codec.decode_slot)
        return facts

    def _next_due(self, contract_id: int, currency: str) -> tuple[date, Decimal] | None:
        prefix = codec.dated_prefix(contract_id)
        for key, raw in self.kv.scan(prefix, prefix + codec.day(self.as_of)):
            amount = codec.loads(raw)["o"].get(currency)
            if amount is not None:
                return codec.decode_day(key[9:13]), Decimal(amount)
        return None

    def _header(self, contract_id: int) -> ContractHeader | None:
        contract = self.record(Table.CONTRACT, contract_id)
        return header_of(contract) if isinstance(contract, Contract) else None

    def _settle(self, touched: Touched, out: Outcome) -> None:
        run_to_end(self._settling(touched, out))

    def _settling(self, touched: Touched, out: Outcome) -> Pausable[None]:
        """Evaluate what was touched; pausable between any two of them."""
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
            yield None
        for contract_id, seq in sorted(touched.slots):
            facts = self._slot(contract_id, seq)
            found = slot_discrepancies(contract_id, seq, facts, self._header(contract_id),
                                       self.as_of, self.rules)
            self._reconcile([slot_identity(k, contract_id, seq) for k in SLOT_KINDS], found,
                            out)
            yield None
        for invoice_id in sorted(touched.invoices):
            invoice = self.record(Table.INVOICE, invoice_id)
            found = []
            if isinstance(invoice, Invoice) and invoice.contract_id is not None:
                billing = invoice_facts(invoice, self._payments(invoice_id))
                found = invoice_discrepancies(billing, self.as_of, self.rules)
            self._reconcile([invoice_identity(k, invoice_id) for k in INVOICE_KINDS], found,
                            out)
            yield None
        for payment_id, payment in sorted(touched.payments.items()):
            found = []
            if payment is not None and payment.posted and payment.invoice_id is None:
                found = [payment_discrepancy(payment.id, payment.customer_id, payment.reference,
                                             payment.currency, payment.amount)]
            self._reconcile([payment_identity(payment_id)], found, out)
            yield None
        for account_id, currency in sorted(customers):
            self._customer_figures(account_id, currency, out)
            yield None

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
                due_days.move(self.kv, position.account_id, position.currency,
                              position.next_due_date, position.next_due_amount, sign)

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
        """The first date from the as-of date on with something next due, and its sum:
        one entry read, however many contracts fall due (:mod:`.due_days`)."""
        prefix = codec.due_day_prefix(account_id, currency)
        for key, raw in self.kv.scan(prefix, prefix + codec.day(self.as_of)):
            return codec.decode_day(key[-4:]), due_days.decode(raw).amount
        return None

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
            entry = plan_entry(contract_id, seq, codec.decode_slot(raw))
            if entry is not None:
                result[(contract_id, seq)] = entry
        return result


def invoice_facts(invoice: Invoice, payments: list[Any]) -> InvoiceFacts:
    return InvoiceFacts(invoice.id, invoice.contract_id or 0, invoice.seq or 0,
                        invoice.customer_id, invoice.state.value, invoice.currency,
                        invoice.total, invoice.due_date,
                        tuple((p[0], p[1], Decimal(p[2])) for p in payments))


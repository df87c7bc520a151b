"""receivables' fold of whole source transactions: the pure policy its shell runs.

:class:`ReceivablesFold` is the kit's :class:`~services.shared.transaction_fold.TransactionFold`
around the core (:class:`~services.receivables.fold.Receivables`):

* **Typed rows, whole transactions.** :meth:`ReceivablesFold.parse` types each change of
  ``crm.contract``, ``crm.installment``, ``erp.invoice``, ``erp.payment`` with
  :mod:`~services.receivables.records`; one :class:`~.records.BadRow` (NaN or negative
  money, a non-ISO currency, ...) rejects its source transaction whole (dead letters,
  nothing of it applied). A TRUNCATE of a consumed table is answered
  ``needs_resnapshot`` (:mod:`.truncates`: dead letter + alert, the rest of its
  transaction applied). A whole, well-formed transaction is folded
  at once (``apply_all``: its contracts evaluated once, its outcome netted).
* **The as-of date** is the older of the two databases' source times (their commits and
  Debezium heartbeats, ``heartbeat.cdc.crm`` / ``heartbeat.cdc.erp``), as a UTC date,
  and never goes back; it is moved at the end of each step (aging, grace) and not before
  both databases have said their time.
* **An installment whose contract is unknown** is folded like any row (state stays a
  function of the rows, as the recomputation has it) and *awaits a verdict*: its record
  is kept out of the step's release (a restart redelivers it) until the CRM's topics
  are read to their end and its source time passes the commit by the kit's grace
  (:mod:`services.shared.verdicts`). Still unknown then: dead-lettered (cause
  ``unknown_reference``) once; known by then: just released. At most the kit's limit
  wait; beyond, they are released unjudged (counted).
* **unknown_contract / unknown_installment are withheld at start**: while the CRM
  topics are not read to their end, an invoice read before its contract would raise
  them falsely, so raising (and re-figuring) them is held back; once the CRM is caught
  up, every one still open in the state is handed over as raised (the effects publish
  only what the integration table does not show open already).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeGuard

from services.receivables import codec
from services.receivables.effects import Outcome
from services.receivables.fold import Change, Receivables
from services.receivables.records import Installment, Table, parse
from services.receivables.rules import Kind, Rules
from services.receivables.truncates import TRUNCATES
from services.shared.changes import ChangeEvent, ChangeOp
from services.shared.cooperative import Pausable
from services.shared.errors import BadInput, NeedsResnapshot
from services.shared.holding import GivenUp
from services.shared.position import SourcePosition
from services.shared.state.store import KeyValue
from services.shared.transaction_fold import Applied, TransactionFold
from services.shared.transactions import CompleteTransaction
from services.shared.verdicts import Awaiting, UnknownReference, Verdicts

CRM = "crm"
ERP = "erp"
TABLES = tuple(Table)
#: ``schema.table`` of every consumed table (as Debezium's transaction metadata names them)
COLLECTIONS = tuple(t.value for t in TABLES)
#: the alerts that need the CRM read to its end before they are true
WITHHELD_KINDS = (Kind.UNKNOWN_CONTRACT, Kind.UNKNOWN_INSTALLMENT)

Step = Applied[Outcome]
#: state keys of the shell: ``~x<table><id>`` -> the rejected version of a row and the
#: contract noted incomplete because of it (the core's keys are single capitals)
REJECTED = b"~x"


def _is_id(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


class UnknownContract(UnknownReference):
    """An installment still naming an unknown contract after the grace."""


@dataclass
class Watermarks:
    """Source time per database (max of what was observed)."""

    times: dict[str, datetime] = field(default_factory=dict)

    def observe(self, database: str, at: datetime) -> None:
        last = self.times.get(database)
        if last is None or at > last:
            self.times[database] = at

    def as_of(self) -> date | None:
        """The older of the two databases' source dates (None until both are known)."""
        if CRM not in self.times or ERP not in self.times:
            return None
        return min(self.times[CRM], self.times[ERP]).astimezone(UTC).date()


class ReceivablesFold(TransactionFold[Change, Outcome]):
    """See the module docstring."""

    def __init__(self, kv: KeyValue, *, rules: Rules | None = None,
                 max_hold: timedelta = timedelta(seconds=300)) -> None:
        super().__init__(COLLECTIONS, truncates=TRUNCATES, max_hold=max_hold)
        self.core = Receivables(kv, rules)
        self.watermarks = Watermarks()
        #: installments naming an unknown contract, by id
        self.verdicts: Verdicts[int] = Verdicts()
        #: alerts of WITHHELD_KINDS are held back until the CRM is caught up
        self.withholding = True

    @classmethod
    def load(cls, kv: KeyValue, **options: Any) -> ReceivablesFold:
        return cls(kv, **options)

    @property
    def awaiting_verdicts(self) -> int:
        return len(self.verdicts)

    @property
    def unjudged(self) -> int:
        """Installments released without a verdict (the kit's limit reached)."""
        return self.verdicts.unjudged

    # ------------------------------------------------------------------ the policy

    def parse(self, event: ChangeEvent) -> Change:
        name = f"{event.database}.{event.table}"
        if event.op is ChangeOp.TRUNCATE:  # answered by the kit before parse (.truncates)
            raise NeedsResnapshot(f"TRUNCATE of {name}: receivables needs a new snapshot")
        table = Table(name)
        row_id = event.key.get("id")
        if isinstance(row_id, bool) or not isinstance(row_id, int):
            raise BadInput(f"{name} key {event.key!r} has no integer id")
        row = None if event.op is ChangeOp.DELETE else event.after
        # BadRow: the transaction is rejected whole; typed once, folded as it is
        return table, row_id, event.position, parse(table, row)

    def apply(self, records: Sequence[Change], transaction: CompleteTransaction,
              outcome: Outcome) -> None:
        taken_back = self._supersede_rejected(records)
        # evaluated once for the whole step, in finish
        outcome.merge(self.core.fold_pending(records))
        if taken_back:
            outcome.merge(self.core.note_incomplete(taken_back))
        whole = self.applying
        for (_, row_id, position, row), event in zip(records, transaction.events,
                                                        strict=True):
            if not isinstance(row, Installment):
                continue
            contract_id = row.contract_id
            if self.core.contract_known(contract_id):
                continue
            handle = None if whole is None else whole.handle_of(event)
            if handle is not None:
                self.verdicts.wait(row_id, contract_id, CRM, position,
                                   transaction.commit_time, handle)

    def new_outcome(self) -> Outcome:
        return Outcome(stale=True)

    def observe(self, database: str, at: datetime) -> None:
        self.watermarks.observe(database, at)

    def finish(self, outcome: Outcome, caught_up: Collection[str]) -> Pausable[None]:
        outcome.merge((yield from self.core.settling()))
        as_of = self.watermarks.as_of()
        if as_of is not None:
            outcome.merge((yield from self.core.advancing(as_of)))
        if CRM not in caught_up:
            self.withholding = True
            withhold(outcome)
        elif self.withholding:
            self.withholding = False
            for d in self.open_withheld():
                outcome.discrepancies[d.identity] = (None, d)

    def steps(self, caught_up: Collection[str]) -> Pausable[Step]:
        # a state of an older layout is migrated before anything folds, pausably (the
        # runner gives the loop back in between), through the checkpoint's overlay: it
        # is durable, in the changelog too, with this step's batch (.due_days)
        yield from self.core.migrating()
        out: Step = yield from super().steps(caught_up)
        notes = self._note_rejected(out.rejected)
        if notes:
            out.outcome.merge(self.core.note_incomplete(notes))
        self.verdicts.judge(out, caught_up=caught_up, times=self.streamed,
                            settled=self._settled, error=self._unknown_contract)
        return out

    # ------------------------------------------------------------------ rejected rows

    def _note_rejected(self, given_up: Sequence[GivenUp]) -> list[tuple[int, str, str | None]]:
        """Every contract a row of a transaction rejected or given up whole belongs to
        says its figures are incomplete and why, until a newer version of that row is
        folded."""
        notes: list[tuple[int, str, str | None]] = []
        for whole in given_up:
            rows: list[tuple[str, Any, Mapping[str, Any] | None, SourcePosition]] = [
                (e.data_collection, e.key.get("id"), e.row, e.position) for e in whole.events]
            rows += [(d.data_collection, (d.row or {}).get("id"), d.row, d.position)
                     for d in whole.defects]
            for name, row_id, row, position in rows:
                if name not in COLLECTIONS or not _is_id(row_id):
                    continue
                table = Table(name)
                contract_id = self._contract_named(table, row_id, row)
                if contract_id is None:
                    continue
                notes.append((contract_id, f"{name}:{row_id}",
                              f"{name} {row_id}: {whole.reason}"))
                key = REJECTED + codec.row_key(table, row_id)[1:]
                self.core.kv.put(key, codec.dumps([position.commit_lsn, position.lsn,
                                                  contract_id]))
        return notes

    def _contract_named(self, table: Table, row_id: int, row: Any) -> int | None:
        if not isinstance(row, Mapping):
            return row_id if table is Table.CONTRACT else None
        if table is Table.CONTRACT:
            return row_id
        value = row.get({Table.INSTALLMENT: "contract_id", Table.INVOICE: "crm_contract_id",
                         Table.PAYMENT: "invoice_id"}[table])
        if not _is_id(value):
            return None
        if table is Table.PAYMENT:
            invoice = self.core.record(Table.INVOICE, value)
            return getattr(invoice, "contract_id", None)
        return int(value)

    def _supersede_rejected(self, records: Sequence[Change]) -> list[tuple[int, str, None]]:
        """The notes of rejected row versions that these newer versions replace."""
        back: list[tuple[int, str, None]] = []
        for table, row_id, position, _ in records:
            key = REJECTED + codec.row_key(table, row_id)[1:]
            raw = self.core.kv.get(key)
            if raw is None:
                continue
            commit_lsn, lsn, contract_id = codec.loads(raw)
            if position > SourcePosition(commit_lsn, lsn):
                self.core.kv.delete(key)
                back.append((contract_id, f"{table.value}:{row_id}", None))
        return back

    # ------------------------------------------------------------------ verdicts

    def _settled(self, entry: Awaiting[int]) -> bool:
        """The installment no longer names an unknown contract (or is gone)."""
        stored = self.core.record(Table.INSTALLMENT, entry.row)
        return (not isinstance(stored, Installment)
                or stored.contract_id != entry.reference
                or self.core.contract_known(entry.reference))

    def _unknown_contract(self, entry: Awaiting[int]) -> UnknownContract:
        return UnknownContract(
            f"crm.installment {entry.row}: contract {entry.reference} is unknown to the "
            f"CRM topics {self.verdicts.grace_text} (source time) after the change, read "
            "to their end; the installment is kept and counted once the contract appears")

    # ------------------------------------------------------------------ withheld alerts

    def open_withheld(self) -> list[Any]:
        """Every open discrepancy of :data:`WITHHELD_KINDS` in the state."""
        found = []
        for kind in WITHHELD_KINDS:
            for _, raw in self.core.kv.scan(codec.open_key(f"{kind.value}/")):
                found.append(codec.decode_discrepancy(raw))
        return [d for d in found if d is not None]


def withhold(outcome: Outcome) -> None:
    """Take raised and changed alerts of :data:`WITHHELD_KINDS` out of ``outcome``
    (resolutions stay: the effects publish one only for an alert shown open)."""
    for identity, (_, after) in list(outcome.discrepancies.items()):
        if after is not None and after.kind in WITHHELD_KINDS:
            del outcome.discrepancies[identity]

"""customer-value's fold on the kit: whole source transactions -> the figures to write.

A :class:`~services.shared.transaction_fold.TransactionFold` around the core
(:class:`~.fold.CustomerValues`):

* :meth:`ValueFold.parse` types each change with the canonical records
  (``services/shared/source_records``) into a :class:`Change` (a bad row, a truncate, a
  change without an integer id: :class:`BadInput`; the kit rejects its transaction
  whole);
* :meth:`ValueFold.apply` folds the rows of a whole transaction;
* receivables' positions (``ambidex.receivable-position``, Avro, in no source
  transaction) come in through :meth:`ValueFold.published` and are folded at the end
  of the step (their position is the record's offset: the topic is keyed by contract,
  so a contract's records keep their order); an unreadable one is dead-lettered, a
  tombstone removes the contract's position;
* :meth:`ValueFold.finish` turns what the step touched into the figures to write and
  publish (:class:`Outcome`: each (account, month, currency) with its
  :class:`~.figures.CustomerValue`, or None when nothing is left there), with the
  as-of time: the older of the two databases' source times.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from services.customer_value.figures import CustomerValue
from services.customer_value.fold import CustomerValues, Position, ValueKey
from services.customer_value.sources import POSITION, TABLES, Node, ReceivablePosition, node_of
from services.shared.changes import ChangeEvent, ChangeOp
from services.shared.cooperative import Pausable
from services.shared.errors import BadInput
from services.shared.source_records import record_type
from services.shared.state.store import KeyValue
from services.shared.stateful import Handle
from services.shared.transaction_fold import Applied, TransactionFold
from services.shared.transactions import CompleteTransaction

#: ``schema.table`` of every consumed table (as Debezium's transaction metadata names them)
COLLECTIONS = TABLES
#: the published topic whose records :meth:`ValueFold.published` takes
POSITIONS_TOPIC = "ambidex.receivable-position"


@dataclass(frozen=True, slots=True)
class Change:
    source: str
    row_id: int
    position: Position
    node: Node | None  # None: the row was deleted


@dataclass
class Outcome:
    """What one step changed."""

    touched: set[ValueKey] = field(default_factory=set)
    #: (account, month, currency) -> its figures, None when nothing is left there
    values: dict[ValueKey, CustomerValue | None] = field(default_factory=dict)
    as_of: datetime | None = None
    stale: int = 0
    positions: int = 0


def parse_change(event: ChangeEvent) -> Change:
    """One captured change as the node of its row (pure; ``BadInput`` when bad)."""
    source = f"{event.database}.{event.table}"
    if event.op is ChangeOp.TRUNCATE:
        raise BadInput(f"TRUNCATE of {source}: customer-value folds row by row and needs "
                       "the rows' deletes (re-snapshot the table)")
    if source not in TABLES:
        raise BadInput(f"customer-value does not read {source}")
    row_id = event.key.get("id")
    if isinstance(row_id, bool) or not isinstance(row_id, int):
        raise BadInput(f"{source} change without an integer id")
    position = (event.position.commit_lsn, event.position.lsn)
    if event.is_delete:
        return Change(source, row_id, position, None)
    if event.after is None:
        raise BadInput(f"{source} {row_id}: change without a row")
    record = record_type(event.database, event.table).from_row(event.after)
    return Change(source, row_id, position, node_of(record))


def parse_position(key: bytes | None, value: Mapping[str, Any] | None,
                   offset: int) -> Change:
    """A record of ``ambidex.receivable-position`` (``value`` None: a tombstone)."""
    if value is None:
        try:
            contract_id = int((key or b"").decode())
        except ValueError:
            raise BadInput(f"{POSITIONS_TOPIC} tombstone with key {key!r}: not a "
                           "contract id") from None
        return Change(POSITION, contract_id, (offset,), None)
    position = ReceivablePosition.from_record(value)
    return Change(POSITION, position.contract_id, (offset,), node_of(position))


class ValueFold(TransactionFold[Change, Outcome]):
    """See the module docstring."""

    def __init__(self, kv: KeyValue, *, decode: Callable[[bytes], Mapping[str, Any]],
                 max_hold: timedelta = timedelta(seconds=300)) -> None:
        super().__init__(COLLECTIONS, max_hold=max_hold)
        self.core = CustomerValues(kv)
        self._decode = decode
        self._positions: list[Handle] = []
        self._bad: list[tuple[Handle, BadInput]] = []
        self.seen: dict[str, datetime] = {}

    # ------------------------------------------------------------------ the policy

    def parse(self, event: ChangeEvent) -> Change:
        return parse_change(event)

    def apply(self, records: Sequence[Change], transaction: CompleteTransaction,
              outcome: Outcome) -> None:
        for change in records:
            self._fold(change, outcome)

    def _fold(self, change: Change, outcome: Outcome) -> None:
        touched = self.core.apply(change.source, change.row_id, change.position, change.node)
        if touched.stale:
            outcome.stale += 1
        outcome.touched |= touched.values

    def new_outcome(self) -> Outcome:
        return Outcome()

    def observe(self, database: str, at: datetime) -> None:
        if database not in self.seen or at > self.seen[database]:
            self.seen[database] = at

    # ------------------------------------------------------------------ positions

    def published(self, handle: Handle) -> None:
        """A record of ``ambidex.receivable-position``: folded in :meth:`finish`."""
        self._positions.append(handle)

    def _fold_positions(self, outcome: Outcome) -> None:
        taken, self._positions = self._positions, []
        for handle in taken:
            try:
                value = None if handle.value is None else self._read(handle.value)
                change = parse_position(handle.key, value, handle.offset)
            except BadInput as error:
                self._bad.append((handle, error))
                continue
            self._fold(change, outcome)
            outcome.positions += 1

    def _read(self, value: bytes) -> Mapping[str, Any]:
        try:
            return self._decode(value)
        except BadInput:
            raise
        except (ValueError, KeyError, TypeError, EOFError, IndexError) as error:
            raise BadInput(f"{POSITIONS_TOPIC}: unreadable record: {error}") from None

    def steps(self, caught_up: Collection[str]) -> Pausable[Applied[Outcome]]:
        """The kit's step, plus the positions folded (and released) with it."""
        handles = list(self._positions)
        out: Applied[Outcome] = yield from super().steps(caught_up)
        out.release.extend(handles)
        out.dead_letters.extend(self._bad)
        self._bad = []
        return out

    def finish(self, outcome: Outcome, caught_up: Collection[str]) -> None:
        self._fold_positions(outcome)
        for key in sorted(outcome.touched):
            outcome.values[key] = self.core.value(*key)
        outcome.as_of = min(self.seen.values()) if self.seen else None

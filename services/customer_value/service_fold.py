"""customer-value's fold on the kit: whole source transactions -> the figures to write.

A :class:`~services.shared.transaction_fold.TransactionFold` around the core
(:class:`~.fold.CustomerValues`):

* :meth:`ValueFold.parse` types each change with the canonical records
  (``services/shared/source_records``) into a :class:`Change` (a bad row or a change
  without an integer id: :class:`BadInput`; the kit rejects its transaction whole); a
  TRUNCATE gets its table's declared answer (:mod:`.truncates`: ``needs_resnapshot``,
  dead letter + alert, the rest of its transaction applied);
* :meth:`ValueFold.apply` folds the rows of a whole transaction;
* receivables' positions (``ambidex.receivable-position``, Avro, in no source
  transaction) come in through :meth:`ValueFold.published` and are folded at the end
  of the step (their position is the record's offset: the topic is keyed by contract,
  so a contract's records keep their order); an unreadable one is dead-lettered, a
  tombstone removes the contract's position;
* production-status's statuses (``ambidex.fulfilment-status``, Avro, keyed by CRM
  order) come in the same way and feed the open delay risks per account
  (:mod:`.risks`; the order's account from ``crm.sales_order``);
* :meth:`ValueFold.finish` turns what the step touched into the figures to write and
  publish (:class:`Outcome`: each (account, month, currency) with its
  :class:`~.figures.CustomerValue`, or None when nothing is left there), the accounts
  whose open delay risks changed, the as-of time (the older of the two databases'
  source times) and the write position.

State beside the core's: ``m`` -> :class:`Meta` (per-database source time, the write
revision and the highest write position's as-of), so the as-of time and the write
position survive a restart and a restore.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from services.customer_value.figures import CustomerValue
from services.customer_value.fold import CustomerValues, Position, ValueKey
from services.customer_value.risks import (
    STATUS_TOPIC,
    AccountRisks,
    DelayRisks,
    OrderRisk,
    order_key,
)
from services.customer_value.sources import POSITION, TABLES, Node, ReceivablePosition, node_of
from services.customer_value.truncates import TRUNCATES
from services.shared.changes import ChangeEvent, ChangeOp
from services.shared.cooperative import Pausable
from services.shared.errors import BadInput
from services.shared.position import SourcePosition
from services.shared.source_records import record_type
from services.shared.state.store import KeyValue
from services.shared.stateful import Handle
from services.shared.transaction_fold import Applied, TransactionFold
from services.shared.transactions import CompleteTransaction

#: ``schema.table`` of every consumed table (as Debezium's transaction metadata names them)
COLLECTIONS = TABLES
#: the published topic whose records :meth:`ValueFold.published` takes
POSITIONS_TOPIC = "ambidex.receivable-position"
#: the published topics read (receivables' positions, production-status's statuses)
PUBLISHED_TOPICS = (POSITIONS_TOPIC, STATUS_TOPIC)
META = b"m"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Change:
    source: str
    row_id: int
    position: Position
    node: Node | None  # None: the row was deleted
    #: crm.sales_order: its account (for the open delay risks); None otherwise
    account: int | None = None


@dataclass
class Outcome:
    """What one step changed."""

    touched: set[ValueKey] = field(default_factory=set)
    #: (account, month, currency) -> its figures, None when nothing is left there
    values: dict[ValueKey, CustomerValue | None] = field(default_factory=dict)
    as_of: datetime | None = None
    #: the write-back's position (as-of in ms, revision); None: nothing to write
    position: SourcePosition | None = None
    #: accounts whose open delay risks changed -> what they are now
    risks: dict[int, AccountRisks] = field(default_factory=dict)
    risk_accounts: set[int] = field(default_factory=set)
    stale: int = 0
    positions: int = 0
    statuses: int = 0


@dataclass
class Meta:
    """What the fold keeps beside the figures (key ``m``)."""

    seen: dict[str, datetime] = field(default_factory=dict)
    revision: int = 0
    #: the as-of (ms) of the highest write position used or found in the table: a write
    #: never goes below it (a replay's source time starts far back)
    written_ms: int = 0

    def encode(self) -> bytes:
        return orjson.dumps({"seen": {db: t.isoformat() for db, t in self.seen.items()},
                             "revision": self.revision, "written_ms": self.written_ms})

    @classmethod
    def decode(cls, raw: bytes | None) -> Meta:
        if raw is None:
            return cls()
        d = orjson.loads(raw)
        return cls({db: datetime.fromisoformat(t) for db, t in d["seen"].items()},
                   int(d["revision"]), int(d["written_ms"]))


def as_of_ms(at: datetime) -> int:
    return (at - EPOCH) // timedelta(milliseconds=1)


def parse_change(event: ChangeEvent) -> Change:
    """One captured change as the node of its row (pure; ``BadInput`` when bad)."""
    source = f"{event.database}.{event.table}"
    if event.op is ChangeOp.TRUNCATE:  # the fold answers it before parse (.truncates)
        raise BadInput(f"TRUNCATE of {source}: not a row (re-snapshot the table)")
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
    account = record.account_id if source == "crm.sales_order" else None
    return Change(source, row_id, position, node_of(record), account)


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
        super().__init__(COLLECTIONS, truncates=TRUNCATES, max_hold=max_hold)
        self.kv = kv
        self.core = CustomerValues(kv)
        self.risks = DelayRisks(kv)
        self._decode = decode
        self._positions: list[Handle] = []
        self._statuses: list[Handle] = []
        self._bad: list[tuple[Handle, BadInput]] = []
        self.meta = Meta.decode(kv.get(META))

    @classmethod
    def load(cls, kv: KeyValue, *, decode: Callable[[bytes], Mapping[str, Any]],
             max_hold: timedelta) -> ValueFold:
        return cls(kv, decode=decode, max_hold=max_hold)

    @property
    def seen(self) -> dict[str, datetime]:
        return self.meta.seen

    @property
    def as_of(self) -> datetime | None:
        """The older of the two databases' source times (None before any was seen)."""
        return min(self.meta.seen.values()) if self.meta.seen else None

    def floor(self, at: datetime, revision: int) -> None:
        """Never write below what the table already holds (the shell reads it at
        start)."""
        self.meta.written_ms = max(self.meta.written_ms, as_of_ms(at))
        self.meta.revision = max(self.meta.revision, revision)

    def current(self) -> Iterator[CustomerValue]:
        """Every account's figures as the state holds them (between steps only: the
        dashboard's first load)."""
        for key in self.core.value_keys():
            value = self.core.value(*key)
            if value is not None:
                yield value

    def open_risks(self) -> Iterator[AccountRisks]:
        """Every account with an open delay risk (between steps only)."""
        for account in self.risks.accounts():
            yield self.risks.of(account)

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
            return
        outcome.touched |= touched.values
        if change.source == "crm.sales_order":
            account = None if change.node is None else change.account
            outcome.risk_accounts |= self.risks.order(change.row_id, account)

    def new_outcome(self) -> Outcome:
        return Outcome()

    def observe(self, database: str, at: datetime) -> None:
        seen = self.meta.seen
        if database not in seen or at > seen[database]:
            seen[database] = at

    # ------------------------------------------------------------------ positions

    def published(self, handle: Handle) -> None:
        """A record of ``ambidex.receivable-position`` or ``ambidex.fulfilment-status``:
        folded in :meth:`finish`."""
        if handle.topic == STATUS_TOPIC:
            self._statuses.append(handle)
        else:
            self._positions.append(handle)

    def _fold_statuses(self, outcome: Outcome) -> None:
        taken, self._statuses = self._statuses, []
        for handle in taken:
            try:
                order = order_key(handle.key)
                risk = None if handle.value is None else OrderRisk.from_record(
                    self._read(handle.value, STATUS_TOPIC))
                if risk is not None and risk.crm_order_id != order:
                    raise BadInput(f"{STATUS_TOPIC}: record of order {risk.crm_order_id} "
                                   f"under key {order}")
            except BadInput as error:
                self._bad.append((handle, error))
                continue
            moved = self.risks.status(order, handle.offset, risk)
            if moved is None:
                outcome.stale += 1
                continue
            outcome.risk_accounts |= moved
            outcome.statuses += 1

    def _fold_positions(self, outcome: Outcome) -> None:
        taken, self._positions = self._positions, []
        for handle in taken:
            try:
                value = None if handle.value is None else self._read(handle.value,
                                                                      POSITIONS_TOPIC)
                change = parse_position(handle.key, value, handle.offset)
            except BadInput as error:
                self._bad.append((handle, error))
                continue
            self._fold(change, outcome)
            outcome.positions += 1

    def _read(self, value: bytes, topic: str) -> Mapping[str, Any]:
        try:
            return self._decode(value)
        except BadInput:
            raise
        except (ValueError, KeyError, TypeError, EOFError, IndexError) as error:
            raise BadInput(f"{topic}: unreadable record: {error}") from None

    def steps(self, caught_up: Collection[str]) -> Pausable[Applied[Outcome]]:
        """The kit's step, plus the positions folded (and released) with it."""
        handles = [*self._positions, *self._statuses]
        out: Applied[Outcome] = yield from super().steps(caught_up)
        out.release.extend(handles)
        out.dead_letters.extend(self._bad)
        self._bad = []
        return out

    def finish(self, outcome: Outcome, caught_up: Collection[str]) -> None:
        self._fold_positions(outcome)
        self._fold_statuses(outcome)
        for key in sorted(outcome.touched):
            outcome.values[key] = self.core.value(*key)
        for account in sorted(outcome.risk_accounts):
            outcome.risks[account] = self.risks.of(account)
        outcome.as_of = self.as_of
        if outcome.values:
            meta = self.meta
            meta.revision += 1
            at = EPOCH if outcome.as_of is None else outcome.as_of
            meta.written_ms = max(meta.written_ms, as_of_ms(at))
            outcome.position = SourcePosition(meta.written_ms, meta.revision)
        self.kv.put(META, self.meta.encode())

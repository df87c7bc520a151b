"""production-status's fold on the kit: whole source transactions -> what to write and publish.

A :class:`~services.shared.transaction_fold.TransactionFold` around the pure core:

* :meth:`StatusFold.parse` types each row with :mod:`.records` (a bad row or a change
  without an integer id: :class:`BadInput`, and its whole transaction is rejected by
  the kit); a TRUNCATE gets its table's declared answer (:mod:`.truncates`:
  ``needs_resnapshot``, dead letter + alert, the rest of its transaction applied);
* :meth:`StatusFold.apply` folds the rows into :class:`~.fold.ProgressFold`;
* a row naming a parent not seen yet (:data:`.records.PARENTS`: an order line,
  production order or shipment of an unknown ERP order, an inspection of an unknown
  production order, a shipment line of an unknown shipment, a service case of an
  unknown CRM order) is folded all the same (it shows once the parent comes) and
  awaits a verdict (:mod:`services.shared.verdicts`): its record stays unreleased until
  the parent's database is read to its end (the runner's reference topics) and that
  database's source time passes the row's commit by the grace; then, the parent still
  unknown, it is dead-lettered once (cause ``unknown_reference``) and released;
* order identities (``ambidex.order-identity``, published by order-sync, in no source
  transaction) come in through :meth:`StatusFold.published` and are folded at the end
  of the step; an unreadable one is dead-lettered;
* :meth:`StatusFold.finish` builds, for every CRM order the step touched (and a slice
  of open orders as time passes), its status, its risk transition and the triage of
  its cases, as the records :mod:`.publish` defines; unchanged ones are not sent again.
* while the worker reads a backlog (a source database not read to its end, and the
  source clock more than :data:`DEFER_LAG` behind the wall clock: a replay, a restart
  after downtime), the orders a step touches are *deferred* (``dz:<crm order>``)
  instead: an order's changes come on seven topics, read in different steps, and its
  status was built and sent once per step, most of a replay's time. Once both
  databases are read to their end, the source clock is within :data:`DEFER_LAG`, or the
  oldest deferral is :data:`DEFER_FOR` old (process clock), the deferred orders are
  built, at most :data:`DEFER_SLICE` a step, with the progress of the backlog folded so
  far and at the source clock of then. Live, even a few seconds behind, nothing is
  deferred (the wall clock decides when a status is built, never what it says).

The clock (why source time): delay risk and the predicted dates depend on "now". The
fold never reads the wall clock: ``now`` is the *older* of the two databases' source
times (the latest commit time or Debezium heartbeat seen from each), and never goes
back. A replay therefore assesses every change at the source time it was made at (give
or take a heartbeat), and the final answers depend only on the source topics. Until
both databases were seen the clock is unknown: statuses are published, risk is not
assessed.

State beside the core's (``services/production_status/fold.py`` names its keys):
``m`` -> meta (per-database source time, the clock, the write revision, counts per
stage and risk level, orders deferred); ``dz:<crm order>`` a deferred order;
``ps:<crm order>`` -> what was last published for the order (digest, line numbers,
stage, level); ``pt:<case>`` -> the digest of its last triage;
``v:<table code><id>`` -> the position of the row's newest version dead-lettered for an
unknown parent (a redelivery or replay of it is not judged again).
"""

from __future__ import annotations

import hashlib
import struct
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from services.production_status import publish
from services.production_status.fold import ProgressFold
from services.production_status.records import (
    CRM_ORDER,
    ERP_ORDER,
    PRODUCTION_ORDER,
    SERVICE_CASE,
    SHIPMENT,
    CrmRow,
    Row,
    dumps,
    identity_from_record,
    loads,
    parent_of,
    parse,
)
from services.production_status.risk import assess, last_risk, transition
from services.production_status.status import line_statuses, order_status
from services.production_status.stored import CODES, key_id
from services.production_status.triage import triage
from services.production_status.truncates import TRUNCATES
from services.shared.changes import ChangeEvent, ChangeOp
from services.shared.cooperative import Pausable
from services.shared.errors import BadInput
from services.shared.position import SourcePosition
from services.shared.state.store import KeyValue
from services.shared.stateful import Handle
from services.shared.transaction_fold import Applied, TransactionFold
from services.shared.transactions import CompleteTransaction
from services.shared.verdicts import Awaiting, UnknownReference, Verdicts

CRM, ERP = "crm", "erp"
ERP_TABLES = (
    "sales_order", "sales_order_line", "production_order", "quality_inspection", "shipment",
    "shipment_line",
)
CRM_TABLES = ("sales_order", "service_case")
COLLECTIONS = (*(f"erp.{t}" for t in ERP_TABLES), *(f"crm.{t}" for t in CRM_TABLES))
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
META = b"m"
#: open orders re-assessed as source time passes: at most this many per step, once the
#: clock moved SWEEP_EVERY since the last slice (a round over 10,000 open orders takes
#: 20 slices)
SWEEP_SLICE = 500
SWEEP_EVERY = timedelta(seconds=60)
#: deferred orders built per step once the sources are read to their end
DEFER_SLICE = 2_000
#: deferred orders are built once the oldest waited this long (process clock, seconds)
DEFER_FOR = 30.0
#: a worker whose source clock is less than this behind the wall clock defers nothing
DEFER_LAG = timedelta(seconds=60)

_pack = struct.Struct(">q").pack
Decode = Callable[[bytes], Mapping[str, Any]]
#: what a parent is called in a dead letter's reason
PARENT_NAMES = {ERP_ORDER: "ERP order", PRODUCTION_ORDER: "production order",
                SHIPMENT: "shipment", CRM_ORDER: "CRM order"}
#: a row awaiting its parent: (table, id)
RowRef = tuple[str, int]


def _verdict_key(row: RowRef) -> bytes:
    return b"v:" + CODES[row[0]] + _pack(row[1])


def database_of(table: str) -> str:
    return CRM if table.startswith("crm.") else ERP


def collection_of(table: str) -> str:
    """``schema.table`` of a table as :data:`.records.TABLES` names it."""
    return table if table.startswith("crm.") else f"erp.{table}"


@dataclass(frozen=True, slots=True)
class Change:
    """One typed row version: ``row`` None for a delete."""

    table: str  # as :data:`.records.TABLES` names it
    row_id: int
    position: SourcePosition
    row: Row | CrmRow | None


@dataclass
class Outcome:
    """What one step changed, as the records to write and publish."""

    crm_orders: set[int] = field(default_factory=set)
    cases: set[int] = field(default_factory=set)
    stale: int = 0
    statuses: list[dict[str, Any]] = field(default_factory=list)
    #: (crm order, line no) rows the order no longer has
    lines_removed: list[tuple[int, int]] = field(default_factory=list)
    risks: list[dict[str, Any]] = field(default_factory=list)
    triages: list[dict[str, Any]] = field(default_factory=list)
    triages_removed: list[int] = field(default_factory=list)
    identities: int = 0
    #: the write-back's position (as of in ms, revision); None: nothing to write
    position: SourcePosition | None = None

    @property
    def writes_anything(self) -> bool:
        return bool(self.statuses or self.lines_removed or self.risks or self.triages
                    or self.triages_removed)


@dataclass
class Meta:
    seen: dict[str, datetime] = field(default_factory=dict)
    now: datetime = EPOCH
    revision: int = 0
    stages: dict[str, int] = field(default_factory=dict)
    levels: dict[str, int] = field(default_factory=dict)
    #: the as-of (ms) of the highest write position used or found in the write-back: a
    #: write never goes below it, whatever the clock (a replay's clock starts far back)
    written_ms: int = 0
    #: orders whose status waits for the backlog to be read (``dz:`` keys)
    deferred: int = 0

    def encode(self) -> bytes:
        return dumps({"seen": {db: t.isoformat() for db, t in self.seen.items()},
                      "now": self.now.isoformat(), "revision": self.revision,
                      "stages": self.stages, "levels": self.levels,
                      "written_ms": self.written_ms, "deferred": self.deferred})

    @classmethod
    def decode(cls, raw: bytes | None) -> Meta:
        if raw is None:
            return cls()
        data = loads(raw)
        return cls({db: datetime.fromisoformat(t) for db, t in data["seen"].items()},
                   datetime.fromisoformat(data["now"]), int(data["revision"]),
                   dict(data["stages"]), dict(data["levels"]), int(data.get("written_ms", 0)),
                   int(data.get("deferred", 0)))


def _digest(record: Mapping[str, Any], stamp: str) -> str:
    """What a record says, its time stamp aside (republished only when this changes)."""
    content = {k: v for k, v in record.items() if k != stamp}
    text = orjson.dumps(content, default=str, option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(text, digest_size=16).hexdigest()


def as_of_ms(at: datetime) -> int:
    return (at - EPOCH) // timedelta(milliseconds=1)


class StatusFold(TransactionFold[Change, Outcome]):
    """See the module docstring."""

    def __init__(self, kv: KeyValue, decode: Decode, *,
                 max_hold: timedelta = timedelta(seconds=300),
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        super().__init__(COLLECTIONS, truncates=TRUNCATES, max_hold=max_hold, clock=clock)
        self._monotonic = clock
        self._wall = wall
        #: when the deferred set last became non-empty (process clock); a worker that
        #: loads deferred orders counts from its start
        self._deferred_since: float | None = None
        self.kv = kv
        self.core = ProgressFold(kv)
        self._decode = decode
        self.meta = Meta.decode(kv.get(META))
        self._identities: list[Handle] = []
        self._bad: list[tuple[Handle, BadInput]] = []
        self._cursor: bytes | None = None
        self._last_sweep = self.meta.now
        #: rows naming a parent not seen yet, awaiting their verdict
        self.verdicts: Verdicts[RowRef] = Verdicts(memory=(kv, _verdict_key))

    @classmethod
    def load(cls, kv: KeyValue, *, decode: Decode, max_hold: timedelta) -> StatusFold:
        return cls(kv, decode, max_hold=max_hold)

    # ------------------------------------------------------------------ the clock

    @property
    def now(self) -> datetime:
        return self.meta.now

    @property
    def clock_known(self) -> bool:
        return CRM in self.meta.seen and ERP in self.meta.seen

    def observe(self, database: str, at: datetime) -> None:
        seen = self.meta.seen
        if at > seen.get(database, EPOCH):
            seen[database] = at
        if self.clock_known:
            self.meta.now = max(self.meta.now, min(seen[CRM], seen[ERP]))

    def floor(self, at: datetime, revision: int) -> None:
        """Never write below what the write-back already holds (the shell reads it at
        start): the write position and the revision start at least there. The clock is
        left to the sources, so a worker rebuilt from them assesses each change at the
        time it was made, as the live run did (no risk raised that it did not raise)."""
        self.meta.written_ms = max(self.meta.written_ms, as_of_ms(at))
        self.meta.revision = max(self.meta.revision, revision)

    # ------------------------------------------------------------------ rows

    def parse(self, event: ChangeEvent) -> Change:
        table = event.table if event.database == ERP else f"{event.database}.{event.table}"
        if event.op is ChangeOp.TRUNCATE:  # answered by the kit before parse (.truncates)
            raise BadInput(f"TRUNCATE of {event.data_collection}: not a row")
        row_id = event.key.get("id")
        if isinstance(row_id, bool) or not isinstance(row_id, int):
            raise BadInput(f"{event.data_collection} change without an integer id")
        if event.is_delete:
            return Change(table, row_id, event.position, None)
        if event.after is None:
            raise BadInput(f"{event.data_collection} {row_id}: change without a row")
        return Change(table, row_id, event.position, parse(table, event.after))

    def apply(self, records: Sequence[Change], transaction: CompleteTransaction,
              outcome: Outcome) -> None:
        whole = self.applying
        for change, event in zip(records, transaction.events, strict=True):
            applied = self.core.apply(change.table, change.row_id, change.position, change.row)
            if applied.changed:
                outcome.crm_orders |= applied.crm_orders
                outcome.cases |= applied.cases
            else:
                outcome.stale += 1
            # a redelivered version still awaits (its record was withheld before)
            handle = None if whole is None else whole.handle_of(event)
            if handle is not None and change.row is not None:
                self._await_parent(change, change.row, transaction.commit_time, handle)

    def new_outcome(self) -> Outcome:
        return Outcome()

    # ------------------------------------------------------------------ unknown parents

    def _await_parent(self, change: Change, row: Row | CrmRow, commit_time: datetime,
                      handle: Handle) -> None:
        parent = parent_of(change.table, row)
        if parent is None or self.core.present(*parent):
            return
        stored = self.core.record(change.table, change.row_id)
        if stored is None or stored.position != change.position:
            return  # a newer version speaks for the row
        self.verdicts.wait((change.table, change.row_id), parent, database_of(parent[0]),
                           change.position, commit_time, handle)

    def _settled(self, entry: Awaiting[RowRef]) -> bool:
        """The row's parent is known now, or the row no longer names it (changed, gone)."""
        rec = self.core.record(*entry.row)
        if rec is None or rec.row is None:
            return True
        parent = parent_of(entry.row[0], rec.row)
        return parent != entry.reference or self.core.present(*entry.reference)

    def _unknown_parent(self, entry: Awaiting[RowRef]) -> UnknownReference:
        table, row_id = entry.row
        parent_table, parent_id = entry.reference
        name = PARENT_NAMES[parent_table]
        return UnknownReference(
            f"{collection_of(table)} {row_id}: {name} {parent_id} is unknown to the "
            f"{entry.database.upper()} topics {self.verdicts.grace_text} (source time) "
            f"after the change, read to their end; the row is kept and shows once that "
            f"{name} appears")

    # ------------------------------------------------------------------ identities

    def published(self, handle: Handle) -> None:
        """A record of ``ambidex.order-identity``: folded in :meth:`finish`."""
        self._identities.append(handle)

    def _fold_identities(self, outcome: Outcome) -> None:
        taken, self._identities = self._identities, []
        for handle in taken:
            if handle.value is None:
                continue  # a tombstone of the compacted topic: nothing to fold
            try:
                identity = identity_from_record(self._decode(handle.value))
            except BadInput as error:
                self._bad.append((handle, error))
                continue
            applied = self.core.apply_identity(identity)
            outcome.identities += 1
            outcome.crm_orders |= applied.crm_orders

    def steps(self, caught_up: Collection[str]) -> Pausable[Applied[Outcome]]:
        """The kit's step, plus the identities folded (and released) with it, and the
        verdicts on rows naming an unknown parent (their records held until then)."""
        handles = list(self._identities)
        out: Applied[Outcome] = yield from super().steps(caught_up)
        out.release.extend(handles)
        out.dead_letters.extend(self._bad)
        self._bad = []
        self.verdicts.judge(out, caught_up=caught_up, times=self.streamed,
                            settled=self._settled, error=self._unknown_parent)
        return out

    # ------------------------------------------------------------------ the step's records

    def finish(self, outcome: Outcome, caught_up: Collection[str]) -> Pausable[None]:
        """The step's statuses, risks and triages; pausable between any two orders (a
        step's few thousand orders held the event loop for seconds)."""
        self._fold_identities(outcome)
        self.core.settle()  # the open orders' marks, before the sweep reads them
        now = self.now
        orders = set(outcome.crm_orders)
        if self.clock_known and now - self._last_sweep >= SWEEP_EVERY:
            self._last_sweep = now
            orders |= self._sweep()
        backlog = not (CRM in caught_up and ERP in caught_up) and (
            not self.clock_known or self._wall() - now > DEFER_LAG)
        if backlog:
            self._defer(orders)
            orders = set()
            if self._monotonic() - (self._deferred_since or 0.0) >= DEFER_FOR:
                orders = self._undefer()
        else:
            orders |= self._undefer()
        for crm in sorted(orders):
            yield None
            self._order(crm, now, outcome)
            outcome.cases.update(self.core.cases_of(crm))
        for case in sorted(outcome.cases):
            yield None
            self._case(case, now, outcome)
        if outcome.writes_anything:
            self.meta.revision += 1
            self.meta.written_ms = max(self.meta.written_ms, as_of_ms(now))
            outcome.position = SourcePosition(self.meta.written_ms, self.meta.revision)
        self.kv.put(META, self.meta.encode())

    def _defer(self, orders: Collection[int]) -> None:
        if self._deferred_since is None or not self.meta.deferred:
            self._deferred_since = self._monotonic()
        for crm in orders:
            key = b"dz:" + _pack(crm)
            if self.kv.get(key) is None:
                self.kv.put(key, b"")
                self.meta.deferred += 1

    def _undefer(self) -> set[int]:
        """Up to :data:`DEFER_SLICE` deferred orders, no longer deferred."""
        taken: set[int] = set()
        for key, _ in self.kv.scan(b"dz:"):
            if len(taken) >= DEFER_SLICE:
                break
            taken.add(key_id(key))
        for crm in taken:
            self.kv.delete(b"dz:" + _pack(crm))
        self.meta.deferred -= len(taken)
        if not self.meta.deferred:
            self._deferred_since = None
        return taken

    def _sweep(self) -> set[int]:
        found: set[int] = set()
        count = 0
        for key, _ in self.kv.scan(b"op:", self._cursor):
            if key == self._cursor:
                continue
            count += 1
            self._cursor = key
            crm = self.core.crm_order_of(key_id(key))
            if crm is not None:
                found.add(crm)
            if count >= SWEEP_SLICE:
                return found
        self._cursor = None  # the round is complete: start over next time
        return found

    def _order(self, crm: int, now: datetime, outcome: Outcome) -> None:
        status = order_status(self.core, crm, now)
        if status is None:
            return  # no identity yet: its progress is held under the ERP order
        if self.clock_known:
            assessment = assess(status, self.core.figures(status.erp_order_id),
                                self.core.durations, now)
            event = transition(self.kv, status, assessment, now)
            if event is not None:
                outcome.risks.append(publish.risk_record(event))
        lines = line_statuses(self.core, status.erp_order_id, now)
        level, reason = last_risk(self.kv, crm)
        record = publish.status_record(status, lines, (level, reason), now)
        digest = _digest(record, "updated_at")
        key = b"ps:" + _pack(crm)
        raw = self.kv.get(key)
        before = None if raw is None else loads(raw)
        if before is not None and before[0] == digest:
            return
        line_nos = sorted(line["line_no"] for line in record["lines"])
        if before is not None:
            outcome.lines_removed += [(crm, n) for n in before[1] if n not in line_nos]
            _count(self.meta.stages, before[2], -1)
            _count(self.meta.levels, before[3], -1)
        _count(self.meta.stages, record["stage"], 1)
        _count(self.meta.levels, record["risk_level"], 1)
        self.kv.put(key, dumps([digest, line_nos, record["stage"], record["risk_level"]]))
        outcome.statuses.append(record)

    def _case(self, case: int, now: datetime, outcome: Outcome) -> None:
        key = b"pt:" + _pack(case)
        result = triage(self.core, case, now)
        if result is None:
            if self.kv.get(key) is not None:
                self.kv.delete(key)
                outcome.triages_removed.append(case)
            return
        record = publish.triage_record(result)
        digest = _digest(record, "triaged_at")
        if self.kv.get(key) == digest.encode():
            return
        self.kv.put(key, digest.encode())
        outcome.triages.append(record)

    # ------------------------------------------------------------------ reads

    def published_orders(self) -> int:
        return sum(self.meta.stages.values())


def _count(counts: dict[str, int], name: str, sign: int) -> None:
    left = counts.get(name, 0) + sign
    if left > 0:
        counts[name] = left
    else:
        counts.pop(name, None)


__all__ = ["COLLECTIONS", "CRM_ORDER", "SERVICE_CASE", "Change", "Outcome", "StatusFold"]

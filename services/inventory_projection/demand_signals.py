"""Demand signals inside inventory-projection's process, over its state (docs/demand-signals.md).

:class:`DemandSide` is the projection's :class:`~.projector.Companion`: the
:class:`~.projector.Projector` hands it every whole source transaction right after
folding it (so a feasibility request is judged against ATP, reservations and incoming
at the source position it was committed behind, all from the one state), and the end
of each step (the keys the projection republished: their supply changed). It folds
the CRM quote, quote line, order, order line, product and feasibility request rows
into the pure :class:`~services.demand_signals.fold.DemandSignals`, under its own key
space of the same state (``D`` + the core's keys: one checkpoint, one changelog, one
source position for both), and keeps what its effects
(:mod:`.demand_effects`) must do until the step is committed.

* **The supply view** (:class:`ProjectionView`): items, warehouses and ATP/incoming
  are the projection's own figures; what an order holds of a key is its pending CRM
  demand (:class:`~.demand.DemandBook`) plus ``qty_reserved`` of its ERP order's lines
  (delivered quantities have left stock: not added back); the items' lead times
  (``erp.item.lead_time_days``) are folded here, position-guarded (``DL:<item>``).
* **Holds**: a request naming an order or product not seen yet is answered so only
  once the CRM's reference topics are read to their end and the CRM watermark is
  :data:`~.source_rows.UNKNOWN_REFERENCE_GRACE` past its commit (the order may sit in a
  partition read later): until then its record is withheld from the step's release
  (a restart redelivers it) and judged again each step. At most :data:`HOLD_LIMIT`
  wait; beyond that a request is answered at once. Never silence.
* **Bad rows** (:class:`~services.demand_signals.records.BadRow`) go to the step's dead
  letters with their reason, the rest of the transaction folds on (as the projection's).
"""

from __future__ import annotations

import struct
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Generic, TypeVar

import orjson

from services.demand_signals.feasibility import Answer
from services.demand_signals.fold import DemandSignals, Hold, Outcome
from services.demand_signals.ports import ItemRef, Supply
from services.demand_signals.records import BadRow, Table
from services.demand_signals.surge import SurgeRules
from services.inventory_projection.available_to_promise import AvailabilityKey
from services.inventory_projection.projector import Projector
from services.inventory_projection.records import CrmOrder
from services.inventory_projection.row_store import RowStore
from services.inventory_projection.source_rows import (
    CRM,
    CRM_ORDER,
    UNKNOWN_REFERENCE_GRACE,
    ZERO,
)
from services.inventory_projection.step import AppendedAt, Step
from services.inventory_projection.truncates import load_truncated
from services.shared.changes import ChangeEvent, ChangeOp
from services.shared.cooperative import Pausable
from services.shared.errors import BadInput
from services.shared.holding import Whole
from services.shared.position import SourcePosition
from services.shared.state.store import KeyValue, Prefixed

H = TypeVar("H")

#: the demand fold's key space inside the projection's state (no projection key
#: starts with it)
DEMAND_PREFIX = b"D"
LEAD_PREFIX = b"L:"
#: captured tables only demand signals reads (the projection folds the others it uses)
OWN_COLLECTIONS = frozenset({"crm.quote", "crm.quote_line", "crm.feasibility_request"})
CHANGE_TOPICS = tuple(f"cdc.{c}" for c in sorted(OWN_COLLECTIONS))
TABLES: Mapping[str, Table] = {t.value: t for t in Table}
ITEM_COLLECTION = "erp.item"  # its lead time
#: requests awaiting their order's or product's row at most (beyond: answered at once)
HOLD_LIMIT = 10_000
PAUSE_EVERY = 64

_q = struct.Struct(">q")


def _lead_key(item_id: int) -> bytes:
    return LEAD_PREFIX + _q.pack(item_id)


class ProjectionView:
    """:class:`~services.demand_signals.ports.SupplyView` over the projection's state."""

    def __init__(self, store: RowStore, kv: KeyValue) -> None:
        self.store = store
        self.kv = kv

    def lead_time(self, item_id: int) -> int:
        raw = self.kv.get(_lead_key(item_id))
        data = None if raw is None else orjson.loads(raw)
        return 0 if data is None or len(data) < 3 else int(data[2])

    def item(self, sku: str) -> ItemRef | None:
        item = self.store.item_by_sku(sku)
        return None if item is None else ItemRef(item.id, item.sku, self.lead_time(item.id))

    def warehouse(self, code: str) -> int | None:
        warehouse = self.store.warehouse_by_code(code)
        return None if warehouse is None else warehouse.id

    def supply(self, item_id: int, warehouse_id: int | None) -> Supply:
        figures = self.store.availability(AvailabilityKey(item_id, warehouse_id))
        if figures is None:
            return Supply(ZERO)
        return Supply(figures.available_to_promise, figures.incoming)

    def held_by_order(self, crm_order_id: int, item_id: int, warehouse_id: int) -> Decimal:
        orders = self.store.orders
        demand = orders.demand.order(crm_order_id)
        held = ZERO if demand is None else demand.pending.get(
            AvailabilityKey(item_id, warehouse_id), ZERO)
        order = orders.record(CRM_ORDER, crm_order_id)
        if not isinstance(order, CrmOrder):
            return held
        warehouse = self.store.warehouse_by_code(order.warehouse_code)
        if warehouse is None or warehouse.id != warehouse_id:
            return held  # its reservations are in its own warehouse, not this one
        for line in orders.erp_lines_of(crm_order_id):
            if line.item_id == item_id:
                held += line.qty_reserved
        return held


def lead_time_days(row: Mapping[str, Any]) -> int:
    value = row.get("lead_time_days", 0)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRow(f"erp.item.lead_time_days is {value!r}, not a whole number of days >= 0")
    return value


def _unknown_reference(answer: Answer) -> bool:
    reason = answer.reason or ""
    return reason.startswith(("unknown_order:", "unknown_product:"))


@dataclass(eq=False)
class _Held(Generic[H]):
    """A request version whose answer waits for its order's or product's row."""

    row: Mapping[str, Any] | None
    position: SourcePosition
    commit_time: datetime
    #: when its transaction's newest record reached Kafka (None: not measured)
    appended: float | None
    withheld: list[H] = field(default_factory=list)
    """Handles kept out of an earlier step's release."""
    fresh: list[H] = field(default_factory=list)
    """Handles of this step (in its release list until :meth:`DemandSide.finish`)."""


@dataclass
class DemandStep:
    """What one step decided: the core's outcome and each answer's request position."""

    outcome: Outcome = field(default_factory=Outcome)
    positions: dict[int, SourcePosition] = field(default_factory=dict)
    commit_times: list[datetime] = field(default_factory=list)
    """Source commit time of each request answered (the feasibility latency)."""
    appended_times: list[float] = field(default_factory=list)
    """When each answered request's transaction's newest record reached Kafka (the
    service's own share of that latency; with :data:`AppendedAt` only)."""
    folded: int = 0


class DemandSide(Generic[H]):
    """The projection's companion fold; see the module docstring."""

    collections = OWN_COLLECTIONS

    def __init__(self, store: RowStore, rules: SurgeRules | None = None,
                 appended: AppendedAt[H] | None = None) -> None:
        self.store = store
        self.appended = appended
        self.kv = Prefixed(store.kv, DEMAND_PREFIX)
        self.view = ProjectionView(store, self.kv)
        self.signals = DemandSignals(self.kv, self.view, rules)
        self.step = DemandStep()
        self._dead: list[tuple[H, BadInput]] = []
        self._held: dict[int, _Held[H]] = {}
        self._released: list[H] = []
        self._moved = False

    @property
    def holding(self) -> int:
        return len(self._held)

    def take(self) -> DemandStep:
        """The step's effects (the next step starts empty)."""
        step, self.step = self.step, DemandStep()
        return step

    # ------------------------------------------------------------------ the companion

    def transaction(self, whole: Whole[Any], caught_up: Collection[str]) -> Pausable[None]:
        transaction = whole.transaction
        events = transaction.events
        if events and events[0].database == CRM and self.store.observe(
                CRM, transaction.commit_time, streamed=not transaction.snapshot_read):
            self._moved = True  # a quote-only transaction moves the CRM watermark too
        self._merge((yield from self.signals.advance_steps(self.store.as_of)))
        appended: float | None = None
        measured = self.appended is None  # computed once, for a transaction that counts
        for count, event in enumerate(events, start=1):
            if not count % PAUSE_EVERY:
                yield
            collection = event.data_collection
            if event.op is ChangeOp.TRUNCATE or (
                    collection not in TABLES and collection != ITEM_COLLECTION):
                continue  # stock rows (most of a replay); truncates: the projector's
            handle = whole.handle_of(event)
            if not measured and self.appended is not None:
                appended, measured = self.appended(whole.handles), True
            try:
                self._apply(event, handle, transaction.commit_time, appended, caught_up)
            except BadInput as error:
                if handle is not None:
                    self._dead.append((handle, error))

    def _apply(self, event: ChangeEvent, handle: H | None, commit_time: datetime,
               appended: float | None, caught_up: Collection[str]) -> None:
        collection = event.data_collection
        row_id = event.key.get("id")
        if row_id is None and event.row is not None:
            row_id = event.row.get("id")
        row = None if event.is_delete else event.after
        if collection == ITEM_COLLECTION:
            if isinstance(row_id, int):
                self._lead_time(row_id, event.position, row)
            return
        table = TABLES.get(collection)
        if table is None:
            return
        if isinstance(row_id, bool) or not isinstance(row_id, int):
            raise BadRow(f"{collection} change without an integer id")
        self.step.folded += 1
        if table is not Table.REQUEST:
            self._merge(self.signals.apply(table, row_id, event.position, row))
            return
        hold = self._hold(commit_time, caught_up)
        out = self.signals.apply(table, row_id, event.position, row, hold)
        entry = self._held.get(row_id)
        if out.held:
            if entry is None or entry.position < event.position:
                new = _Held[H](row, event.position, commit_time, appended)
                if entry is not None:
                    new.withheld, new.fresh = entry.withheld, entry.fresh
                entry = self._held[row_id] = new
            if handle is not None:
                entry.fresh.append(handle)
            return
        self._answered(row_id, event.position, out, commit_time, appended)

    def _answered(self, request_id: int, position: SourcePosition, out: Outcome,
                  commit_time: datetime, appended: float | None) -> None:
        self._merge(out)
        if request_id in out.answers:
            self.step.positions[request_id] = position
            self.step.commit_times.append(commit_time)
            if appended is not None:
                self.step.appended_times.append(appended)
        entry = self._held.get(request_id)
        if entry is not None and entry.position <= position:
            del self._held[request_id]  # answered or superseded: let its records go
            self._released.extend(entry.withheld)

    def _lead_time(self, item_id: int, position: SourcePosition,
                   row: Mapping[str, Any] | None) -> None:
        """Keep the item's lead time (the projection republishes the item's keys on any
        change of it, so :meth:`finish` judges them again with the new one)."""
        key = _lead_key(item_id)
        raw = self.kv.get(key)
        if raw is not None and position <= SourcePosition(*orjson.loads(raw)[:2]):
            return
        lead = None if row is None else lead_time_days(row)
        self.kv.put(key, orjson.dumps(
            [position.commit_lsn, position.lsn, *([] if lead is None else [lead])]))

    def _hold(self, commit_time: datetime, caught_up: Collection[str]) -> Hold | None:
        settled = CRM in caught_up and (
            self.store.streamed_time(CRM) >= commit_time + UNKNOWN_REFERENCE_GRACE)
        if settled or len(self._held) >= HOLD_LIMIT:
            return None
        return _unknown_reference

    def _merge(self, out: Outcome) -> None:
        self.step.outcome.merge(out)

    def finish(self, out: Step[Any], caught_up: Collection[str]) -> Pausable[None]:
        """Judge held requests again, the keys whose supply the projection republished,
        and a new day (pausable); withhold what still waits; add the dead letters."""
        self._merge((yield from self.signals.advance_steps(self.store.as_of)))
        for request_id, entry in sorted(self._held.items()):
            hold = self._hold(entry.commit_time, caught_up)
            again = self.signals.apply(Table.REQUEST, request_id, entry.position, entry.row,
                                       None if hold is None else _unknown_reference)
            if not again.held:
                self._answered(request_id, entry.position, again, entry.commit_time,
                               entry.appended)
        changed = [(a.sku, a.warehouse_code) for a in out.availability]
        changed += [(r.sku, r.warehouse_code) for r in out.removed]
        for count, (sku, code) in enumerate(changed, start=1):
            if not count % PAUSE_EVERY:
                yield
            self.step.outcome.merge(self.signals.supply_changed(sku, code))
        self._withhold(out)
        out.release.extend(self._released)
        self._released = []
        out.dead_letters.extend(self._dead)
        self._dead = []
        if self.step.outcome.priorities:
            # the supply-priority rows are written at the store's write position: it
            # must move with them even when no availability changed
            self.store.revision += 1
            self._moved = True
        if self._moved:
            self.store.save_meta()
            self._moved = False

    def _withhold(self, out: Step[Any]) -> None:
        """Take the records of requests still held out of the step's release."""
        counts: dict[int, int] = {}
        for entry in self._held.values():
            for handle in entry.fresh:
                counts[id(handle)] = counts.get(id(handle), 0) + 1
            entry.withheld.extend(entry.fresh)
            entry.fresh = []
        if not counts:
            return
        kept = []
        for handle in out.release:
            left = counts.get(id(handle), 0)
            if left:
                counts[id(handle)] = left - 1
            else:
                kept.append(handle)
        out.release = kept


def load(kv: KeyValue, *, rules: SurgeRules | None = None,
         appended: AppendedAt[Any] | None = None, **kwargs: Any) -> Projector[Any]:
    """The projector with its demand-signals companion, both over the state in ``kv``
    (``appended``: both measure the service lag with it)."""
    store = RowStore.load(kv)
    return Projector(store, truncated=load_truncated(kv),
                     companion=DemandSide(store, rules, appended), appended=appended,
                     **kwargs)


def demand_side(projector: Projector[Any]) -> DemandSide[Any]:
    side = projector.companion
    assert isinstance(side, DemandSide), "the projector runs without demand signals"
    return side


__all__ = ["CHANGE_TOPICS", "DemandSide", "DemandStep", "ProjectionView", "demand_side", "load"]

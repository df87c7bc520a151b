"""demand signals' fold: every CRM row version in, surges and answers out (pure).

:class:`DemandSignals` is fed, one whole source transaction at a time, the row
versions of the tables in :class:`~.records.Table` (:meth:`apply`), the keys whose
supply the projection republished (:meth:`supply_changed`) and the as-of time
(:meth:`advance`, never backwards). Each returns an :class:`Outcome`: surges raised,
changed (table only) and cleared, and feasibility answers. Its state lives in a
:class:`KeyValue` (state keys: :mod:`.rates`, :mod:`.documents`, :mod:`.surge`, and here
``n:<product>`` a product's SKU, ``k:<sku>`` its product, ``f:<request>`` a request's
position, ``a`` the as-of time).

Invariants: state is a function of the latest version of each row (position-guarded,
tombstones kept); a stale, redelivered or replayed change changes nothing and raises no
surge twice; a line's change costs the same whatever the number of products, the size
of its document or the length of history (``tests/unit/test_demand_fold.py``).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from services.demand_signals import feasibility
from services.demand_signals.documents import DocumentBook
from services.demand_signals.feasibility import Answer
from services.demand_signals.ports import SupplyView
from services.demand_signals.rates import DemandKey, DemandRates, horizon
from services.demand_signals.records import (
    OVERALL,
    Header,
    Kind,
    Line,
    Product,
    Request,
    Table,
    parse,
)
from services.demand_signals.surge import Figures, Surge, SurgeBook, SurgeRules, judge
from services.shared.cooperative import Pausable, run_to_end
from services.shared.position import SourcePosition
from services.shared.state.store import KeyValue

_q = struct.Struct(">q")
AS_OF_KEY = b"a"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: :meth:`DemandSignals.advance_steps` yields after judging this many keys
PAUSE_EVERY = 64

#: ``hold(answer)``: whether to hold a request's answer (not recorded, so the same
#: version is judged again later: see :meth:`DemandSignals.apply`)
Hold = Callable[[Answer], bool]


@dataclass
class Outcome:
    """What a step changed: surge events (raised/cleared, published), every surge whose
    supply-priority row changes (by ``(item_id, warehouse_code)``; ``cleared`` = a
    tombstone) and the answers (by request id; None = the request was deleted)."""

    events: list[Surge] = field(default_factory=list)
    priorities: dict[tuple[int, str], Surge] = field(default_factory=dict)
    answers: dict[int, Answer | None] = field(default_factory=dict)
    held: list[int] = field(default_factory=list)
    """Requests whose answer ``hold`` kept back (nothing recorded for them)."""

    def add(self, surge: Surge | None) -> None:
        if surge is None:
            return
        if surge.status != "changed":
            self.events.append(surge)
        self.priorities[(surge.item_id, surge.key.warehouse_code)] = surge

    def merge(self, other: Outcome) -> Outcome:
        self.events += other.events
        self.priorities.update(other.priorities)
        self.answers.update(other.answers)
        self.held += other.held
        return self

    @property
    def raised(self) -> list[Surge]:
        return [s for s in self.events if s.status == "raised"]

    @property
    def cleared(self) -> list[Surge]:
        return [s for s in self.events if s.status == "cleared"]


class DemandSignals:
    """The fold over a :class:`KeyValue`; ``view`` reads the projection's figures."""

    def __init__(self, kv: KeyValue, view: SupplyView, rules: SurgeRules | None = None) -> None:
        self.kv = kv
        self.view = view
        self.rules = rules or SurgeRules()
        self.rates = DemandRates(kv)
        self.documents = DocumentBook(kv, self.rates, self.rules.weight)
        self.surges = SurgeBook(kv)
        raw = kv.get(AS_OF_KEY)
        self.as_of: datetime | None = None if raw is None else datetime.fromisoformat(
            raw.decode())
        if self.as_of is not None:
            self.rates.first_day = horizon(self.as_of.date())

    # ------------------------------------------------------------------ inputs

    def apply(self, table: Table, row_id: int, position: SourcePosition,
              row: Mapping[str, Any] | None, hold: Hold | None = None) -> Outcome:
        """Fold one row version (None: deleted). A malformed row raises
        :class:`~.records.BadRow` before anything is stored. A request whose answer
        ``hold`` keeps back (e.g. its order is not seen yet while the CRM topics are
        still being read) is listed in :attr:`Outcome.held` and not recorded: the same
        version is judged again when applied again."""
        record = parse(table, row)
        out = Outcome()
        touched: set[DemandKey] | None
        if table in (Table.QUOTE, Table.ORDER):
            kind = Kind.QUOTE if table is Table.QUOTE else Kind.ORDER
            assert record is None or isinstance(record, Header)
            touched = self.documents.apply_header(kind, row_id, position, record)
        elif table in (Table.QUOTE_LINE, Table.ORDER_LINE):
            kind = Kind.QUOTE if table is Table.QUOTE_LINE else Kind.ORDER
            assert record is None or isinstance(record, Line)
            touched = self.documents.apply_line(kind, row_id, position, record)
        elif table is Table.PRODUCT:
            assert record is None or isinstance(record, Product)
            touched = self._apply_product(row_id, position, record)
        else:
            assert record is None or isinstance(record, Request)
            self._apply_request(row_id, position, record, out, hold)
            return out
        for key in sorted(touched or ()):
            out.add(self.evaluate(key))
        return out

    def supply_changed(self, sku: str, warehouse_code: str) -> Outcome:
        """The projection republished the item's figures in a warehouse (``*``: overall)."""
        out = Outcome()
        raw = self.kv.get(b"k:" + sku.encode())
        if raw is not None:
            out.add(self.evaluate(DemandKey(_q.unpack(raw)[0], warehouse_code)))
        return out

    def advance(self, as_of: datetime) -> Outcome:
        """Move the as-of time (never backwards); a new day re-judges every key with
        demand in its windows and every open surge."""
        return run_to_end(self.advance_steps(as_of))

    def advance_steps(self, as_of: datetime) -> Pausable[Outcome]:
        """:meth:`advance` as pausable work: a new day judges every key with demand, so
        it yields every :data:`PAUSE_EVERY` keys (a shell gives its event loop back)."""
        out = Outcome()
        if self.as_of is not None and as_of <= self.as_of:
            return out
        new_day = self.as_of is None or as_of.date() != self.as_of.date()
        self.as_of = as_of
        self.kv.put(AS_OF_KEY, as_of.isoformat().encode())
        if new_day:
            keys = self.rates.advance(as_of.date()) | self.surges.open_keys()
            for count, key in enumerate(sorted(keys), start=1):
                if not count % PAUSE_EVERY:
                    yield
                out.add(self.evaluate(key))
        return out

    # ------------------------------------------------------------------ rows

    def _apply_product(self, product_id: int, position: SourcePosition,
                       record: Product | None) -> set[DemandKey] | None:
        row_key = b"n:" + _q.pack(product_id)
        raw = self.kv.get(row_key)
        old_sku = None
        if raw is not None:
            data = orjson.loads(raw)
            if position <= SourcePosition(data[0], data[1]):
                return None
            old_sku = data[2] if len(data) > 2 else None
        new_sku = None if record is None else record.sku
        self.kv.put(row_key, orjson.dumps(
            [position.commit_lsn, position.lsn, *([] if new_sku is None else [new_sku])]))
        if old_sku == new_sku:
            return set()
        if old_sku is not None:
            self.kv.delete(b"k:" + old_sku.encode())
        if new_sku is not None:
            self.kv.put(b"k:" + new_sku.encode(), _q.pack(product_id))
        return self.rates.products_keys(product_id) | {
            k for k in self.surges.open_keys() if k.product_id == product_id}

    def sku_of(self, product_id: int) -> str | None:
        raw = self.kv.get(b"n:" + _q.pack(product_id))
        if raw is None:
            return None
        data = orjson.loads(raw)
        return data[2] if len(data) > 2 else None

    def _apply_request(self, request_id: int, position: SourcePosition,
                       request: Request | None, out: Outcome, hold: Hold | None) -> None:
        row_key = b"f:" + _q.pack(request_id)
        raw = self.kv.get(row_key)
        if raw is not None and position <= SourcePosition(*orjson.loads(raw)):
            return
        answer = None
        if request is not None:
            order = None if request.crm_order_id is None else self.documents.header(
                Kind.ORDER, request.crm_order_id)
            answer = feasibility.answer(request, order, self.sku_of, self.view,
                                        self.as_of or EPOCH)
            if hold is not None and hold(answer):
                out.held.append(request_id)
                return
        self.kv.put(row_key, orjson.dumps([position.commit_lsn, position.lsn]))
        out.answers[request_id] = answer

    # ------------------------------------------------------------------ surges

    def figures(self, key: DemandKey) -> tuple[Any, Figures | None]:
        """``(item, warehouse id, figures)`` of a key now (figures None: not judged: no
        as-of yet, product, item or warehouse unknown)."""
        sku = self.sku_of(key.product_id)
        item = None if sku is None else self.view.item(sku)
        if self.as_of is None or item is None:
            return (sku, item, None), None
        warehouse_id = None
        if key.warehouse_code != OVERALL:
            warehouse_id = self.view.warehouse(key.warehouse_code)
            if warehouse_id is None:
                return (sku, item, None), None
        today = self.as_of.date()
        window = self.rates.window(key, today)
        supply = self.view.supply(item.id, warehouse_id)
        return (sku, item, warehouse_id), judge(window, item, supply, today, self.rules)

    def evaluate(self, key: DemandKey) -> Surge | None:
        """Judge one key and record it in the surge book."""
        (sku, item, warehouse_id), figures = self.figures(key)
        assert self.as_of is not None or figures is None
        as_of = self.as_of or EPOCH

        def evidence() -> list[Any]:
            return self.rates.evidence(key, as_of.date())[: self.rules.evidence_limit]

        return self.surges.settle(key, sku or "", item, warehouse_id, figures, evidence, as_of)

    def open_surges(self) -> dict[DemandKey, list[Any]]:
        """Every open surge's key with its recorded figures (what reconcile compares)."""
        result = {}
        for key in self.surges.open_keys():
            entry = self.surges.entry(key)
            assert entry is not None
            result[key] = entry.digest
        return result

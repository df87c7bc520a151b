"""The incremental fold: ERP and CRM row versions -> per-order figures in a key-value state.

State is keyed by ERP order: every ERP row names its ERP order (directly, or through
its production order or shipment), none names the CRM order. The CRM order is reached
only through the order identity (``i:``/``j:``), which is one link per order: when it
arrives after the ERP rows ("progress before the identity"), nothing is moved, the
held figures simply become visible under the CRM order, at a cost of O(1).

Cost per change (DESIGN.md 4): a change reads and writes its own row, its unit (a
production order with its inspections, a shipment with its line sum) and one or two
order figure entries; never the other lines, production orders or shipments of its
order. A shipment line moves its shipment's quantity sum (``n:``) by its difference.
What it reads is decoded once and kept, bounded (:mod:`.decoded`; written through, so
the state stays the truth, but for the figures: see below), and an order's waiting and
open marks are made true once per step (:meth:`ProgressFold.settle`), not at each of its
changes. So are its figures written (``a:``): a step's changes move them in memory
(every read goes through the fold: :meth:`ProgressFold.figures`), and
:meth:`ProgressFold.settle` writes each order's once (an order's ten production orders
changed in one transaction wrote its figures ten times, encoded each time).

State is a function of the latest version of each row (DESIGN.md 6): every row is
position-guarded (``r:``, deletes keep a tombstone with their position), and each unit
keeps the contribution it last added, so a new version replaces it (old subtracted,
new added) and a replayed or redelivered version changes nothing. The learned
durations (:mod:`.durations`) follow the same rule: the sample a completed inspection or
delivered shipment contributed is kept in its row's record and replaced, never added
twice.

Key layout (ids 8-byte big-endian):

* ``r:<table code><id>`` -> ``[commit_lsn, lsn, row fields | null, unit state]``;
* ``a:<erp order>`` -> the order's figures (:mod:`.progress`);
* ``n:<shipment>`` -> ``[quantity of its lines present, lines present]``;
* indexes (empty values): ``qi:<production order><inspection>``,
  ``ol:<erp order><order line>``, ``lm:<order line><production order>``,
  ``ls:<order line><shipment line>``, ``om:<erp order><production order>``,
  ``os:<erp order><shipment>``, ``of:<erp order><failed inspection>``,
  ``kc:<crm order><case>``, ``op:<erp order>`` (open orders, for the shell's timer);
* ``w:<o|p|s><id>``: rows waiting for a parent: figures of an ERP order whose header
  is unknown, inspections of an unknown production order, shipment lines of an unknown
  shipment (kept: they show once the parent comes; the service fold dead-letters each
  such row's record once after the grace, :mod:`.service_fold`);
* ``i:<erp order>`` -> ``[crm order, version, identity]``, ``j:<crm order>`` ->
  ``[version, erp order]``; ``d:...`` durations; ``rk:<crm order>`` the last risk
  published (:mod:`.risk`).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from services.production_status import progress
from services.production_status.decoded import MISSING, Decoded
from services.production_status.durations import QC, TRANSPORT, Durations, Sample, sample
from services.production_status.progress import Contribution, Figures
from services.production_status.records import (
    CRM_ORDER,
    ERP_ORDER,
    ERP_ORDER_LINE,
    INSPECTION,
    PRODUCTION_ORDER,
    SERVICE_CASE,
    SHIPMENT,
    SHIPMENT_LINE,
    TABLES,
    CrmOrder,
    ErpOrder,
    ErpOrderLine,
    Identity,
    Inspection,
    ProductionOrder,
    ServiceCase,
    Shipment,
    ShipmentLine,
    decode,
    dumps,
    encode,
    encode_like,
    loads,
)
from services.production_status.stored import Record, figures_key, key_id, row_key, set_unit, unit
from services.shared.position import SourcePosition
from services.shared.state.store import KeyValue

_pack = struct.Struct(">q").pack
ZERO = Decimal(0)
#: decoded rows kept between changes (:mod:`.decoded`; twice this many at most). A
#: million-change replay peaked at 537 MB RSS with 50,000 (and 25,000 orders), 409 MB
#: with these, for ~10% more CPU a change (issue 12's RSS target is 512 MB)
CACHED_ROWS = 25_000
#: decoded figures and identities kept between changes, per kind
CACHED_ORDERS = 12_500
#: the indexes read whole (a production order's inspections at each of its changes, a
#: line's production orders and shipment lines, an order's lines and cases at each
#: status, an order's shipments at each status): their children are kept per parent,
#: the index written through (``_link``)
CACHED_INDEXES = (b"qi:", b"lm:", b"ls:", b"ol:", b"kc:", b"os:")


def _index(prefix: bytes, parent: int, child: int) -> bytes:
    return prefix + _pack(parent) + _pack(child)


@dataclass(frozen=True, slots=True)
class Applied:
    """What one change moved: the shell republishes these (and nothing else)."""

    changed: bool
    erp_orders: frozenset[int] = frozenset()
    crm_orders: frozenset[int] = frozenset()
    cases: frozenset[int] = frozenset()


@dataclass(slots=True)
class _Touched:
    erp: set[int] = field(default_factory=set)
    crm: set[int] = field(default_factory=set)
    cases: set[int] = field(default_factory=set)


class ProgressFold:
    """Folds row versions into per-order figures over a :class:`KeyValue`."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        self.durations = Durations(kv)
        # write-through caches of decoded entries: every write below goes to the state
        # AND here; nothing else writes these keys (.decoded)
        self._records: Decoded[bytes, Record | None] = Decoded(CACHED_ROWS)
        self._figures: Decoded[int, Figures] = Decoded(CACHED_ORDERS)
        #: ERP order -> (CRM order, version, identity) from ``i:``
        self._by_erp: Decoded[int, tuple[int, int, Identity] | None] = Decoded(CACHED_ORDERS)
        #: CRM order -> (version, ERP order) from ``j:``
        self._by_crm: Decoded[int, tuple[int, int] | None] = Decoded(CACHED_ORDERS)
        #: prefix + parent -> its children, for :data:`CACHED_INDEXES`
        self._children: Decoded[bytes, set[int]] = Decoded(CACHED_ORDERS)
        #: ERP order -> its marks (waiting, open) as written
        self._marks: Decoded[int, tuple[bool, bool]] = Decoded(CACHED_ORDERS)
        #: ERP orders changed since their marks (``w:o``, ``op:``) were last made true
        #: (:meth:`settle`): once per step, not at each change
        self._unsettled: set[int] = set()
        #: ERP order -> its figures moved since :meth:`settle` last wrote them (kept
        #: here, whatever the cache forgets, until written)
        self._unwritten: dict[int, Figures] = {}

    # ------------------------------------------------------------------ records

    def record(self, table: str, row_id: int) -> Record | None:
        """The row's stored record (shared with the cache: change it only to write it)."""
        key = row_key(table, row_id)
        cached = self._records.find(key)
        if cached is not MISSING:
            return cached
        raw = self.kv.get(key)
        rec = None
        if raw is not None:
            commit, lsn, fields, extra = loads(raw)
            row = None if fields is None else decode(TABLES[table], fields)
            rec = Record(SourcePosition(commit, lsn), row, extra, fields)
        self._records.keep(key, rec)
        return rec

    def _write(self, table: str, row_id: int, rec: Record) -> None:
        fields = rec.fields
        if fields is None and rec.row is not None:
            fields = rec.fields = encode(rec.row)
        key = row_key(table, row_id)
        self.kv.put(key, dumps([rec.position.commit_lsn, rec.position.lsn, fields, rec.extra]))
        self._records.keep(key, rec)

    def present(self, table: str, row_id: int) -> bool:
        """Whether the row is known (seen, and not deleted since)."""
        rec = self.record(table, row_id)
        return rec is not None and rec.row is not None

    def row(self, table: str, row_id: int) -> Any:
        rec = self.record(table, row_id)
        return None if rec is None else rec.row

    def figures(self, erp_order_id: int) -> Figures:
        """The order's figures (a copy: the caller may change it)."""
        unwritten = self._unwritten.get(erp_order_id)
        if unwritten is not None:
            return dict(unwritten)
        cached = self._figures.find(erp_order_id)
        if cached is MISSING:
            raw = self.kv.get(figures_key(erp_order_id))
            cached = {} if raw is None else progress.decode_figures(loads(raw))
            self._figures.keep(erp_order_id, cached)
        return dict(cached)

    def children(self, prefix: bytes, parent: int) -> Iterator[int]:
        """The children of ``parent`` in an index, in key order."""
        group = prefix + _pack(parent)
        if prefix not in CACHED_INDEXES:
            for key, _ in self.kv.scan(group):
                yield key_id(key)
            return
        ids = self._children.find(group)
        if ids is MISSING:
            ids = {key_id(key) for key, _ in self.kv.scan(group)}
            self._children.keep(group, ids)
        yield from sorted(ids, key=_pack)  # the scan's order

    def _link(self, prefix: bytes, parent: int, child: int, present: bool) -> None:
        """Write (``present``) or delete an index entry of :data:`CACHED_INDEXES`; an
        entry the kept children already show as it should be is not written again."""
        group = prefix + _pack(parent)
        ids = self._children.find(group)
        if ids is not MISSING:
            if (child in ids) == present:
                return
            if present:
                ids.add(child)
            else:
                ids.discard(child)
        key = group + _pack(child)
        if present:
            self.kv.put(key, b"")
        else:
            self.kv.delete(key)

    # ------------------------------------------------------------------ apply

    def apply(self, table: str, row_id: int, position: SourcePosition, row: Any) -> Applied:
        """Fold one source row version (``row`` None: the row was deleted)."""
        old = self.record(table, row_id)
        if old is not None and position <= old.position:
            return Applied(False)  # stale, redelivered or replayed
        touched = _Touched()
        new = Record(position, row, None if old is None else old.extra,
                     unit=None if old is None else old.unit)
        if (row is not None and old is not None and old.fields is not None
                and type(old.row) is type(row)):
            # the row as stored, its unchanged dates kept as they were written
            new.fields = encode_like(row, old.row, old.fields)
        handler = _HANDLERS[table]
        handler(self, row_id, old, new, touched)
        self._unsettled |= touched.erp
        for erp_order_id in touched.erp:
            crm = self.crm_order_of(erp_order_id)
            if crm is not None:
                touched.crm.add(crm)
        return Applied(True, frozenset(touched.erp), frozenset(touched.crm),
                       frozenset(touched.cases))

    def apply_identity(self, identity: Identity) -> Applied:
        """Fold one order identity record; the highest ``crm_order_version`` wins."""
        crm = identity.crm_order_id
        link = self._link_of_crm(crm)
        touched = _Touched(crm={crm})
        if link is not None:
            version, erp = link
            if identity.crm_order_version < version:
                return Applied(False)
            current = self.identity_of_erp(erp)
            if erp == identity.erp_order_id and current == identity:
                return Applied(False)
            if erp != identity.erp_order_id:
                self.kv.delete(b"i:" + _pack(erp))
                self._by_erp.keep(erp, None)
                touched.erp.add(erp)
        touched.erp.add(identity.erp_order_id)
        self.kv.put(b"j:" + _pack(crm), dumps([identity.crm_order_version,
                                               identity.erp_order_id]))
        self._by_crm.keep(crm, (identity.crm_order_version, identity.erp_order_id))
        self.kv.put(b"i:" + _pack(identity.erp_order_id),
                    dumps([crm, identity.crm_order_version, encode(identity)]))
        self._by_erp.keep(identity.erp_order_id, (crm, identity.crm_order_version, identity))
        self._unsettled |= touched.erp
        return Applied(True, frozenset(touched.erp), frozenset(touched.crm))

    def _link_of_erp(self, erp_order_id: int) -> tuple[int, int, Identity] | None:
        """``i:``: (CRM order, version, identity) of an ERP order."""
        cached = self._by_erp.find(erp_order_id)
        if cached is MISSING:
            raw = self.kv.get(b"i:" + _pack(erp_order_id))
            if raw is None:
                cached = None
            else:
                crm, version, fields = loads(raw)
                cached = (int(crm), int(version), decode(Identity, fields))
            self._by_erp.keep(erp_order_id, cached)
        return cached

    def _link_of_crm(self, crm_order_id: int) -> tuple[int, int] | None:
        """``j:``: (version, ERP order) of a CRM order."""
        cached = self._by_crm.find(crm_order_id)
        if cached is MISSING:
            raw = self.kv.get(b"j:" + _pack(crm_order_id))
            cached = None if raw is None else (int(loads(raw)[0]), int(loads(raw)[1]))
            self._by_crm.keep(crm_order_id, cached)
        return cached

    def identity_of_erp(self, erp_order_id: int) -> Identity | None:
        link = self._link_of_erp(erp_order_id)
        return None if link is None else link[2]

    def crm_order_of(self, erp_order_id: int) -> int | None:
        link = self._link_of_erp(erp_order_id)
        return None if link is None else link[0]

    def erp_order_of(self, crm_order_id: int) -> int | None:
        link = self._link_of_crm(crm_order_id)
        return None if link is None else link[1]

    # ------------------------------------------------------------------ figures

    def _move(self, old_order: int | None, old_c: Contribution, new_order: int | None,
              new_c: Contribution, touched: _Touched) -> None:
        if old_order == new_order:
            if old_order is None or old_c == new_c:
                return
            figures = self._own_figures(old_order)
            progress.combine(figures, old_c, -1)
            progress.combine(figures, new_c, 1)
            self._store_figures(old_order, figures)
            touched.erp.add(old_order)
            return
        for order, c, sign in ((old_order, old_c, -1), (new_order, new_c, 1)):
            if order is None:
                continue
            figures = self._own_figures(order)
            progress.combine(figures, c, sign)
            self._store_figures(order, figures)
            touched.erp.add(order)

    def _own_figures(self, erp_order_id: int) -> Figures:
        """The order's figures as kept (not a copy: changed only to be stored at once by
        :meth:`_store_figures`, which keeps them again)."""
        unwritten = self._unwritten.get(erp_order_id)
        if unwritten is not None:
            return unwritten
        cached = self._figures.find(erp_order_id)
        if cached is MISSING:
            raw = self.kv.get(figures_key(erp_order_id))
            cached = {} if raw is None else progress.decode_figures(loads(raw))
        return cached

    def _store_figures(self, erp_order_id: int, figures: Figures) -> None:
        """Keep the order's new figures; :meth:`settle` writes them."""
        self._unwritten[erp_order_id] = figures
        self._figures.keep(erp_order_id, figures)

    def settle(self) -> None:
        """Make the marks of every ERP order changed since the last call true (the
        service fold calls it once per step; the queries below call it first), and
        write the figures moved since."""
        unwritten, self._unwritten = self._unwritten, {}
        for erp_order_id, figures in unwritten.items():
            if figures:
                self.kv.put(figures_key(erp_order_id), dumps(progress.encode_figures(figures)))
            else:
                self.kv.delete(figures_key(erp_order_id))
        taken, self._unsettled = self._unsettled, set()
        for erp_order_id in sorted(taken):
            self._refresh_order(erp_order_id)

    def _refresh_order(self, erp_order_id: int) -> None:
        """Keep the order's waiting (``w:o``) and open (``op:``) marks true."""
        header = self.row(ERP_ORDER, erp_order_id)
        figures = self.figures(erp_order_id)
        marks = (bool(figures) and header is None, is_open(header, figures))
        waiting, opened = b"w:o" + _pack(erp_order_id), b"op:" + _pack(erp_order_id)
        known = self._marks.find(erp_order_id)
        if known is MISSING:  # as the state has them
            known = (self.kv.get(waiting) is not None, self.kv.get(opened) is not None)
        if marks != known:  # else nothing to write again
            for key, mark, was in ((waiting, marks[0], known[0]),
                                   (opened, marks[1], known[1])):
                if mark and not was:
                    self.kv.put(key, b"")
                elif was and not mark:
                    self.kv.delete(key)
        self._marks.keep(erp_order_id, marks)

    # ------------------------------------------------------------------ units

    def _recompute_mo(self, mo_id: int, touched: _Touched, rec: Record | None = None) -> None:
        """``rec``: the production order's record when the caller holds its newest
        version, not written yet (written here once, with its unit state)."""
        if rec is None:
            rec = self.record(PRODUCTION_ORDER, mo_id)
        mo: ProductionOrder | None = None if rec is None else rec.row
        old_order, old_c = unit(rec)
        inspections: list[tuple[Record, Inspection]] = []
        for inspection_id in self.children(b"qi:", mo_id):
            irec = self.record(INSPECTION, inspection_id)
            if irec is not None and irec.row is not None:
                inspections.append((irec, irec.row))
        new_order = None if mo is None else mo.sales_order_id
        new_c = {} if mo is None or new_order is None else progress.mo_contribution(
            mo, (i for _, i in inspections))
        self._move(old_order, old_c, new_order, new_c, touched)
        # the order's evidence (names, dates) may have changed without its figures
        touched.erp.update(o for o in (old_order, new_order) if o is not None)
        if old_order is not None and old_order != new_order:
            self.kv.delete(_index(b"om:", old_order, mo_id))
        if new_order is not None:
            self.kv.put(_index(b"om:", new_order, mo_id), b"")
        for irec, inspection in inspections:
            new_sample = None
            if mo is not None and inspection.inspected_at is not None:
                new_sample = sample(QC, mo.warehouse_id, None, inspection.created_at,
                                    inspection.inspected_at)
            old_sample = Sample.decode(irec.extra)
            if old_sample != new_sample:
                self.durations.move(old_sample, new_sample)
                irec.extra = None if new_sample is None else new_sample.encode()
                self._write(INSPECTION, inspection.id, irec)
            if old_order is not None and old_order != new_order:
                self.kv.delete(_index(b"of:", old_order, inspection.id))
            if new_order is not None and inspection.state == "failed":
                self.kv.put(_index(b"of:", new_order, inspection.id), b"")
        if rec is not None:
            set_unit(rec, [new_order, progress.encode_figures(new_c)], new_c)
            self._write(PRODUCTION_ORDER, mo_id, rec)
        waiting = b"w:p" + _pack(mo_id)
        if mo is None and inspections:
            self.kv.put(waiting, b"")
        else:
            self.kv.delete(waiting)

    def _recompute_shipment(self, shipment_id: int, touched: _Touched,
                            rec: Record | None = None) -> None:
        """``rec``: as :meth:`_recompute_mo`'s."""
        if rec is None:
            rec = self.record(SHIPMENT, shipment_id)
        shipment: Shipment | None = None if rec is None else rec.row
        raw = self.kv.get(b"n:" + _pack(shipment_id))
        quantity, lines = (ZERO, 0) if raw is None else (Decimal(loads(raw)[0]), loads(raw)[1])
        old_order, old_c = unit(rec)
        new_order = None if shipment is None else shipment.sales_order_id
        new_c = {} if shipment is None else progress.shipment_contribution(shipment, quantity)
        self._move(old_order, old_c, new_order, new_c, touched)
        touched.erp.update(o for o in (old_order, new_order) if o is not None)
        if old_order is not None and old_order != new_order:
            self._link(b"os:", old_order, shipment_id, False)
        if new_order is not None:
            self._link(b"os:", new_order, shipment_id, True)
        if rec is not None:
            old_sample = Sample.decode(rec.extra[2]) if rec.extra else None
            new_sample = None
            if (shipment is not None and shipment.state == "delivered"
                    and shipment.shipped_at is not None and shipment.delivered_at is not None):
                new_sample = sample(TRANSPORT, shipment.warehouse_id, shipment.carrier,
                                    shipment.shipped_at, shipment.delivered_at)
            self.durations.move(old_sample, new_sample)
            set_unit(rec, [new_order, progress.encode_figures(new_c),
                            None if new_sample is None else new_sample.encode()], new_c)
            self._write(SHIPMENT, shipment_id, rec)
        waiting = b"w:s" + _pack(shipment_id)
        if shipment is None and lines > 0:
            self.kv.put(waiting, b"")
        else:
            self.kv.delete(waiting)

    # ------------------------------------------------------------------ handlers

    def _erp_order(self, row_id: int, old: Record | None, new: Record, t: _Touched) -> None:
        self._write(ERP_ORDER, row_id, new)
        t.erp.add(row_id)

    def _erp_order_line(self, row_id: int, old: Record | None, new: Record, t: _Touched) -> None:
        line: ErpOrderLine | None = new.row
        old_order, old_c = unit(old)
        new_order = None if line is None else line.order_id
        new_c = {} if line is None else progress.line_contribution(line)
        self._move(old_order, old_c, new_order, new_c, t)
        t.erp.update(o for o in (old_order, new_order) if o is not None)
        if old_order is not None and old_order != new_order:
            self._link(b"ol:", old_order, row_id, False)
        if new_order is not None:
            self._link(b"ol:", new_order, row_id, True)
        set_unit(new, [new_order, progress.encode_figures(new_c)], new_c)
        self._write(ERP_ORDER_LINE, row_id, new)

    def _production_order(self, row_id: int, old: Record | None, new: Record,
                          t: _Touched) -> None:
        before: ProductionOrder | None = None if old is None else old.row
        after: ProductionOrder | None = new.row
        old_line = None if before is None else before.sales_order_line_id
        new_line = None if after is None else after.sales_order_line_id
        if old_line is not None and old_line != new_line:
            self._link(b"lm:", old_line, row_id, False)
        if new_line is not None:
            self._link(b"lm:", new_line, row_id, True)
        self._recompute_mo(row_id, t, new)  # writes it

    def _inspection(self, row_id: int, old: Record | None, new: Record, t: _Touched) -> None:
        before: Inspection | None = None if old is None else old.row
        after: Inspection | None = new.row
        old_mo = None if before is None else before.production_order_id
        if old is not None and old_mo is not None:
            # take the old version out of its production order first (its sample, its
            # failed-index entry), then let the recomputation add the new one
            self.durations.move(Sample.decode(old.extra), None)
            order, _ = unit(self.record(PRODUCTION_ORDER, old_mo))
            if order is not None:
                self.kv.delete(_index(b"of:", order, row_id))
            self._link(b"qi:", old_mo, row_id, False)
        new.extra = None
        self._write(INSPECTION, row_id, new)
        new_mo = None if after is None else after.production_order_id
        if new_mo is not None:
            self._link(b"qi:", new_mo, row_id, True)
        for mo_id in {m for m in (old_mo, new_mo) if m is not None}:
            self._recompute_mo(mo_id, t)

    def _shipment(self, row_id: int, old: Record | None, new: Record, t: _Touched) -> None:
        self._recompute_shipment(row_id, t, new)  # writes it

    def _shipment_line(self, row_id: int, old: Record | None, new: Record, t: _Touched) -> None:
        before: ShipmentLine | None = None if old is None else old.row
        after: ShipmentLine | None = new.row
        for line, sign in ((before, -1), (after, 1)):
            if line is None:
                continue
            key = b"n:" + _pack(line.shipment_id)
            raw = self.kv.get(key)
            quantity, count = (ZERO, 0) if raw is None else (Decimal(loads(raw)[0]),
                                                             loads(raw)[1])
            quantity += line.quantity * sign
            count += sign
            if count > 0:
                self.kv.put(key, dumps([str(quantity), count]))
            else:
                self.kv.delete(key)
            self._link(b"ls:", line.sales_order_line_id, row_id, sign > 0)
        self._write(SHIPMENT_LINE, row_id, new)
        for shipment_id in {x.shipment_id for x in (before, after) if x is not None}:
            self._recompute_shipment(shipment_id, t)

    def _crm_order(self, row_id: int, old: Record | None, new: Record, t: _Touched) -> None:
        self._write(CRM_ORDER, row_id, new)
        t.crm.add(row_id)

    def _service_case(self, row_id: int, old: Record | None, new: Record, t: _Touched) -> None:
        before: ServiceCase | None = None if old is None else old.row
        after: ServiceCase | None = new.row
        if before is not None and before.sales_order_id is not None:
            self._link(b"kc:", before.sales_order_id, row_id, False)
        if after is not None and after.sales_order_id is not None:
            self._link(b"kc:", after.sales_order_id, row_id, True)
        self._write(SERVICE_CASE, row_id, new)
        t.cases.add(row_id)

    # ------------------------------------------------------------------ queries

    def waiting(self) -> Iterator[tuple[str, int]]:
        """Rows waiting for a parent: ``("erp_order", id)`` (figures without a header),
        ``("production_order", id)`` (inspections), ``("shipment", id)`` (lines)."""
        self.settle()
        names = {b"o": "erp_order", b"p": "production_order", b"s": "shipment"}
        for key, _ in self.kv.scan(b"w:"):
            yield names[key[2:3]], key_id(key)

    def open_orders(self) -> Iterator[int]:
        """ERP orders not yet delivered nor cancelled (the shell re-assesses their risk
        as time passes)."""
        self.settle()
        for key, _ in self.kv.scan(b"op:"):
            yield key_id(key)

    def cases_of(self, crm_order_id: int) -> list[int]:
        return list(self.children(b"kc:", crm_order_id))


def is_open(header: ErpOrder | None, figures: Figures) -> bool:
    if header is None and not figures:
        return False
    if header is not None and header.state in ("cancelled", "done"):
        return False
    ordered = figures.get("ordered", ZERO)
    delivered = figures.get("ship.delivered", ZERO)
    return not (ordered > 0 and delivered >= ordered)


_HANDLERS = {
    ERP_ORDER: ProgressFold._erp_order,
    ERP_ORDER_LINE: ProgressFold._erp_order_line,
    PRODUCTION_ORDER: ProgressFold._production_order,
    INSPECTION: ProgressFold._inspection,
    SHIPMENT: ProgressFold._shipment,
    SHIPMENT_LINE: ProgressFold._shipment_line,
    CRM_ORDER: ProgressFold._crm_order,
    SERVICE_CASE: ProgressFold._service_case,
}

__all__ = ["Applied", "CrmOrder", "ProgressFold", "Record", "is_open", "unit"]

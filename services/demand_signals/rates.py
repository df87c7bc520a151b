"""Rolling CRM demand per product x warehouse: per-key sums over day buckets (pure).

Every document line contributes ``quantity x weight`` to one **demand key**
``(product, warehouse code)`` on one **day** (see :mod:`.documents`). The state keeps,
per key and day, the sum of the contributions present (a row's new version takes its
old contribution out and puts the new one in, so the sums are a function of the latest
rows), and per key, day and document what that document adds (the evidence behind a
surge). With ``t`` the as-of date:

* ``recent`` = the sum of the days ``t-6 .. t``: the **rate** is ``recent / 7`` a day;
* ``baseline`` = the sum of the days ``t-34 .. t-7``: the baseline is ``baseline / 28``.
  Whole weeks on both sides, so every weekday weighs the same in each.

Days before ``t-34`` (the **horizon**) are dropped when ``t`` moves (an index by day
finds them), and a contribution dated before the horizon counts nowhere: the horizon
only moves forward, so a bucket still kept has seen every add and remove of its day,
and the fold equals the recomputation (:mod:`.recompute`) that applies the same cut.

Reading a key's windows is one scan of at most 35 entries: flat in the number of
products and in the length of history.

State entries: ``b:<key><day>`` a day's sum, ``B:<day><key>`` the index by day,
``e:<key><day><kind><document>`` one document's part of the day (keys: product id
8 bytes big-endian, warehouse code UTF-8, a zero byte; day: 4-byte ordinal).
"""

from __future__ import annotations

import struct
from datetime import date, timedelta
from decimal import Decimal
from typing import NamedTuple

from services.demand_signals.records import ZERO, Kind
from services.shared.state.store import KeyValue

RECENT_DAYS = 7
BASELINE_DAYS = 28
WINDOW_DAYS = RECENT_DAYS + BASELINE_DAYS

_q = struct.Struct(">q")
_day = struct.Struct(">I")
_KIND = {Kind.QUOTE: b"q", Kind.ORDER: b"o"}
_KIND_OF = {v: k for k, v in _KIND.items()}


class DemandKey(NamedTuple):
    """Where demand counts: a CRM product in a warehouse (``*``: none chosen yet)."""

    product_id: int
    warehouse_code: str


def key_bytes(key: DemandKey) -> bytes:
    return _q.pack(key.product_id) + key.warehouse_code.encode() + b"\x00"


def key_from(raw: bytes) -> tuple[DemandKey, bytes]:
    """The key at the start of ``raw`` and what follows it."""
    end = raw.index(b"\x00", 8)
    return DemandKey(_q.unpack(raw[:8])[0], raw[8:end].decode()), raw[end + 1:]


def day_bytes(day: date) -> bytes:
    return _day.pack(day.toordinal())


def _day_from(raw: bytes) -> date:
    return date.fromordinal(_day.unpack(raw[:4])[0])


def horizon(today: date) -> date:
    """The first day still counted when the as-of date is ``today``."""
    return today - timedelta(days=WINDOW_DAYS - 1)


class Window(NamedTuple):
    """A key's demand in the two windows ending at the as-of date (sums, not per day)."""

    recent: Decimal
    baseline: Decimal


class Evidence(NamedTuple):
    """One document's weighted demand for a key in the rate's window."""

    kind: Kind
    document_id: int
    quantity: Decimal


class DemandRates:
    """Per key and day sums of demand in a :class:`KeyValue`; see the module docstring."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        self.first_day: date | None = None
        """The horizon: days before it are not counted (None: nothing dropped yet)."""

    def add(self, key: DemandKey, day: date, amount: Decimal, kind: Kind, document: int) -> bool:
        """Add ``amount`` (negative: take out) of a document to the key's day; False when
        the day is before the horizon (counted nowhere)."""
        if not amount or (self.first_day is not None and day < self.first_day):
            return False
        kb, db = key_bytes(key), day_bytes(day)
        bucket = b"b:" + kb + db
        raw = self.kv.get(bucket)
        total = (ZERO if raw is None else Decimal(raw.decode())) + amount
        if total:
            self.kv.put(bucket, str(total).encode())
            if raw is None:
                self.kv.put(b"B:" + db + kb, b"")
        else:  # the day's last contribution left: no residue is kept
            self.kv.delete(bucket)
            self.kv.delete(b"B:" + db + kb)
        part = b"e:" + kb + db + _KIND[kind] + _q.pack(document)
        raw = self.kv.get(part)
        total = (ZERO if raw is None else Decimal(raw.decode())) + amount
        if total:
            self.kv.put(part, str(total).encode())
        else:
            self.kv.delete(part)
        return True

    def window(self, key: DemandKey, today: date) -> Window:
        """The key's recent and baseline sums for the as-of date ``today``."""
        prefix = b"b:" + key_bytes(key)
        split = (today - timedelta(days=RECENT_DAYS - 1)).toordinal()
        last = today.toordinal()
        recent = baseline = ZERO
        for raw_key, raw in self.kv.scan(prefix, prefix + day_bytes(horizon(today))):
            ordinal = _day.unpack(raw_key[len(prefix):])[0]
            if ordinal > last:
                break  # dated after the as-of date: counts once the date gets there
            if ordinal >= split:
                recent += Decimal(raw.decode())
            else:
                baseline += Decimal(raw.decode())
        return Window(recent, baseline)

    def evidence(self, key: DemandKey, today: date) -> list[Evidence]:
        """The documents behind the key's rate (days ``t-6 .. t``), per document summed,
        largest first. (Read when a surge is raised, not per change.)"""
        prefix = b"e:" + key_bytes(key)
        start = prefix + day_bytes(today - timedelta(days=RECENT_DAYS - 1))
        last = today.toordinal()
        sums: dict[tuple[Kind, int], Decimal] = {}
        for raw_key, raw in self.kv.scan(prefix, start):
            rest = raw_key[len(prefix):]
            if _day.unpack(rest[:4])[0] > last:
                break
            doc = (_KIND_OF[rest[4:5]], _q.unpack(rest[5:13])[0])
            sums[doc] = sums.get(doc, ZERO) + Decimal(raw.decode())
        ranked = sorted(sums.items(), key=lambda e: (-e[1], e[0][0], e[0][1]))
        return [Evidence(kind, doc, qty) for (kind, doc), qty in ranked if qty > 0]

    def keys_from(self, first: date) -> set[DemandKey]:
        """Every key with a day bucket on or after ``first``."""
        return {key_from(k[6:])[0] for k, _ in self.kv.scan(b"B:", b"B:" + day_bytes(first))}

    def products_keys(self, product_id: int) -> set[DemandKey]:
        """Every key of one product with demand kept (one scan of its buckets)."""
        prefix = b"b:" + _q.pack(product_id)
        return {key_from(k[2:])[0] for k, _ in self.kv.scan(prefix)}

    def advance(self, today: date) -> set[DemandKey]:
        """Move the horizon to ``today``'s; drop the days before it. The keys whose
        windows change (every key with demand in the new window, or dropped)."""
        first = horizon(today)
        if self.first_day is not None and first <= self.first_day:
            return set()
        dropped: list[tuple[bytes, bytes, bytes]] = []
        for raw_key, _ in self.kv.scan(b"B:"):
            db = raw_key[2:6]
            if _day_from(db) >= first:
                break
            dropped.append((raw_key, db, raw_key[6:]))
        touched = set()
        for index_key, db, kb in dropped:
            self.kv.delete(index_key)
            self.kv.delete(b"b:" + kb + db)
            parts = b"e:" + kb + db
            for part, _ in list(self.kv.scan(parts)):
                self.kv.delete(part)
            touched.add(key_from(kb)[0])
        self.first_day = first
        return touched | self.keys_from(first)

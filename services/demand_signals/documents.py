"""CRM quotes and orders as demand: each row version in, day-bucket deltas out (pure).

A document's lines count for ``(product, document's warehouse code)`` on the document's
day, weighted by its stage (:meth:`.surge.SurgeRules.weight`). The book keeps per row its
source position (a stale, redelivered or replayed version changes nothing; a deleted
row keeps a tombstone so a replayed insert cannot bring it back) and, per document and
product, the sum of its lines' quantities. So:

* a **line** change moves one document x product sum and one day bucket: its cost does
  not depend on how many lines the document has or how many products there are;
* a **header** change (stage, warehouse, day) moves each product of the document from
  its old contribution to its new one: its cost is the document's distinct products,
  every one of whose figures does change.

A line whose header has not arrived yet is kept in the sum and counts once it does.

State entries: ``h:<kind><id>`` a header, ``l:<kind><id>`` a line, ``p:<kind><doc><product>``
a document's quantity of a product (ids 8 bytes big-endian).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from datetime import date
from decimal import Decimal

import orjson

from services.demand_signals.rates import DemandKey, DemandRates
from services.demand_signals.records import ZERO, Header, Kind, Line
from services.shared.position import SourcePosition
from services.shared.state.store import KeyValue

_q = struct.Struct(">q")
_KIND = {Kind.QUOTE: b"q", Kind.ORDER: b"o"}

Weight = Callable[[Kind, str], Decimal]


def _encode_header(position: SourcePosition, header: Header | None) -> bytes:
    if header is None:
        return orjson.dumps([position.commit_lsn, position.lsn])
    day = None if header.day is None else header.day.toordinal()
    return orjson.dumps([position.commit_lsn, position.lsn, header.id, header.state,
                         header.warehouse_code, day])


def _decode_header(kind: Kind, raw: bytes) -> tuple[SourcePosition, Header | None]:
    data = orjson.loads(raw)
    position = SourcePosition(data[0], data[1])
    if len(data) == 2:
        return position, None
    day = None if data[5] is None else date.fromordinal(data[5])
    return position, Header(kind, data[2], data[3], data[4], day)


def _encode_line(position: SourcePosition, line: Line | None) -> bytes:
    if line is None:
        return orjson.dumps([position.commit_lsn, position.lsn])
    return orjson.dumps([position.commit_lsn, position.lsn, line.document_id, line.product_id,
                         str(line.quantity)])


def _decode_line(kind: Kind, line_id: int, raw: bytes) -> tuple[SourcePosition, Line | None]:
    data = orjson.loads(raw)
    position = SourcePosition(data[0], data[1])
    if len(data) == 2:
        return position, None
    return position, Line(kind, line_id, data[2], data[3], Decimal(data[4]))


class DocumentBook:
    """Quote and order rows, position-guarded, feeding :class:`~.rates.DemandRates`."""

    def __init__(self, kv: KeyValue, rates: DemandRates, weight: Weight) -> None:
        self.kv = kv
        self.rates = rates
        self.weight = weight

    def header(self, kind: Kind, document_id: int) -> Header | None:
        raw = self.kv.get(b"h:" + _KIND[kind] + _q.pack(document_id))
        return None if raw is None else _decode_header(kind, raw)[1]

    def _contribution(self, header: Header | None) -> tuple[str, date, Decimal] | None:
        if header is None or header.day is None:
            return None
        weight = self.weight(header.kind, header.state)
        return (header.warehouse_code, header.day, weight) if weight else None

    def apply_header(
        self, kind: Kind, document_id: int, position: SourcePosition, new: Header | None
    ) -> set[DemandKey] | None:
        """Fold one quote or order version; the keys whose demand moved (None: stale)."""
        row_key = b"h:" + _KIND[kind] + _q.pack(document_id)
        raw = self.kv.get(row_key)
        old: Header | None = None
        if raw is not None:
            current, old = _decode_header(kind, raw)
            if position <= current:
                return None
        self.kv.put(row_key, _encode_header(position, new))
        before, after = self._contribution(old), self._contribution(new)
        if before == after:
            return set()  # e.g. the amount changed: its lines count the same
        touched: set[DemandKey] = set()
        prefix = b"p:" + _KIND[kind] + _q.pack(document_id)
        for raw_key, raw_qty in list(self.kv.scan(prefix)):
            product = _q.unpack(raw_key[len(prefix):])[0]
            qty = Decimal(raw_qty.decode())
            for contribution, sign in ((before, -1), (after, 1)):
                if contribution is not None:
                    code, day, weight = contribution
                    key = DemandKey(product, code)
                    if self.rates.add(key, day, sign * qty * weight, kind, document_id):
                        touched.add(key)
        return touched

    def apply_line(
        self, kind: Kind, line_id: int, position: SourcePosition, new: Line | None
    ) -> set[DemandKey] | None:
        """Fold one quote or order line version; the keys whose demand moved (None: stale)."""
        row_key = b"l:" + _KIND[kind] + _q.pack(line_id)
        raw = self.kv.get(row_key)
        old: Line | None = None
        if raw is not None:
            current, old = _decode_line(kind, line_id, raw)
            if position <= current:
                return None
        self.kv.put(row_key, _encode_line(position, new))
        touched: set[DemandKey] = set()
        if old is not None:
            self._move(kind, old.document_id, old.product_id, -old.quantity, touched)
        if new is not None:
            self._move(kind, new.document_id, new.product_id, new.quantity, touched)
        return touched

    def _move(self, kind: Kind, document_id: int, product_id: int, qty: Decimal,
              touched: set[DemandKey]) -> None:
        sum_key = b"p:" + _KIND[kind] + _q.pack(document_id) + _q.pack(product_id)
        raw = self.kv.get(sum_key)
        total = (ZERO if raw is None else Decimal(raw.decode())) + qty
        if total:
            self.kv.put(sum_key, str(total).encode())
        else:
            self.kv.delete(sum_key)
        contribution = self._contribution(self.header(kind, document_id))
        if contribution is not None:
            code, day, weight = contribution
            key = DemandKey(product_id, code)
            if self.rates.add(key, day, qty * weight, kind, document_id):
                touched.add(key)

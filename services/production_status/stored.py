"""A stored row version of production-status's fold (:mod:`.fold`), its unit state, and the
state's key codes.

A unit (an order line; a production order with its inspections; a shipment) keeps in
its record, as ``extra``, the ERP order and the contribution (:mod:`.progress`) it last
added, the contribution as text. :func:`unit` decodes it once and keeps it with the
record; :func:`set_unit` gives a record its new unit state with the contribution it
encodes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from services.production_status import progress
from services.production_status.progress import Contribution
from services.production_status.records import (
    CRM_ORDER,
    ERP_ORDER,
    ERP_ORDER_LINE,
    INSPECTION,
    PRODUCTION_ORDER,
    SERVICE_CASE,
    SHIPMENT,
    SHIPMENT_LINE,
)
from services.shared.position import SourcePosition

_pack = struct.Struct(">q").pack
#: a table's one-byte code in the state's keys
CODES = {
    ERP_ORDER: b"o", ERP_ORDER_LINE: b"l", PRODUCTION_ORDER: b"p", INSPECTION: b"q",
    SHIPMENT: b"s", SHIPMENT_LINE: b"t", CRM_ORDER: b"c", SERVICE_CASE: b"k",
}


def key_id(raw: bytes) -> int:
    """The id a key ends with (8-byte big-endian)."""
    return int.from_bytes(raw[-8:], "big", signed=True)


def row_key(table: str, row_id: int) -> bytes:
    return b"r:" + CODES[table] + _pack(row_id)


def figures_key(erp_order_id: int) -> bytes:
    return b"a:" + _pack(erp_order_id)


@dataclass(slots=True)
class Record:
    """A stored row version: its position, the row (None: deleted) and its unit state.

    ``fields``: the row as stored (:func:`~.records.encode`), kept once known: a row is
    written again each time its unit state moves, and is never changed itself.
    ``unit``: ``(extra, its contribution decoded)``, kept by :func:`unit` while ``extra``
    is that very object (``extra`` is always replaced, never changed in place): a
    production order's contribution was decoded from its text at each of its changes and
    again at each status of its line."""

    position: SourcePosition
    row: Any
    extra: Any = None
    fields: list[Any] | None = field(default=None, compare=False)
    unit: tuple[Any, Contribution] | None = field(default=None, compare=False)


def unit(rec: Record | None) -> tuple[int | None, Contribution]:
    """The order and contribution a unit last added (none yet: ``(None, {})``); the
    contribution is shared with the record: do not change it."""
    if rec is None or not rec.extra:
        return None, {}
    extra = rec.extra
    kept = rec.unit
    if kept is None or kept[0] is not extra:
        kept = rec.unit = (extra, progress.decode_figures(extra[1]))
    return extra[0], kept[1]


def set_unit(rec: Record, extra: list[Any], contribution: Contribution) -> None:
    """Give ``rec`` its new unit state (``contribution`` encoded in ``extra[1]``), the
    decoded contribution kept with it (equal to decoding the text: a Decimal's text
    gives it back exactly, and the keys keep their order)."""
    rec.extra = extra
    rec.unit = (extra, contribution)


__all__ = ["CODES", "Record", "figures_key", "key_id", "row_key", "set_unit", "unit"]

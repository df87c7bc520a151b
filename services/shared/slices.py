"""Slices: one source transaction's rows for one business key (issue 16, ADR 0003).

The router (:mod:`services.shared.routing`) cuts every whole source transaction into one
:class:`Slice` per business key it touches and produces each to ``route.<service>``,
keyed by the key, so one worker owns a key and gets its slices in commit order. A worker
applies a slice whole (it is the transaction's part for that key) after
:class:`~services.shared.slice_intake.SliceFold` admits it.

**Stale never wins** (invariant 2): the router runs at least once, so after a crash it
produces again what it produced before its commit, and a worker reads a slice again
after a handover. :class:`~services.shared.slice_intake.SliceFold` keeps, per key and
source database (two databases' LSNs do not compare), the commit LSN of the last slice
it admitted, in the shard's own state (the same write as what the slice changed), and
drops a slice at or below it: a repeat or an older one. A snapshot read (commit LSN 0:
no transaction, delivered alone) is admitted always and recorded never: a snapshot reads
the rows of one key one by one, all at the same position, and an incremental snapshot
runs during streaming; the service's own per-row position guard decides those, as it
does today.

Wire format: compact binary, like the changelog (an internal topic, read only by the
same service's workers, raw bytes with no schema to evolve in step with anything else).
The rows are the CDC records' own bytes: the worker decodes them with its intake
exactly as it decodes a change topic today, and a row's dead letter names the record
it came from. The Kafka key is the business key; the value, all integers big-endian::

    version       u8    2 (1: as 2 without part and parts, read as part 1 of 1)
    commit_lsn    u64   } the transaction's highest source position
    lsn           u64   }
    commit_ms     i64   source commit time, ms since the epoch
    number        u32   this slice's number, 1..slices (keys in byte order)
    slices        u32   the transaction's slices (the keys it touches)
    part          u32   this record's part of the slice, 1..parts
    parts         u32   the records the slice is produced as
    database      str   (u16 length + UTF-8)
    transaction   str   (length 0xFFFF: none, a snapshot read)
    rows          u32 count, per row in transaction order:
        topic str, partition u32, offset u64, timestamp i64,
        key blob, value blob (i32 length + bytes; -1: null),
        headers u16 count, per header: str, blob

A reference row (read by every key: currencies, warehouses, items) is one row framed
the same way (1 of 1), keyed by its table and primary key on the compacted reference
topic, so the topic keeps each row's latest change.

A **tick** (a router built with ``ticks``) is a slice numbered 0 of 0 with no rows, key
:data:`TICK_KEY`, produced to every partition: its database's source time at
``commit_ms`` (commit LSN 0), ``transaction`` :data:`CAUGHT_UP` when the router had
read that database's reference topics to their end, else none. A worker whose figures
run on source time (receivables' as-of date) reads its database's time from it while
its own keys are quiet.

**Parts.** A Kafka record has a size limit (the producer's ``max_request_size`` and the
topic's ``max.message.bytes``, 1 MiB by default) and a key's part of one transaction has
none: one CRM order of 5,000 lines is a 4.5 MB slice. :func:`split_slice` cuts a slice
into parts of at most :data:`PART_BYTES` each (rows whole, in order; a row larger than
that alone in its part), produced one after another to the key's partition, and a
worker joins them again (:mod:`services.shared.slice_intake`) before it applies the
slice whole.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from aiokafka.structs import ConsumerRecord

from services.shared.errors import MalformedEvent
from services.shared.position import SourcePosition

VERSION = 2
#: the most bytes of rows one part of a slice holds (well under Kafka's 1 MiB default
#: record limit, with room for the frame)
PART_BYTES = 512 * 1024
#: the state key prefix of the per-key last applied commit LSN (no service key starts
#: with this byte; ``\x01`` is the holders' progress)
APPLIED_PREFIX = b"\x02slice:"
#: a tick's Kafka key (produced to each partition explicitly) and its "transaction" when
#: the router was caught up with the database
TICK_KEY = b"\x00tick"
CAUGHT_UP = "caught-up"

_HEAD = struct.Struct(">BQQqII")
_PARTS = struct.Struct(">II")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")
_ROW = struct.Struct(">IQq")
_NONE = 0xFFFF


@dataclass(frozen=True, slots=True)
class SliceRow:
    """One CDC record of the transaction, as consumed (its bytes and its origin)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...] = ()

    @classmethod
    def of(cls, record: ConsumerRecord[bytes, bytes]) -> SliceRow:
        return cls(record.topic, record.partition, record.offset, record.timestamp,
                   record.key, record.value, tuple(record.headers or ()))

    def record(self) -> ConsumerRecord[bytes, bytes]:
        """The record again, for the worker's intake (decoding, dead letters)."""
        return ConsumerRecord(
            self.topic, self.partition, self.offset, self.timestamp, 0, self.key,
            self.value, None, -1 if self.key is None else len(self.key),
            -1 if self.value is None else len(self.value), self.headers,
        )


@dataclass(frozen=True, slots=True)
class Slice:
    """A transaction's rows for one key (see the module)."""

    key: bytes
    database: str
    transaction_id: str | None
    position: SourcePosition
    commit_time: datetime
    number: int
    slices: int
    rows: tuple[SliceRow, ...] = field(default=())
    #: this record's part of the slice, 1..parts (see the module)
    part: int = 1
    parts: int = 1

    @property
    def commit_lsn(self) -> int:
        return self.position.commit_lsn

    @property
    def whole(self) -> bool:
        return self.parts == 1

    @property
    def tick(self) -> bool:
        """A tick of the database's source time, no transaction's rows (see the module)."""
        return self.slices == 0

    @property
    def caught_up(self) -> bool:
        """A tick's: the router had read the database's reference topics to their end."""
        return self.tick and self.transaction_id == CAUGHT_UP


def _text(out: list[bytes], text: str) -> None:
    raw = text.encode()
    if len(raw) >= _NONE:
        raise ValueError(f"{text[:40]!r}...: longer than a slice's text field")
    out += (_U16.pack(len(raw)), raw)


def _blob(out: list[bytes], blob: bytes | None) -> None:
    if blob is None:
        out.append(_I32.pack(-1))
    else:
        out += (_I32.pack(len(blob)), blob)


def encode_slice(piece: Slice) -> bytes:
    """The value of ``piece`` on the route (or reference) topic; its key is ``piece.key``."""
    millis = int(piece.commit_time.timestamp() * 1000)
    out = [_HEAD.pack(VERSION, piece.position.commit_lsn, piece.position.lsn, millis,
                      piece.number, piece.slices), _PARTS.pack(piece.part, piece.parts)]
    _text(out, piece.database)
    if piece.transaction_id is None:
        out.append(_U16.pack(_NONE))
    else:
        _text(out, piece.transaction_id)
    out.append(_U32.pack(len(piece.rows)))
    for row in piece.rows:
        _row(out, row)
    return b"".join(out)


def _row(out: list[bytes], row: SliceRow) -> None:
    _text(out, row.topic)
    out.append(_ROW.pack(row.partition, row.offset, row.timestamp))
    _blob(out, row.key)
    _blob(out, row.value)
    out.append(_U16.pack(len(row.headers)))
    for name, value in row.headers:
        _text(out, name)
        _blob(out, value)


def encode_row(row: SliceRow) -> bytes:
    """One row alone, framed as in a slice (a router keeps rows so: its subscriptions)."""
    out: list[bytes] = []
    _row(out, row)
    return b"".join(out)


def decode_row(data: bytes) -> SliceRow:
    """The row :func:`encode_row` framed."""
    reader = _Reader(data)
    try:
        row = reader.row()
    except (struct.error, UnicodeDecodeError) as error:
        raise MalformedEvent(f"not a row: {error}") from None
    if reader.at != len(data):
        raise MalformedEvent(f"not a row: {len(data) - reader.at} bytes after it")
    return row


def tick_slice(database: str, at: datetime, *, caught_up: bool) -> Slice:
    """A tick: ``database``'s source time ``at`` (see the module)."""
    return Slice(TICK_KEY, database, CAUGHT_UP if caught_up else None, SourcePosition(0, 0),
                 at, 0, 0)


class _Reader:
    __slots__ = ("at", "data")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def take(self, shape: struct.Struct) -> tuple[int, ...]:
        values = shape.unpack_from(self.data, self.at)
        self.at += shape.size
        return values

    def bytes_(self, size: int) -> bytes:
        if size < 0 or self.at + size > len(self.data):
            raise struct.error("a length beyond the value")
        raw = self.data[self.at:self.at + size]
        self.at += size
        return raw

    def text(self) -> str | None:
        (size,) = self.take(_U16)
        return None if size == _NONE else self.bytes_(size).decode()

    def blob(self) -> bytes | None:
        (size,) = self.take(_I32)
        return None if size == -1 else self.bytes_(size)

    def row(self) -> SliceRow:
        topic = self.text() or ""
        partition, offset, timestamp = self.take(_ROW)
        row_key, row_value = self.blob(), self.blob()
        (headers,) = self.take(_U16)
        pairs = tuple((self.text() or "", self.blob()) for _ in range(headers))
        return SliceRow(topic, partition, offset, timestamp, row_key, row_value, pairs)


def decode_slice(key: bytes | None, value: bytes | None) -> Slice:
    """A route (or reference) record back as its :class:`Slice`; MalformedEvent (a dead
    letter) when it is not one."""
    if key is None or value is None:
        raise MalformedEvent("a route record without a key or a value")
    reader = _Reader(value)
    try:
        version, commit_lsn, lsn, millis, number, slices = reader.take(_HEAD)
        if version not in (1, VERSION):
            raise MalformedEvent(f"slice format version {version}, not {VERSION}")
        part, parts = reader.take(_PARTS) if version == VERSION else (1, 1)
        if not 1 <= part <= parts:
            raise MalformedEvent(f"a slice's part {part} of {parts}")
        database = reader.text()
        if database is None:
            raise MalformedEvent("a slice without its source database")
        transaction = reader.text()
        (count,) = reader.take(_U32)
        rows = [reader.row() for _ in range(count)]
    except (struct.error, UnicodeDecodeError) as error:
        raise MalformedEvent(f"not a slice: {error}") from None
    if reader.at != len(value):
        raise MalformedEvent(f"not a slice: {len(value) - reader.at} bytes after its rows")
    return Slice(key, database, transaction, SourcePosition(commit_lsn, lsn),
                 datetime.fromtimestamp(millis / 1000, UTC), number, slices, tuple(rows),
                 part, parts)


def _row_bytes(row: SliceRow) -> int:
    """About what ``row`` takes in a slice's value (its frame fields included)."""
    return (48 + len(row.topic) + len(row.key or b"") + len(row.value or b"")
            + sum(8 + len(name) + len(value or b"") for name, value in row.headers))


def split_slice(piece: Slice, most: int = PART_BYTES) -> list[Slice]:
    """``piece`` as the parts it is produced as: rows in order, at most ``most`` bytes
    of rows a part (a larger row alone); ``[piece]`` when it fits in one."""
    groups: list[list[SliceRow]] = [[]]
    size = 0
    for row in piece.rows:
        taken = _row_bytes(row)
        if groups[-1] and size + taken > most:
            groups.append([])
            size = 0
        groups[-1].append(row)
        size += taken
    if len(groups) == 1:
        return [piece]
    return [replace(piece, rows=tuple(rows), part=n, parts=len(groups))
            for n, rows in enumerate(groups, 1)]


def rows_of(pieces: Sequence[Slice]) -> list[ConsumerRecord[bytes, bytes]]:
    """Every row of ``pieces`` as a record, in order (for the worker's intake)."""
    return [row.record() for piece in pieces for row in piece.rows]


__all__ = [
    "APPLIED_PREFIX", "CAUGHT_UP", "PART_BYTES", "TICK_KEY", "VERSION", "Slice", "SliceRow",
    "decode_row", "decode_slice", "encode_row", "encode_slice", "rows_of", "split_slice",
    "tick_slice",
]

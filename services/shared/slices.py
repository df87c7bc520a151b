"""Slices: one source transaction's rows for one business key (issue 16, ADR 0003).

The router (:mod:`services.shared.routing`) cuts every whole source transaction into one
:class:`Slice` per business key it touches and produces each to ``route.<service>``,
keyed by the key, so one worker owns a key and gets its slices in commit order. A worker
applies a slice whole (it is the transaction's part for that key) after
:class:`SliceFold` admits it.

**Stale never wins** (invariant 2): the router runs at least once, so after a crash it
produces again what it produced before its commit, and a worker reads a slice again
after a handover. :class:`SliceFold` keeps, per key and source database (two databases'
LSNs do not compare), the commit LSN of the last slice it admitted, in the shard's own
state (the same write as what the slice changed), and drops a slice at or below it: a
repeat or an older one. A snapshot read (commit LSN 0: no transaction, delivered alone)
is admitted always and recorded never: a snapshot reads the rows of one key one by one,
all at the same position, and an incremental snapshot runs during streaming; the
service's own per-row position guard decides those, as it does today.

Wire format: compact binary, like the changelog (an internal topic, read only by the
same service's workers, raw bytes with no schema to evolve in step with anything else).
The rows are the CDC records' own bytes: the worker decodes them with its intake
exactly as it decodes a change topic today, and a row's dead letter names the record
it came from. The Kafka key is the business key; the value, all integers big-endian::

    version       u8    1
    commit_lsn    u64   } the transaction's highest source position
    lsn           u64   }
    commit_ms     i64   source commit time, ms since the epoch
    number        u32   this slice's number, 1..slices (keys in byte order)
    slices        u32   the transaction's slices (the keys it touches)
    database      str   (u16 length + UTF-8)
    transaction   str   (length 0xFFFF: none, a snapshot read)
    rows          u32 count, per row in transaction order:
        topic str, partition u32, offset u64, timestamp i64,
        key blob, value blob (i32 length + bytes; -1: null),
        headers u16 count, per header: str, blob

A reference row (read by every key: currencies, warehouses, items) is one row framed
the same way (1 of 1), keyed by its table and primary key on the compacted reference
topic, so the topic keeps each row's latest change.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiokafka.structs import ConsumerRecord

from services.shared.errors import BadInput, MalformedEvent
from services.shared.position import SourcePosition
from services.shared.state.store import KeyValue

VERSION = 1
#: the state key prefix of the per-key last applied commit LSN (no service key starts
#: with this byte; ``\x01`` is the holders' progress)
APPLIED_PREFIX = b"\x02slice:"

_HEAD = struct.Struct(">BQQqII")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")
_ROW = struct.Struct(">IQq")
_LSN = struct.Struct(">Q")
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

    @property
    def commit_lsn(self) -> int:
        return self.position.commit_lsn


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
                      piece.number, piece.slices)]
    _text(out, piece.database)
    if piece.transaction_id is None:
        out.append(_U16.pack(_NONE))
    else:
        _text(out, piece.transaction_id)
    out.append(_U32.pack(len(piece.rows)))
    for row in piece.rows:
        _text(out, row.topic)
        out.append(_ROW.pack(row.partition, row.offset, row.timestamp))
        _blob(out, row.key)
        _blob(out, row.value)
        out.append(_U16.pack(len(row.headers)))
        for name, value in row.headers:
            _text(out, name)
            _blob(out, value)
    return b"".join(out)


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


def decode_slice(key: bytes | None, value: bytes | None) -> Slice:
    """A route (or reference) record back as its :class:`Slice`; MalformedEvent (a dead
    letter) when it is not one."""
    if key is None or value is None:
        raise MalformedEvent("a route record without a key or a value")
    reader = _Reader(value)
    try:
        version, commit_lsn, lsn, millis, number, slices = reader.take(_HEAD)
        if version != VERSION:
            raise MalformedEvent(f"slice format version {version}, not {VERSION}")
        database = reader.text()
        if database is None:
            raise MalformedEvent("a slice without its source database")
        transaction = reader.text()
        (count,) = reader.take(_U32)
        rows = []
        for _ in range(count):
            topic = reader.text() or ""
            partition, offset, timestamp = reader.take(_ROW)
            row_key, row_value = reader.blob(), reader.blob()
            (headers,) = reader.take(_U16)
            pairs = tuple((reader.text() or "", reader.blob()) for _ in range(headers))
            rows.append(SliceRow(topic, partition, offset, timestamp, row_key, row_value,
                                 pairs))
    except (struct.error, UnicodeDecodeError) as error:
        raise MalformedEvent(f"not a slice: {error}") from None
    if reader.at != len(value):
        raise MalformedEvent(f"not a slice: {len(value) - reader.at} bytes after its rows")
    return Slice(key, database, transaction, SourcePosition(commit_lsn, lsn),
                 datetime.fromtimestamp(millis / 1000, UTC), number, slices, tuple(rows))


@dataclass
class Admitted:
    """What :meth:`SliceFold.take` made of a shard's records."""

    slices: list[tuple[ConsumerRecord[bytes, bytes], Slice]] = field(default_factory=list)
    #: slices dropped: at or below their key's last applied commit LSN
    repeats: int = 0
    #: records that are no slice (to the dead letters)
    bad: list[tuple[ConsumerRecord[bytes, bytes], BadInput]] = field(default_factory=list)


class SliceFold:
    """A worker's guard over the slices of one shard (see the module): ``state`` is the
    shard's overlay, so what it records is durable with what the slices changed."""

    def __init__(self, state: KeyValue) -> None:
        self.state = state

    @staticmethod
    def applied_key(database: str, key: bytes) -> bytes:
        return APPLIED_PREFIX + database.encode() + b"\x00" + key

    def applied(self, database: str, key: bytes) -> int | None:
        """The commit LSN of the last slice of ``key`` from ``database`` admitted."""
        raw = self.state.get(self.applied_key(database, key))
        return None if raw is None else int(_LSN.unpack(raw)[0])

    def admit(self, piece: Slice) -> bool:
        """Whether to apply ``piece``: False for a repeat or an older slice; True
        otherwise, and its commit LSN is recorded as the key's last."""
        lsn = piece.commit_lsn
        if lsn == 0:
            return True  # a snapshot read: the service's per-row guard decides
        last = self.applied(piece.database, piece.key)
        if last is not None and lsn <= last:
            return False
        self.state.put(self.applied_key(piece.database, piece.key), _LSN.pack(lsn))
        return True

    def take(self, records: Iterable[ConsumerRecord[bytes, bytes]]) -> Admitted:
        """The slices of ``records`` to apply, in order; repeats counted, records that
        are no slice set aside for the dead letters."""
        out = Admitted()
        for record in records:
            try:
                piece = decode_slice(record.key, record.value)
            except BadInput as error:
                out.bad.append((record, error))
                continue
            if self.admit(piece):
                out.slices.append((record, piece))
            else:
                out.repeats += 1
        return out


def rows_of(pieces: Sequence[Slice]) -> list[ConsumerRecord[bytes, bytes]]:
    """Every row of ``pieces`` as a record, in order (for the worker's intake)."""
    return [row.record() for piece in pieces for row in piece.rows]


__all__ = [
    "APPLIED_PREFIX", "VERSION", "Admitted", "Slice", "SliceFold", "SliceRow", "decode_slice",
    "encode_slice", "rows_of",
]

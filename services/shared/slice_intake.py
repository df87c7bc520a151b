"""A worker's intake of route records (issue 16, ADR 0003): a slice's parts joined
again (:class:`SliceParts`), then the stale guard (:class:`SliceFold`, see
:mod:`services.shared.slices`).

The router produces a slice too large for one Kafka record as parts 1..P, one after
another, to the key's partition (:func:`services.shared.slices.split_slice`). The
worker reads them in that order, perhaps over several fetches, and applies the slice
only once every part is in: a key's part of a transaction stays whole.

What can arrive, and what :class:`SliceParts` makes of it:

* parts 1..P in order: the whole slice when part P arrives, with every part's record
  (the caller holds each record's offset back until the slice is applied, so a crash
  between two parts redelivers from part 1);
* part 1 of the same transaction again while its slice is being joined (the router
  crashed after producing some parts and produced the transaction again): the join
  starts over from it; the records taken before stay held by the caller until the
  slice is applied, which only delays their commit;
* anything else for that key before the last part (part 3 after part 1, another
  transaction's slice): the slice being joined can never be completed, so its records
  are bad, returned with the reason for the dead letters (the rest of the transaction
  is applied by the other keys' slices, as for any refused slice); a part without
  the parts before it is bad the same way. A whole slice that follows is applied.

State is per partition and key, in memory: after a rebalance or a failed batch (the
consumer's offsets are rewound) the caller calls :meth:`SliceParts.clear` and the
parts are read again.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeAlias

from aiokafka.structs import ConsumerRecord

from services.shared.errors import BadInput, MalformedEvent
from services.shared.slices import APPLIED_PREFIX, Slice, decode_slice
from services.shared.state.store import KeyValue

Record: TypeAlias = ConsumerRecord[bytes, bytes]
_LSN = struct.Struct(">Q")


@dataclass
class _Joining:
    first: Slice
    parts: list[Slice] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    #: the records of an earlier, unfinished production of the same slice
    stale: list[Record] = field(default_factory=list)

    def same_transaction(self, piece: Slice) -> bool:
        first = self.first
        return (piece.parts == first.parts and piece.position == first.position
                and piece.database == first.database
                and piece.transaction_id == first.transaction_id)

    def continues(self, piece: Slice) -> bool:
        return piece.part == len(self.parts) + 1 and self.same_transaction(piece)


@dataclass(frozen=True)
class Joined:
    """What one record made: a whole slice (with its parts: each part's record and
    rows, in order), nothing yet, and bad records (with the reason)."""

    whole: Slice | None = None
    parts: Sequence[tuple[Record, Slice]] = ()
    bad: Sequence[tuple[Record, BadInput]] = ()
    #: records of an earlier production of the whole slice's parts (nothing to apply:
    #: released with it)
    stale: Sequence[Record] = ()


class SliceParts:
    """Joins the parts of slices, per route partition and key (see the module)."""

    def __init__(self) -> None:
        self._joining: dict[tuple[str, int, bytes], _Joining] = {}

    def __len__(self) -> int:
        """Slices being joined."""
        return len(self._joining)

    def clear(self) -> None:
        self._joining.clear()

    def waiting(self) -> list[Record]:
        """The records of every slice being joined (earlier productions' too)."""
        return [r for j in self._joining.values() for r in (*j.stale, *j.records)]

    def add(self, record: Record, piece: Slice) -> Joined:
        """What ``record`` (decoded: ``piece``) makes (see the module)."""
        if piece.whole and not self._joining:
            return Joined(piece, ((record, piece),))
        where = (record.topic, record.partition, piece.key)
        joining = self._joining.get(where)
        bad: list[tuple[Record, BadInput]] = []
        if joining is not None and not joining.continues(piece):
            if piece.part == 1 and joining.same_transaction(piece):
                # produced again: start over; the records taken stay held till applied
                joining = self._joining[where] = _Joining(
                    piece, stale=[*joining.stale, *joining.records])
            else:
                del self._joining[where]
                reason = MalformedEvent(
                    f"a slice of {piece.key!r} (transaction {joining.first.transaction_id}) "
                    f"left at part {len(joining.parts)} of {joining.first.parts}: part "
                    f"{piece.part} of {piece.parts} of transaction {piece.transaction_id} "
                    "came next")
                bad = [(r, reason) for r in (*joining.stale, *joining.records)]
                joining = None
        if joining is None:
            if piece.whole:
                return Joined(piece, ((record, piece),), bad)
            if piece.part != 1:
                bad.append((record, MalformedEvent(
                    f"part {piece.part} of {piece.parts} of a slice of {piece.key!r} "
                    "without the parts before it")))
                return Joined(bad=bad)
            joining = self._joining[where] = _Joining(piece)
        joining.parts.append(piece)
        joining.records.append(record)
        if piece.part < piece.parts:
            return Joined(bad=bad)
        del self._joining[where]
        rows = tuple(row for part in joining.parts for row in part.rows)
        whole = replace(joining.first, rows=rows, part=1, parts=1)
        return Joined(whole, list(zip(joining.records, joining.parts, strict=True)), bad,
                      joining.stale)


@dataclass
class Admitted:
    """What :meth:`SliceFold.take` made of a shard's records."""

    slices: list[tuple[ConsumerRecord[bytes, bytes], Slice]] = field(default_factory=list)
    #: slices dropped: at or below their key's last applied commit LSN
    repeats: int = 0
    #: records that are no slice (to the dead letters)
    bad: list[tuple[ConsumerRecord[bytes, bytes], BadInput]] = field(default_factory=list)
    #: records of parts of slices not whole yet (their offsets not to be committed)
    waiting: list[ConsumerRecord[bytes, bytes]] = field(default_factory=list)


class SliceFold:
    """A worker's guard over the slices of one shard (see the module): ``state`` is the
    shard's overlay, so what it records is durable with what the slices changed."""

    def __init__(self, state: KeyValue) -> None:
        self.state = state
        self.parts = SliceParts()

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
        """The whole slices of ``records`` to apply, in order, each with the record of
        its last part; repeats counted, records that are no slice (or a part that cannot
        be joined) set aside for the dead letters. The parts of a slice not whole yet
        are kept for the next call; the caller keeps their offsets uncommitted
        (:attr:`Admitted.waiting`) and calls ``self.parts.clear()`` when it is
        rewound."""
        out = Admitted()
        for record in records:
            try:
                piece = decode_slice(record.key, record.value)
            except BadInput as error:
                out.bad.append((record, error))
                continue
            joined = self.parts.add(record, piece)
            out.bad.extend(joined.bad)
            if joined.whole is None:
                continue
            if self.admit(joined.whole):
                out.slices.append((record, joined.whole))
            else:
                out.repeats += 1
        out.waiting = self.parts.waiting()
        return out


__all__ = ["Admitted", "Joined", "SliceFold", "SliceParts"]

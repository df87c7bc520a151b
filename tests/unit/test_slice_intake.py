"""A slice too large for one Kafka record goes as parts and is applied whole.

Invariants (issue 16, ADR 0003; a 5,000-line CRM order made the router's slice 4.5 MB
and the router crashed on Kafka's record limit): every part a router produces fits a
record (``PART_BYTES`` of rows; a larger row alone); a worker gets back exactly the
slice that was split (rows in order, nothing twice) only once its last part is in,
however the parts fall over fetches; a slice produced again from part 1 after a router
crash is joined once; a part that cannot belong to a slice the router produced is a bad
record with the reason, never applied as if whole, and takes no other slice with it;
the stale guard admits a slice of parts once, whole, and does not take its parts for
repeats of each other.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest
from aiokafka.structs import ConsumerRecord

from services.shared.errors import MalformedEvent
from services.shared.position import SourcePosition
from services.shared.slice_intake import SliceFold, SliceParts
from services.shared.slices import (
    PART_BYTES,
    Slice,
    SliceRow,
    decode_slice,
    encode_slice,
    split_slice,
)
from services.shared.state.store import MemoryState

COMMIT = datetime(2026, 12, 4, 8, 0, tzinfo=UTC)


def a_slice(rows: int, *, size: int = 900, key: bytes = b"order:1", lsn: int = 77,
            transaction: str = "t77") -> Slice:
    return Slice(key, "crm", transaction, SourcePosition(lsn, lsn), COMMIT, 1, 1, tuple(
        SliceRow("cdc.crm.sales_order_line", n % 3, n, 1_000 + n, b"k%d" % n,
                 bytes([n % 251]) * size, (("h", b"v"),)) for n in range(rows)))


class Route:
    """The route topic's partition 0: the records produced, offsets in order."""

    def __init__(self) -> None:
        self.records: list[ConsumerRecord[bytes, bytes]] = []

    def produce(self, *pieces: Slice) -> list[ConsumerRecord[bytes, bytes]]:
        out = []
        for piece in pieces:
            value = encode_slice(piece)
            out.append(ConsumerRecord("route.x", 0, len(self.records), 0, 0, piece.key,
                                      value, None, len(piece.key), len(value), ()))
            self.records.append(out[-1])
        return out


def join(parts: SliceParts, records: list[ConsumerRecord[bytes, bytes]]) -> list[Slice]:
    whole = []
    for record in records:
        joined = parts.add(record, decode_slice(record.key, record.value))
        assert not joined.bad
        if joined.whole is not None:
            whole.append(joined.whole)
    return whole


def test_a_large_slice_is_cut_into_parts_that_each_fit_a_record() -> None:
    piece = a_slice(5_000)  # ~4.7 MB of rows, as the 5,000-line order's
    parts = split_slice(piece)
    assert len(encode_slice(piece)) > 4_000_000 and len(parts) >= 9
    assert [(p.part, p.parts) for p in parts] == [(n, len(parts)) for n in
                                                  range(1, len(parts) + 1)]
    assert all(len(encode_slice(p)) <= PART_BYTES + 1024 for p in parts)
    assert tuple(row for p in parts for row in p.rows) == piece.rows
    assert split_slice(a_slice(3)) == [a_slice(3)]  # small: one record, as before
    alone = split_slice(a_slice(3, size=PART_BYTES), most=PART_BYTES)
    assert [len(p.rows) for p in alone] == [1, 1, 1]


@pytest.mark.parametrize("cut", [1, 4, 9])
def test_parts_over_several_fetches_join_to_the_slice_once_the_last_is_in(cut: int) -> None:
    piece = a_slice(5_000)
    route, parts = Route(), SliceParts()
    records = route.produce(*split_slice(piece))
    assert join(parts, records[:cut]) == [] and len(parts) == 1
    assert join(parts, records[cut:]) == [piece]
    assert len(parts) == 0


def test_a_slice_produced_again_after_a_router_crash_is_joined_once() -> None:
    piece = a_slice(2_000)
    route, parts = Route(), SliceParts()
    split = split_slice(piece)
    first_try = route.produce(*split[:2])  # the router crashed after two parts
    assert join(parts, first_try) == []
    again = route.produce(*split)
    wholes = []
    for record in again:
        joined = parts.add(record, decode_slice(record.key, record.value))
        if joined.whole is not None:
            wholes.append(joined)
    [joined] = wholes
    assert joined.whole == piece
    assert list(joined.stale) == first_try  # released with it, nothing applied twice
    assert [r for r, _ in joined.parts] == again


def test_parts_that_cannot_be_a_produced_slice_are_bad_and_take_nothing_else() -> None:
    route, parts = Route(), SliceParts()
    split = split_slice(a_slice(2_000))
    # a part without the ones before it
    [stray] = route.produce(split[2])
    joined = parts.add(stray, decode_slice(stray.key, stray.value))
    assert joined.whole is None and [r for r, _ in joined.bad] == [stray]
    assert isinstance(joined.bad[0][1], MalformedEvent)
    assert "without the parts before it" in joined.bad[0][1].reason
    # a slice left unfinished, then another transaction's whole slice of the same key
    left = route.produce(*split[:2])
    join(parts, left)
    later = a_slice(2, lsn=90, transaction="t90")
    [record] = route.produce(later)
    joined = parts.add(record, decode_slice(record.key, record.value))
    assert joined.whole == later
    assert [r for r, _ in joined.bad] == left
    assert "left at part 2 of" in joined.bad[0][1].reason
    # another key's parts on the same partition are not disturbed
    other = split_slice(a_slice(2_000, key=b"order:2"))
    assert join(parts, route.produce(*other)) == [a_slice(2_000, key=b"order:2")]


def test_a_slice_of_the_first_format_reads_as_one_whole_part() -> None:
    piece = a_slice(2)
    value = encode_slice(piece)
    first_format = b"\x01" + value[1:33] + value[41:]  # without part and parts
    assert decode_slice(piece.key, first_format) == piece
    with pytest.raises(MalformedEvent, match="part 3 of 2"):
        decode_slice(piece.key, encode_slice(replace(piece, part=3, parts=2)))


def test_the_stale_guard_admits_a_slice_of_parts_once_whole_and_not_its_parts_as_repeats(
) -> None:
    piece = a_slice(2_000)
    route = Route()
    records = route.produce(*split_slice(piece))
    guard = SliceFold(MemoryState())
    first = guard.take(records[:2])
    assert first.slices == [] and first.repeats == 0 and first.waiting == records[:2]
    rest = guard.take(records[2:])
    assert rest.slices == [(records[-1], piece)] and rest.repeats == 0 and rest.waiting == []
    again = guard.take(route.produce(*split_slice(piece)))  # delivered again: a repeat
    assert again.slices == [] and again.repeats == 1

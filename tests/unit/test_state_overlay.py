"""A batch's overlay scans like the state it will become, at the cost of what it hands out.

Invariants: :meth:`Overlay.scan` yields exactly what the base would hold with the
batch's writes applied (puts win, deletes hide), in key order, from ``start`` on, each
key once, the batch's writes as they were when the scan started; and a scan costs a
search plus the entries in its range, not a pass over every key the batch has written
nor over the whole base range (issue 11: receivables' replay, a few range scans per
source transaction over a batch of thousands of writes, stalled for minutes). The cost
is counted in key comparisons and entries read, never timed.

And a batch's writes are held at their own size: a value encoded by orjson (whose
output sits in a buffer of at least 4 KiB) costs the overlay its length, not 4 KiB
(issue 11: receivables' worker held ~200 MB for a batch of 50,000 entries).
"""

from __future__ import annotations

import random
import tracemalloc
from collections.abc import Iterator
from typing import Any

import orjson

from services.shared.state.store import MemoryState, Overlay


def _model(base: dict[bytes, bytes], pending: dict[bytes, bytes | None],
           prefix: bytes, start: bytes | None) -> list[tuple[bytes, bytes]]:
    merged = dict(base)
    for key, value in pending.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    low = prefix if start is None else max(prefix, start)
    return sorted((k, v) for k, v in merged.items() if k.startswith(prefix) and k >= low)


def test_a_scan_merges_the_batch_writes_with_the_base_in_key_order() -> None:
    rng = random.Random(11)
    alphabet = [bytes([c]) for c in b"abc\xff"]
    for _ in range(200):
        base = MemoryState()
        stored: dict[bytes, bytes] = {}
        for _ in range(rng.randrange(30)):
            key = b"".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 4)))
            stored[key] = b"base"
        base.write(stored)
        overlay = Overlay(base)
        for _ in range(rng.randrange(30)):
            key = b"".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 4)))
            if rng.random() < 0.4:
                overlay.delete(key)
            else:
                overlay.put(key, b"mine" + key)
        for prefix in (b"", b"a", b"b", b"ab", b"\xff", b"c\xff"):
            for start in (None, b"", b"a", b"b\x00", b"c", b"\xff\xff"):
                expected = _model(stored, overlay.pending, prefix, start)
                assert list(overlay.scan(prefix, start)) == expected, (prefix, start)


def test_a_scan_sees_the_batch_writes_as_they_were_when_it_started() -> None:
    base = MemoryState()
    base.write({b"k1": b"1", b"k3": b"3", b"k5": b"5", b"k7": b"7"})
    overlay = Overlay(base)
    overlay.put(b"k2", b"2")
    overlay.put(b"k3", b"three")
    seen = []
    for key, value in overlay.scan(b"k"):
        seen.append((key, value))
        if key == b"k2":
            overlay.put(b"k4", b"4")  # written during the scan: not seen
            overlay.delete(b"k3")
    assert seen == [(b"k1", b"1"), (b"k2", b"2"), (b"k3", b"three"), (b"k5", b"5"),
                    (b"k7", b"7")]


class Key(bytes):
    """A key that counts the comparisons and prefix tests made on it."""

    operations = 0

    def _count(self) -> None:
        Key.operations += 1

    def __lt__(self, other: Any) -> bool:
        self._count()
        return bytes.__lt__(self, other)

    def __le__(self, other: Any) -> bool:
        self._count()
        return bytes.__le__(self, other)

    def __gt__(self, other: Any) -> bool:
        self._count()
        return bytes.__gt__(self, other)

    def __ge__(self, other: Any) -> bool:
        self._count()
        return bytes.__ge__(self, other)

    def __eq__(self, other: object) -> bool:
        self._count()
        return bytes.__eq__(self, other)

    def __hash__(self) -> int:
        return bytes.__hash__(self)

    def startswith(self, *args: Any) -> bool:
        self._count()
        return bytes.startswith(self, *args)


def test_a_scan_costs_what_it_hands_out_not_the_keys_the_batch_wrote() -> None:
    overlay = Overlay(MemoryState())
    written = 20_000
    for n in range(written):
        overlay.put(Key(b"A" + n.to_bytes(4, "big")), b"v")
    overlay.put(Key(b"M1"), b"m")
    Key.operations = 0
    assert list(overlay.scan(b"M")) == [(b"M1", b"m")]
    assert list(overlay.scan(b"B")) == []
    first = next(overlay.scan(b"A", b"A" + (7_000).to_bytes(4, "big")))
    assert first == (b"A" + (7_000).to_bytes(4, "big"), b"v")
    # a few searches of ~log2(20,000) = 15 comparisons each, not a pass over 20,000 keys
    assert Key.operations < 500, Key.operations


class CountingBase(MemoryState):
    """A base that counts the entries its scans hand out."""

    def __init__(self) -> None:
        super().__init__()
        self.read = 0

    def scan(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        for entry in super().scan(prefix, start):
            self.read += 1
            yield entry


def test_a_scan_stopped_early_reads_no_more_of_the_base_than_it_hands_out() -> None:
    base = CountingBase()
    base.write({b"D" + n.to_bytes(4, "big"): b"v" for n in range(10_000)})
    overlay = Overlay(base)
    overlay.put(b"D" + (5_000).to_bytes(4, "big"), b"mine")  # the batch wrote in the range
    overlay.put(b"E", b"e")
    base.read = 0
    scan = overlay.scan(b"D", b"D" + (4_999).to_bytes(4, "big"))
    assert [next(scan), next(scan)] == [(b"D" + (4_999).to_bytes(4, "big"), b"v"),
                                        (b"D" + (5_000).to_bytes(4, "big"), b"mine")]
    assert base.read <= 3, base.read


def test_a_batch_holds_each_value_it_puts_at_its_own_size() -> None:
    overlay = Overlay(MemoryState())
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(2_000):
            overlay.put(n.to_bytes(8, "big"), orjson.dumps([n, "EUR", "100.00", None]))
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert overlay.pending[(7).to_bytes(8, "big")] == b'[7,"EUR","100.00",null]'
    # keys, values and the sorted key list: a few hundred bytes an entry (4 KiB each
    # when the orjson buffers were kept)
    assert held < 2_000 * 600, held

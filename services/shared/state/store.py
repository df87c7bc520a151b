"""The state a service folds into: a small ordered key-value port (no I/O here).

A service's pure core reads and writes raw ``bytes -> bytes`` entries through
:class:`KeyValue`. Why a port and not Python dicts: with a million keys the state does
not fit a worker's memory budget as objects (inventory-projection: about 1.4 KB per row
version as dicts), so in production it lives in a local RocksDB
(:mod:`~services.shared.state.rocks`) and only the keys a batch touches are decoded.
Unit tests (and ``table_store=memory``) use :class:`MemoryState`.

:class:`Overlay` is the per-batch write buffer over a :class:`StateStore`: reads see the
batch's own writes, and :meth:`Overlay.drain` hands the whole change set to the
:class:`~services.shared.state.checkpoint.Checkpoint`, which produces it to the
changelog and writes it (with the source offsets it covers) in ONE atomic write.
Nothing is written to the backing store before that, so a crash in the middle of a
batch leaves the previous batch's state, never half of one.

Keys are the service's own, except two the component reserves:
:data:`~services.shared.state.changelog.OFFSETS_KEY` (``o``: the source offsets the
state covers) and :data:`~services.shared.state.changelog.RESTORING_KEY`.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Mapping
from typing import Protocol

from sortedcontainers import SortedList


class KeyValue(Protocol):
    """Ordered raw key-value access, what the pure core needs."""

    def get(self, key: bytes) -> bytes | None: ...

    def put(self, key: bytes, value: bytes) -> None: ...

    def delete(self, key: bytes) -> None: ...

    def scan(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Entries whose key starts with ``prefix``, in key order, from ``start`` on."""
        ...


class StateWriter(Protocol):
    """One atomic change set being built (later puts of a key win)."""

    def set(self, key: bytes, value: bytes | None) -> None:
        """Put ``value`` (None: delete the key)."""
        ...

    def commit(self) -> int:
        """Apply the change set atomically; the number of operations it held."""
        ...


class StateStore(Protocol):
    """A durable :class:`KeyValue` whose writes are applied as whole change sets."""

    def get(self, key: bytes) -> bytes | None: ...

    def scan(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]: ...

    def write(self, changes: Mapping[bytes, bytes | None]) -> None:
        """Apply every put (value) and delete (None) atomically."""
        ...

    def writer(self, *, bulk: bool = False) -> StateWriter:
        """A change set built entry by entry (a restore copies raw entries into it).

        ``bulk``: the write may skip the store's crash journal (RocksDB's WAL), so a
        crash can lose it; only for a restore, which is guarded by its marker and made
        durable by :meth:`sync` before the marker is removed."""
        ...

    def sync(self) -> None:
        """Make every write so far durable, bulk ones included."""
        ...

    def clear(self) -> None:
        """Delete every entry (a restore that did not finish is started over)."""
        ...

    def is_empty(self) -> bool: ...

    def memory(self) -> Mapping[str, int]:
        """Bytes held in memory by part (``ambidex_state_store_memory_bytes``)."""
        ...

    def close(self) -> None: ...


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with ``prefix``."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


def right_sized(value: bytes) -> bytes:
    """A copy of ``value`` in a buffer of its own length.

    orjson (3.12 on) hands back its output in the buffer it wrote into, at least 4 KiB
    whatever the length: a batch's change set holds every value it puts until the
    checkpoint drains it, so 50,000 entries of ~60 bytes held 200 MB (issue 11: the
    worker's RSS rose 5 KB a change replayed). Copying costs well under a microsecond."""
    return b"".join((value, b""))


class MemoryState:
    """:class:`StateStore` in a dict (unit tests, ``table_store=memory``)."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self._sorted: list[bytes] | None = None

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def memory(self) -> Mapping[str, int]:
        return {}  # Python objects: in ambidex_python_allocated_blocks

    def put(self, key: bytes, value: bytes) -> None:
        if key not in self.data:
            self._sorted = None
        self.data[key] = value

    def delete(self, key: bytes) -> None:
        if self.data.pop(key, None) is not None:
            self._sorted = None

    def scan(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        if self._sorted is None:
            self._sorted = sorted(self.data)
        keys = self._sorted
        low = max(prefix, start) if start is not None else prefix
        end = prefix_end(prefix)
        i = bisect.bisect_left(keys, low)
        while i < len(keys):
            key = keys[i]
            if end is not None and key >= end:
                break
            value = self.data.get(key)
            if value is not None:
                yield key, value
            i += 1

    def write(self, changes: Mapping[bytes, bytes | None]) -> None:
        for key, value in changes.items():
            if value is None:
                self.delete(key)
            else:
                self.put(key, value)

    def writer(self, *, bulk: bool = False) -> StateWriter:
        return _DictWriter(self)

    def sync(self) -> None:
        return None

    def clear(self) -> None:
        self.data.clear()
        self._sorted = None

    def is_empty(self) -> bool:
        return not self.data

    def close(self) -> None:
        return None


class _DictWriter:
    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.changes: dict[bytes, bytes | None] = {}

    def set(self, key: bytes, value: bytes | None) -> None:
        self.changes[key] = value

    def commit(self) -> int:
        if self.changes:
            self.store.write(self.changes)
        return len(self.changes)


class Overlay:
    """A batch's writes buffered over ``base``; see the module docstring.

    The written keys are also kept in key order (:class:`SortedList`), so a
    :meth:`scan` merges the base's entries with the batch's own lazily: it costs a
    search plus the entries it hands out, however many keys the batch has written
    (a scan that filtered every written key made a batch's fold quadratic: issue 11's
    replay of one change per transaction stalled at thousands of keys a batch)."""

    def __init__(self, base: StateStore) -> None:
        self.base = base
        self.pending: dict[bytes, bytes | None] = {}
        self._keys: SortedList = SortedList()

    def get(self, key: bytes) -> bytes | None:
        if key in self.pending:
            return self.pending[key]
        return self.base.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        if key not in self.pending:
            self._keys.add(key)
        self.pending[key] = right_sized(value)

    def delete(self, key: bytes) -> None:
        if key not in self.pending:
            self._keys.add(key)
        self.pending[key] = None

    def scan(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """The base's entries merged with the batch's writes, in key order.

        The batch's writes in the range are taken when the scan starts (writes made
        during it are not seen, as before); the base's entries are read lazily (it is
        not written during a batch), so a scan stopped early reads no more of it."""
        low = max(prefix, start) if start is not None else prefix
        pending = self.pending
        mine = [(key, pending[key])
                for key in self._keys.irange(low, prefix_end(prefix), inclusive=(True, False))]
        if not mine:
            yield from self.base.scan(prefix, start)
            return
        base = self.base.scan(prefix, start)
        below = next(base, None)
        for key, value in mine:
            while below is not None and below[0] < key:
                yield below
                below = next(base, None)
            if below is not None and below[0] == key:
                below = next(base, None)
            if value is not None:
                yield key, value
        while below is not None:
            yield below
            below = next(base, None)

    def drain(self) -> dict[bytes, bytes | None]:
        """The batch's change set; the overlay is empty afterwards."""
        changes, self.pending = self.pending, {}
        self._keys = SortedList()
        return changes

    def discard(self) -> None:
        self.pending = {}
        self._keys = SortedList()


class Prefixed:
    """A :class:`KeyValue` whose keys all live under ``prefix`` of ``base``: a second
    fold sharing one state (demand signals in inventory-projection's) keeps its own
    key space, so neither's layout can collide with the other's."""

    __slots__ = ("base", "prefix")

    def __init__(self, base: KeyValue, prefix: bytes) -> None:
        self.base = base
        self.prefix = prefix

    def get(self, key: bytes) -> bytes | None:
        return self.base.get(self.prefix + key)

    def put(self, key: bytes, value: bytes) -> None:
        self.base.put(self.prefix + key, value)

    def delete(self, key: bytes) -> None:
        self.base.delete(self.prefix + key)

    def scan(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        cut = len(self.prefix)
        begin = None if start is None else self.prefix + start
        for key, value in self.base.scan(self.prefix + prefix, begin):
            yield key[cut:], value


__all__ = [
    "KeyValue", "MemoryState", "Overlay", "Prefixed", "StateStore", "StateWriter", "prefix_end",
    "right_sized",
]

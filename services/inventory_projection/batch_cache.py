"""Entries of the projection's state decoded at most once per batch (pure, no I/O).

Everything inventory-projection keeps per order (the order row versions, the indexes
that find a line's inputs, each line's demand and the sums over it) lives in the
:class:`~.state.KeyValue` state, not in the worker's memory: memory must not grow with
the history (issue 9, 7d: every order row version kept in a dict grew a worker by
~450 MB an hour). Decoding an entry at each use would make a 5,000-line order decode
its order's entries 5,000 times, so a :class:`BatchCache` decodes each entry once per
batch, hands the same object to every use, and writes each entry changed in the batch
once, in :meth:`BatchCache.flush`, which also empties it. Like the stock ledger's
aggregates (:mod:`.ledger`): what is held is bounded by the batch, never by the history.

:class:`MemberIndex` is the other shape: one empty entry per member (``prefix + group +
member``), for groups that grow with the history (the lines of a product, the orders
of a warehouse code) and are read only by rare catalogue changes, by a prefix scan.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

import orjson

from services.shared.state.store import KeyValue

K = TypeVar("K")
V = TypeVar("V")

_id = struct.Struct(">q").pack
_pair = struct.Struct(">qq").pack


def id_bytes(*ids: int) -> bytes:
    """Ids as 8-byte big-endian each, so byte order is numeric order. (One or two ids
    packed at once: a folded line builds a dozen keys.)"""
    if len(ids) == 1:
        return _id(ids[0])
    if len(ids) == 2:
        return _pair(*ids)
    return b"".join(_id(i) for i in ids)


def decode_id(raw: bytes) -> int:
    return int.from_bytes(raw, "big", signed=True)


class BatchCache(Generic[K, V]):
    """The entries under ``prefix``, decoded once per batch; changes written at flush.

    A value handed out may be changed in place by its owner, who then calls
    :meth:`put` with it (that marks it to be written)."""

    def __init__(
        self,
        kv: KeyValue,
        prefix: bytes,
        key: Callable[[K], bytes],
        encode: Callable[[V], bytes],
        decode: Callable[[bytes], V],
    ) -> None:
        self.kv = kv
        self.prefix = prefix
        self._key = key
        self._encode = encode
        self._decode = decode
        self._cache: dict[bytes, V | None] = {}
        self._dirty: set[bytes] = set()

    def get(self, key: K) -> V | None:
        raw_key = self.prefix + self._key(key)
        try:
            return self._cache[raw_key]
        except KeyError:
            raw = self.kv.get(raw_key)
            value = None if raw is None else self._decode(raw)
            self._cache[raw_key] = value
            return value

    def put(self, key: K, value: V) -> None:
        raw_key = self.prefix + self._key(key)
        self._cache[raw_key] = value
        self._dirty.add(raw_key)

    def delete(self, key: K) -> None:
        raw_key = self.prefix + self._key(key)
        self._cache[raw_key] = None
        self._dirty.add(raw_key)

    def flush(self, *, keep: bool = False) -> None:
        """Write the entries changed since the last flush; ``keep`` the decoded ones
        (mid-batch, before a scan of the state)."""
        kv = self.kv
        for raw_key in self._dirty:
            value = self._cache[raw_key]
            if value is None:
                kv.delete(raw_key)
            else:
                kv.put(raw_key, self._encode(value))
        self._dirty.clear()
        if not keep:
            self._cache.clear()

    def held(self) -> int:
        """Entries decoded and held now (bounded by the batch; tests count them)."""
        return len(self._cache)


def _encode_ids(ids: set[int]) -> bytes:
    return orjson.dumps(list(ids))


def _decode_ids(raw: bytes) -> set[int]:
    return set(orjson.loads(raw))


class IdSets(BatchCache[bytes, set[int]]):
    """Sets of row ids per group (a group's key as bytes), one entry per group: for
    groups bounded by one order (its lines, the lines with one line_no)."""

    def __init__(self, kv: KeyValue, prefix: bytes) -> None:
        super().__init__(kv, prefix, bytes, _encode_ids, _decode_ids)

    def ids(self, group: bytes) -> set[int]:
        """The group's ids (the cached set: do not modify it); empty when none."""
        ids = self.get(group)
        return set() if ids is None else ids

    def add(self, group: bytes, row_id: int) -> None:
        ids = self.get(group)
        if ids is None:
            ids = set()
        ids.add(row_id)
        self.put(group, ids)

    def discard(self, group: bytes, row_id: int) -> None:
        ids = self.get(group)
        if ids is None or row_id not in ids:
            return
        ids.discard(row_id)
        if ids:
            self.put(group, ids)
        else:
            self.delete(group)


class MemberIndex:
    """Row ids per group, one empty entry each (``prefix + group + id``), written at
    once; read by a prefix scan. For groups that grow with the history."""

    def __init__(self, kv: KeyValue, prefix: bytes) -> None:
        self.kv = kv
        self.prefix = prefix

    def add(self, group: bytes, row_id: int) -> None:
        self.kv.put(self.prefix + group + _id(row_id), b"")

    def discard(self, group: bytes, row_id: int) -> None:
        self.kv.delete(self.prefix + group + _id(row_id))

    def ids(self, group: bytes) -> set[int]:
        return {decode_id(key[-8:]) for key, _ in self.kv.scan(self.prefix + group)}

    def groups(self) -> Iterator[bytes]:
        """Every group with members (a full scan)."""
        last = None
        for key, _ in self.kv.scan(self.prefix):
            group = key[len(self.prefix) : -8]
            if group != last:
                last = group
                yield group


__all__ = ["BatchCache", "IdSets", "MemberIndex", "decode_id", "id_bytes"]

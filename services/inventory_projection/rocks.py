"""The local RocksDB behind :class:`~services.inventory_projection.state.StateStore` (I/O).

One RocksDB per worker under ``<service_state_dir>/state`` (rocksdict, raw bytes). A
batch's change set is applied with ONE ``WriteBatch`` (atomic: the projection's entries
and the source offsets they cover land together or not at all). RocksDB keeps the data
on disk with a bounded block cache, which is what keeps the worker's memory flat with a
million keys.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

from rocksdict import Options, Rdict, WriteBatch


class RocksState:
    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        self.path = path
        self.db = Rdict(str(path), options)

    def get(self, key: bytes) -> bytes | None:
        value = self.db.get(key)
        return None if value is None else bytes(value)

    def scan(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        iterator = self.db.iter()
        iterator.seek(max(prefix, start) if start is not None else prefix)
        while iterator.valid():
            key = iterator.key()
            if not key.startswith(prefix):
                break
            yield key, iterator.value()
            iterator.next()

    def write(self, changes: Mapping[bytes, bytes | None]) -> None:
        batch = WriteBatch(raw_mode=True)
        for key, value in changes.items():
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        self.db.write(batch)

    def write_raw(self, batch: WriteBatch) -> None:
        self.db.write(batch)

    def writer(self) -> RocksWriter:
        return RocksWriter(self.db)

    def is_empty(self) -> bool:
        iterator = self.db.iter()
        iterator.seek_to_first()
        return not iterator.valid()

    def close(self) -> None:
        self.db.close()


class RocksWriter:
    """A ``WriteBatch`` filled entry by entry (no intermediate dict: a restore copies
    millions of entries), applied by :meth:`commit` in one atomic write."""

    def __init__(self, db: Rdict) -> None:
        self.db = db
        self.batch = WriteBatch(raw_mode=True)
        self.count = 0

    def set(self, key: bytes, value: bytes | None) -> None:
        if value is None:
            self.batch.delete(key)
        else:
            self.batch.put(key, value)
        self.count += 1

    def commit(self) -> int:
        if self.count:
            self.db.write(self.batch)
        return self.count

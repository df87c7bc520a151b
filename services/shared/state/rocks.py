"""The local RocksDB behind :class:`~services.shared.state.store.StateStore` (I/O).

One RocksDB per state (today one per worker) under ``<service_state_dir>/state``
(rocksdict, raw bytes). A batch's change set is applied with ONE ``WriteBatch`` (atomic:
the service's entries and the source offsets they cover land together or not at all).
RocksDB keeps the data on disk with a bounded block cache, which is what keeps the
worker's memory flat with a million keys: the cache also holds the table files' index
and filter blocks (otherwise they sit outside any cap and grow with the data), so the
store's memory is at most the cache plus the memtables (:meth:`RocksState.memory`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

from rocksdict import (
    BlockBasedIndexType,
    BlockBasedOptions,
    Cache,
    Options,
    Rdict,
    ReadOptions,
    WriteBatch,
    WriteOptions,
)

from services.shared.state.store import prefix_end

#: RocksDB's own default block cache size
DEFAULT_CACHE_BYTES = 32 * 1024 * 1024

#: what :meth:`RocksState.memory` reports, by the metric's ``part`` label
_MEMORY_PROPERTIES = {
    # active and unflushed immutable memtables (and those pinned by iterators)
    "memtables": "rocksdb.size-all-mem-tables",
    "block_cache": "rocksdb.block-cache-usage",
    # index and filter blocks held outside the cache (none once they are cached)
    "table_readers": "rocksdb.estimate-table-readers-mem",
}


def state_options(cache_bytes: int = DEFAULT_CACHE_BYTES) -> Options:
    """The options every state is opened with (a function so tests read its counters)."""
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    # Every change reads its row's key and its aggregate's key, and for a new row
    # or key (a receipt in a new place, a replay) the key is absent: a Bloom filter
    # (10 bits a key, ~1% false positives) answers those reads without searching
    # the table files (~3 -> ~2 us a read measured with 2M keys). Files written
    # before it had none; compactions add it.
    # Memtables of 16 MiB (RocksDB's default is 64 MiB, two of them while one
    # flushes): the worker's memory budget is 512 MB with a million keys, and the
    # default memtables alone took ~100 MB of it in a replay; flushing more often
    # costs background I/O, not the event loop.
    options.set_write_buffer_size(16 * 1024 * 1024)
    table = BlockBasedOptions()
    table.set_bloom_filter(10, False)
    # Index and filter blocks in the (capped) cache, as Kafka Streams' bounded-memory
    # RocksDB config does: outside it they grow with every table file. Level 0's stay
    # pinned there, being read by every lookup.
    table.set_block_cache(Cache(cache_bytes))
    table.set_cache_index_and_filter_blocks(True)
    table.set_pin_l0_filter_and_index_blocks_in_cache(True)
    # ... cut in 4 KiB partitions under a small pinned top level (RocksDB's advice for a
    # capped cache): whole, a compacted file's index and filter are ~1 MB each per
    # million keys, larger than a shard of the cache (512 KiB), so never kept: every read
    # loaded and parsed them again: a read cost ~100 us instead of ~6 (issue 11:
    # receivables' replay slowed to a quarter once its first files were compacted).
    table.set_index_type(BlockBasedIndexType.two_level_index_search())
    table.set_partition_filters(True)
    table.set_metadata_block_size(4096)
    table.set_pin_top_level_index_and_filter(True)
    options.set_block_based_table_factory(table)
    return options


class RocksState:
    def __init__(self, path: Path, cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        path.mkdir(parents=True, exist_ok=True)
        options = state_options(cache_bytes)
        self.path = path
        self.options = options
        self.db = Rdict(str(path), options)

    def memory(self) -> dict[str, int]:
        """Bytes the store holds in memory, by part (read at each metrics scrape)."""
        return {
            part: int(self.db.property_int_value(name) or 0)
            for part, name in _MEMORY_PROPERTIES.items()
        }

    def get(self, key: bytes) -> bytes | None:
        value = self.db.get(key)
        return None if value is None else bytes(value)

    def scan(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        # Bounded at the prefix's end: a seek skips deleted keys (tombstones, until a
        # compaction drops them) up to the next live key, which without the bound is
        # searched past the prefix, through every later deleted key (issue 11: 1.4 ms a
        # seek in a replay whose paid installments deleted their index entries).
        options = ReadOptions()
        end = prefix_end(prefix)
        if end is not None:
            options.set_iterate_upper_bound(end)
        iterator = self.db.iter(options)
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

    def writer(self, *, bulk: bool = False) -> RocksWriter:
        return RocksWriter(self.db, _NO_WAL if bulk else None)

    def sync(self) -> None:
        """Flush the memtables to table files: writes made without the WAL are only in
        memory until then, and the WAL alone would not bring them back after a crash."""
        self.db.flush(wait=True)
        self.db.flush_wal(sync=True)

    def clear(self) -> None:
        """Destroy the database and open an empty one in its place."""
        self.db.close()
        Rdict.destroy(str(self.path), self.options)
        self.db = Rdict(str(self.path), self.options)

    def is_empty(self) -> bool:
        iterator = self.db.iter()
        iterator.seek_to_first()
        return not iterator.valid()

    def close(self) -> None:
        self.db.close()


def _without_wal() -> WriteOptions:
    options = WriteOptions()
    # a property at run time; rocksdict's stub declares it a method
    setattr(options, "disable_wal", True)  # noqa: B010
    return options


#: bulk writes (a restore) skip the WAL: every entry is written twice otherwise
_NO_WAL = _without_wal()


class RocksWriter:
    """A ``WriteBatch`` filled entry by entry (no intermediate dict: a restore copies
    millions of entries), applied by :meth:`commit` in one atomic write."""

    def __init__(self, db: Rdict, options: WriteOptions | None = None) -> None:
        self.db = db
        self.options = options
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
            self.db.write(self.batch, self.options)
        return self.count

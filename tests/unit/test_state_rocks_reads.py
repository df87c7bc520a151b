"""A state read costs the blocks it needs, however much state there is.

Invariant: once the state is compacted into large table files and its data blocks
fill the capped block cache, one point read loads at most a few small blocks into the
cache (a data block and a partition of the index and of the Bloom filter), never a
whole file's index or filter (issue 11: with whole filter blocks, each read of
receivables' replay reloaded ~1.2 MB of filter once the first files were compacted,
and a read cost ~100 us instead of ~6: a whole filter block larger than a shard of the
cache is never kept in it). Counted with RocksDB's statistics, not timed.
"""

from __future__ import annotations

import random
from pathlib import Path

from rocksdict import Rdict, WriteBatch

from services.shared.state.rocks import state_options

KEYS = 300_000
READS = 500


def _counters(text: str) -> dict[str, int]:
    found = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[1] == "COUNT":
            found[parts[0]] = int(parts[3])
    return found


def test_a_read_loads_a_few_small_blocks_not_a_whole_index_or_filter(tmp_path: Path) -> None:
    options = state_options(cache_bytes=256 * 1024)
    options.enable_statistics()
    db = Rdict(str(tmp_path / "state"), options)
    rng = random.Random(11)
    keys = [b"R" + rng.randbytes(8) for _ in range(KEYS)]
    for start in range(0, KEYS, 50_000):
        batch = WriteBatch(raw_mode=True)
        for key in keys[start:start + 50_000]:
            batch.put(key, b"v" * 40)
        db.write(batch)
    db.flush()
    db.compact_range(None, None)
    for key in rng.sample(keys, READS):  # warm what a read keeps in the cache
        db.get(key)
    before = _counters(options.get_statistics())
    for key in rng.sample(keys, READS):
        assert db.get(key) is not None
    after = _counters(options.get_statistics())
    db.close()

    def per_read(name: str) -> float:
        return (after.get(name, 0) - before.get(name, 0)) / READS

    metadata = (per_read("rocksdb.block.cache.filter.bytes.insert")
                + per_read("rocksdb.block.cache.index.bytes.insert"))
    assert metadata <= 2 * 4096 + 1024, f"{metadata:.0f} bytes of index and filter a read"
    # the reads did reach the compacted file (the cache saw them)
    assert per_read("rocksdb.block.cache.data.miss") + per_read(
        "rocksdb.block.cache.data.hit") >= 1

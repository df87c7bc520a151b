"""A worker's memory is accounted for: the state store's part is capped by its cache
setting whatever the data's size (index and filter blocks included), and the metrics
split RSS into the C heap (in use, free), Python's blocks and the store's parts.
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry

from services.shared.memory import heap_usage
from services.shared.observability import ServiceMetrics
from services.shared.state.rocks import RocksState

CACHE = 1024 * 1024


def fill(state: RocksState, files: int, keys: int) -> None:
    for file in range(files):
        state.write({f"k{file:03d}-{n:06d}".encode(): b"v" * 200 for n in range(keys)})
        state.sync()  # one table file each


def test_the_state_store_stays_within_its_cache_and_memtables_however_large_the_data(
    tmp_path: Path,
) -> None:
    state = RocksState(tmp_path / "state", cache_bytes=CACHE)
    try:
        fill(state, files=8, keys=20_000)  # ~32 MB of data: 32x the cache
        for file in range(8):
            for n in range(0, 20_000, 7):
                assert state.get(f"k{file:03d}-{n:06d}".encode()) == b"v" * 200
        memory = state.memory()
        # index and filter blocks live in the capped cache, not beside it: what stays
        # outside is a table reader's fixed ~2 KB (outside, they took ~400 KB here)
        assert memory["table_readers"] <= 8 * 4096
        assert 0 < memory["block_cache"] <= CACHE * 1.1  # the cache's strict-enough cap
        assert set(memory) == {"memtables", "block_cache", "table_readers"}
    finally:
        state.close()


def test_the_metrics_split_memory_into_the_heap_python_and_the_state_store(
    tmp_path: Path,
) -> None:
    registry = CollectorRegistry()
    metrics = ServiceMetrics("svc", registry)
    state = RocksState(tmp_path / "state", cache_bytes=CACHE)
    try:
        fill(state, files=1, keys=1_000)
        assert state.get(b"k000-000001") is not None
        metrics.memory.watch_state(state.memory)
        sample = registry.get_sample_value
        assert sample("ambidex_state_store_memory_bytes", {"service": "svc", "part": "block_cache"})
        assert sample("ambidex_python_allocated_blocks", {"service": "svc"})
        heap = heap_usage()
        if heap is not None:  # glibc
            assert sample("ambidex_c_heap_bytes", {"service": "svc", "state": "in_use"})
        metrics.memory.watch_state(None)  # closed: the store's parts are no longer reported
        assert (
            sample("ambidex_state_store_memory_bytes", {"service": "svc", "part": "memtables"})
            is None
        )
    finally:
        state.close()


def test_a_store_closed_under_a_scrape_is_skipped_not_an_error(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    metrics = ServiceMetrics("svc", registry)

    def closed() -> dict[str, int]:
        raise RuntimeError("DB instance already closed")

    metrics.memory.watch_state(closed)
    assert (
        registry.get_sample_value(
            "ambidex_state_store_memory_bytes", {"service": "svc", "part": "memtables"}
        )
        is None
    )
    assert registry.get_sample_value("ambidex_python_allocated_blocks", {"service": "svc"})

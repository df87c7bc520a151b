"""Where a worker's memory is: metrics read at scrape time.

RSS alone cannot tell a leak from caches filling to their caps (issue 9's soak: every
stateful service's RSS rose 30-55 MB in its first hour). These gauges split it:

- ``ambidex_c_heap_bytes{state="in_use"|"free"}``: the C heap (glibc ``mallinfo2``):
  live allocations (RocksDB's memtables and cache, aiokafka's buffers, decoded rows)
  and the free memory the allocator keeps;
- ``ambidex_python_allocated_blocks``: objects and buffers Python's own allocator
  holds (a Python-level leak grows it);
- ``ambidex_state_store_memory_bytes{part=...}``: the local state store's memtables,
  block cache (data, index and filter blocks; capped by ``AMBIDEX_STATE_CACHE_MB``)
  and table readers (index and filter blocks outside the cache).

Read in the scrape's thread (``/metrics`` renders off the event loop): each read is a
few microseconds.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.shared.memory import heap_usage

log = logging.getLogger(__name__)

#: the parts of a state store's memory, in the words of the metric's label
StateMemory = Callable[[], Mapping[str, int]]


class MemoryCollector(Collector):
    def __init__(self, service: str) -> None:
        self.service = service
        self.state_memory: StateMemory | None = None

    def watch_state(self, parts: StateMemory | None) -> None:
        """Report the state store's memory (``None``: it is closed)."""
        self.state_memory = parts

    def collect(self) -> Iterator[Metric]:
        heap = heap_usage()
        if heap is not None:
            family = GaugeMetricFamily(
                "ambidex_c_heap_bytes",
                "The C heap: bytes in use by live allocations, and free bytes the "
                "allocator keeps (glibc mallinfo2).",
                labels=("service", "state"),
            )
            family.add_metric((self.service, "in_use"), heap.in_use)
            family.add_metric((self.service, "free"), heap.free)
            yield family
        yield self._python_blocks()
        parts = self._state_parts()
        if parts:
            family = GaugeMetricFamily(
                "ambidex_state_store_memory_bytes",
                "Memory of the local state store by part: memtables, block_cache "
                "(capped by AMBIDEX_STATE_CACHE_MB), table_readers.",
                labels=("service", "part"),
            )
            for part, amount in sorted(parts.items()):
                family.add_metric((self.service, part), amount)
            yield family

    def _python_blocks(self) -> Metric:
        family = GaugeMetricFamily(
            "ambidex_python_allocated_blocks",
            "Memory blocks Python's allocator holds (sys.getallocatedblocks).",
            labels=("service",),
        )
        family.add_metric((self.service,), sys.getallocatedblocks())
        return family

    def _state_parts(self) -> Mapping[str, int]:
        reader = self.state_memory
        if reader is None:
            return {}
        try:
            return reader()
        except Exception:  # closed or reopened (a restore) under the scrape: next time
            log.debug("state store memory unreadable", exc_info=True)
            return {}

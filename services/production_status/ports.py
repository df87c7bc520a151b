"""The state port production-status's pure core reads and writes (no I/O here).

The same shape as the inventory projection's ordered ``bytes -> bytes`` store
(a RocksDB with a changelog topic in production, a dict in unit tests), declared here
structurally so the core does not depend on where the kit keeps its implementation.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol


class KeyValue(Protocol):
    """Ordered raw key-value access, what the pure core needs."""

    def get(self, key: bytes) -> bytes | None: ...

    def put(self, key: bytes, value: bytes) -> None: ...

    def delete(self, key: bytes) -> None: ...

    def scan(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Entries whose key starts with ``prefix``, in key order, from ``start`` on."""
        ...

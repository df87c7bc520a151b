"""What order-sync wrote to the ERP recently, to recognise the echoes of its writes.

Every ERP row order-sync writes comes back on the ERP topics (its CDC echo). Which
changes are echoes is decided by the fingerprints recorded with each write
(``erp_integration.written_row``); asking the database for every change would cost a
round trip per batch for rows this very process just wrote. :class:`EchoMemory`
answers those from memory; anything it does not know is looked up.
"""

from __future__ import annotations

from collections.abc import Iterable

#: Fingerprints kept per ERP row (as ``erp_integration.written_row`` keeps them).
FINGERPRINT_HISTORY = 8
#: entries per generation, rows and orders each (see :class:`EchoMemory`)
CAPACITY = 10_000


class EchoMemory:
    """What this process wrote to the ERP recently, to recognise echoes without a query.

    Per ERP row the fingerprints order-sync recorded for it (newest first, as in
    ``erp_integration.written_row``), per ERP order the CRM order it belongs to. Filled
    only after the ERP transaction that wrote them committed, so it never knows more
    than the database; a row it does not know (older, or written by another worker) is
    looked up in the database. Bounded: two generations of ``capacity`` entries each,
    the older dropped whole when the newer fills (cheaper than an LRU per lookup).

    Sized for the echo window, not the history: an echo comes back a CDC round trip
    (seconds) after its write, and :data:`CAPACITY` rows are a minute or more of writes
    at the sample workload's 100 operations/s. What it forgot costs one batched query
    per batch (an old order's shipping or invoicing changes), never a wrong answer;
    at most ~10 MB however long the service runs (``bench/id_memories.py``).
    """

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self._rows: dict[tuple[str, int], list[str]] = {}
        self._old_rows: dict[tuple[str, int], list[str]] = {}
        self._orders: dict[int, tuple[int, str]] = {}
        self._old_orders: dict[int, tuple[int, str]] = {}

    def remember_writes(self, fingerprints: Iterable[tuple[str, int, str]]) -> None:
        for table, row_id, fingerprint in fingerprints:
            key = (table, row_id)
            history = self.history(table, row_id) or []
            self._rows[key] = [fingerprint, *history][:FINGERPRINT_HISTORY]
        if len(self._rows) > self.capacity:
            self._old_rows, self._rows = self._rows, {}

    def remember_order(self, erp_order_id: int, crm_order_id: int, erp_order_name: str) -> None:
        self._orders[erp_order_id] = (crm_order_id, erp_order_name)
        if len(self._orders) > self.capacity:
            self._old_orders, self._orders = self._orders, {}

    def __len__(self) -> int:
        """Rows and orders held (at most four times the capacity)."""
        return (
            len(self._rows) + len(self._old_rows) + len(self._orders) + len(self._old_orders)
        )

    def history(self, table: str, row_id: int) -> list[str] | None:
        key = (table, row_id)
        found = self._rows.get(key)
        return found if found is not None else self._old_rows.get(key)

    def order(self, erp_order_id: int) -> tuple[int, str] | None:
        found = self._orders.get(erp_order_id)
        return found if found is not None else self._old_orders.get(erp_order_id)

"""order-sync's CRM shell never stops and never loses a record when it must give up a
source transaction (invariant 4: bad input gets a clear error and nothing is lost).

When the held transactions reach their limits, the transaction holding the most records
is given up: every record of it — those held and those arriving later — goes to the
dead-letter topic with the reason, the records are released for commit, and the other
transactions keep being assembled (their records stay held, uncommitted, until
applied). Runs the real shell with a fake intake (the port) and no Kafka or database.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from services.order_sync.app import CRM_COLLECTIONS, CRM_TRANSACTION_TOPIC, OrderSync
from services.shared.batches import RecordBatch
from services.shared.changes import ChangeEvent
from services.shared.errors import BadInput
from services.shared.runtime import build_service
from services.shared.settings import load_settings
from services.shared.transactions import TransactionMarker
from services.shared.whole_transactions import HeldTransactions
from tests.unit.test_transactions import change, end

LINES = "cdc.crm.sales_order_line"
ORDERS = "cdc.crm.sales_order"


class FakeIntake:
    """The intake port: typed items by (topic, offset); rejections recorded."""

    def __init__(self, items: Mapping[tuple[str, int], ChangeEvent | TransactionMarker]) -> None:
        self.items = items
        self.rejected: list[tuple[str, int, str]] = []

    def decode(self, record: Any) -> Any:
        return self.items[(record.topic, record.offset)]

    async def marker(self, record: Any) -> Any:
        return self.items[(record.topic, record.offset)]

    async def reject(self, record: Any, error: BadInput) -> None:
        self.rejected.append((record.topic, record.offset, error.reason))


def _record(topic: str, offset: int) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(topic, 0, offset, 0, 0, b"k", b"v", None, 1, 1, ())


async def test_a_transaction_beyond_the_limits_goes_whole_to_the_dead_letters() -> None:
    sync = OrderSync(build_service(load_settings("order-sync", {})))
    sync.crm.held = HeldTransactions(
        CRM_COLLECTIONS, max_hold=timedelta(seconds=300), max_buffered_events=3
    )
    items: dict[tuple[str, int], ChangeEvent | TransactionMarker] = {
        (LINES, 0): change("20", 1, "sales_order_line", row_id=201),
        (LINES, 1): change("20", 2, "sales_order_line", row_id=202),
        (LINES, 2): change("20", 3, "sales_order_line", row_id=203),
        (ORDERS, 0): change("21", 1, "sales_order", row_id=21),
        (LINES, 3): change("20", 4, "sales_order_line", row_id=204),
        (CRM_TRANSACTION_TOPIC, 0): end("20", {"crm.sales_order_line": 4}),
    }
    intake = FakeIntake(items)
    sync.service.intake = intake  # type: ignore[assignment]
    ledger = sync.crm.source.ledger

    first = [_record(LINES, 0), _record(LINES, 1), _record(LINES, 2), _record(ORDERS, 0)]
    await sync.crm.on_batch(RecordBatch(first, ledger))
    ledger.fetched(TopicPartition(LINES, 0), 3)
    ledger.fetched(TopicPartition(ORDERS, 0), 1)
    second = [_record(LINES, 3), _record(CRM_TRANSACTION_TOPIC, 0)]
    await sync.crm.on_batch(RecordBatch(second, ledger))
    ledger.fetched(TopicPartition(LINES, 0), 4)
    ledger.fetched(TopicPartition(CRM_TRANSACTION_TOPIC, 0), 1)

    assert [(t, o) for t, o, _ in intake.rejected] == [
        (LINES, 0), (LINES, 1), (LINES, 2), (LINES, 3)
    ]
    assert all("source transaction 20 given up" in reason for _, _, reason in intake.rejected)
    safe = ledger.safe_offsets()
    # everything of transaction 20 may be committed (it is in the dead letters) ...
    assert safe[TopicPartition(LINES, 0)] == 4
    assert safe[TopicPartition(CRM_TRANSACTION_TOPIC, 0)] == 1
    # ... while transaction 21 is still being assembled: its header stays uncommitted
    assert safe[TopicPartition(ORDERS, 0)] == 0
    assert sync.crm.held.open_transactions == 1

"""TRUNCATE of a captured table never disappears without a trace (issue 9, case 8).

Invariants protected here:

* A truncate as Debezium sends it (op ``t``, no key, no row images, inside its source
  transaction) decodes into a :class:`ChangeEvent` with op TRUNCATE.
* Every captured table a service consumes has ONE declared answer (clear, or dead
  letter + alert: needs re-snapshot); a declaration missing a consumed table fails
  when the service is built.
* receivables, production-status and customer-value (the kit's whole-transaction
  fold, tests/unit/test_transaction_fold.py) answer every table needs_resnapshot.
* order-sync dead-letters a truncate (cause needs_resnapshot) and applies the rest of
  its source transaction; nothing stays held.
* inventory-projection clears a stock table: every row's contribution is gone at the
  truncate's position, newer rows stay, and a change from before the truncate arriving
  later (another partition, a redelivery, a replay, after a restart) cannot bring a row
  back; any other table's truncate is dead-lettered with cause needs_resnapshot. A
  clear reads only that table's rows and gives the event loop back as it goes (a table
  of millions of rows never holds it).
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest

from services.customer_value import app as customer_value_app
from services.customer_value import truncates as customer_value_truncates
from services.inventory_projection import app as inventory_app
from services.inventory_projection import truncates as inventory_truncates
from services.inventory_projection.available_to_promise import AvailabilityKey
from services.inventory_projection.projector import Projector
from services.inventory_projection.step import Step
from services.order_sync import app as order_sync_app
from services.order_sync import truncates as order_sync_truncates
from services.production_status import app as production_status_app
from services.production_status import truncates as production_status_truncates
from services.receivables import app as receivables_app
from services.receivables import truncates as receivables_truncates
from services.shared.cdc_schemas import load_envelope_schemas
from services.shared.changes import ChangeDecoder, ChangeEvent, ChangeOp, RecordOrigin
from services.shared.errors import Cause, NeedsResnapshot
from services.shared.position import SourcePosition
from services.shared.transactions import TransactionMarker, TransactionStatus
from services.shared.truncates import TruncateAnswer, TruncateAnswers, topic_collection
from tests.builders import change_event

T0 = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
ITEM, WAREHOUSE = 1, 7
KEY = AvailabilityKey(ITEM, WAREHOUSE)

# as the ERP connector wrote it (captured from the real stack): no key
TRUNCATE_ENVELOPE = (
    b'{"before":null,"after":null,"source":{"version":"3.6.1.Final","connector":"postgresql",'
    b'"name":"cdc.erp","ts_ms":1796236099233,"snapshot":"false","db":"erp",'
    b'"sequence":"[null,\\"27657560\\"]","ts_us":1796236099233165,'
    b'"ts_ns":1796236099233165000,"schema":"erp","table":"stock_reservation","txId":737,'
    b'"lsn":27657560,"xmin":null,"origin":null,"origin_lsn":null},'
    b'"transaction":{"id":"737:27657560","total_order":2,"data_collection_order":1},'
    b'"op":"t","ts_ms":1796236105496,"ts_us":1796236105496435,"ts_ns":1796236105496435851}'
)


def test_debezium_truncate_decodes_as_op_t() -> None:
    decoder = ChangeDecoder(load_envelope_schemas())
    event = decoder.decode("cdc.erp.stock_reservation", 2, 0, None, TRUNCATE_ENVELOPE)
    assert isinstance(event, ChangeEvent)
    assert event.op is ChangeOp.TRUNCATE
    assert event.key == {} and event.before is None and event.after is None
    assert event.data_collection == "erp.stock_reservation"
    assert event.transaction_id == "737" and event.total_order == 2
    assert event.position == SourcePosition(27657560, 27657560)


# ----------------------------------------------------------------------- declarations


def test_every_consumed_captured_table_has_a_declared_answer() -> None:
    consumed = {
        "order-sync": {
            topic_collection(t)
            for t in (*order_sync_app.CRM_TOPICS, *order_sync_app.ERP_TOPICS)
            if not t.endswith(".transaction")
        },
        "inventory-projection": {topic_collection(t) for t in inventory_app.CHANGE_TOPICS},
        "receivables": {topic_collection(t) for t in receivables_app.CHANGE_TOPICS},
        "production-status": {
            topic_collection(t) for t in production_status_app.CHANGE_TOPICS
        },
        "customer-value": {topic_collection(t) for t in customer_value_app.CHANGE_TOPICS},
    }
    declared = {
        "order-sync": order_sync_truncates.ANSWERS,
        "inventory-projection": inventory_truncates.ANSWERS,
        "receivables": receivables_truncates.ANSWERS,
        "production-status": production_status_truncates.ANSWERS,
        "customer-value": customer_value_truncates.ANSWERS,
    }
    for service, tables in consumed.items():
        assert tables, service
        assert tables <= set(declared[service]), (service, tables - set(declared[service]))
        assert set(declared[service]) <= tables, f"{service} declares tables it does not read"
    # the services build their checked declarations from the same topic lists
    assert order_sync_app.TRUNCATES.consumed == consumed["order-sync"]


def test_a_declaration_missing_a_consumed_table_fails() -> None:
    with pytest.raises(ValueError, match=r"erp\.item"):
        TruncateAnswers.for_topics(
            "x", {"erp.stock_quant": TruncateAnswer.CLEAR}, ["cdc.erp.stock_quant", "cdc.erp.item"]
        )


def test_only_stock_tables_are_cleared_by_inventory_projection() -> None:
    cleared = {t for t, a in inventory_truncates.ANSWERS.items() if a is TruncateAnswer.CLEAR}
    assert cleared == {"erp.stock_quant", "erp.stock_reservation", "erp.production_order"}
    for declared in (order_sync_truncates, receivables_truncates, production_status_truncates,
                     customer_value_truncates):
        assert set(declared.ANSWERS.values()) == {TruncateAnswer.NEEDS_RESNAPSHOT}


def test_needs_resnapshot_error_has_its_cause() -> None:
    answers = order_sync_app.TRUNCATES
    event = _truncate("crm", "sales_order_line", 500)
    assert answers.answer(event) is TruncateAnswer.NEEDS_RESNAPSHOT
    error = answers.error(event)
    assert isinstance(error, NeedsResnapshot) and error.cause is Cause.NEEDS_RESNAPSHOT
    assert "crm.sales_order_line" in error.reason and "snapshot" in error.reason


# ------------------------------------------------------------------ inventory projection

_xid = itertools.count(1)


def _event(db: str, table: str, op: ChangeOp, row: dict[str, Any] | None, lsn: int,
           order: int = 1, xid: str | None = None) -> ChangeEvent:
    return change_event(db, table, op=op, after=row, commit_lsn=lsn,
                        transaction_id=xid or str(next(_xid)), order=order, commit_time=T0)


def _truncate(db: str, table: str, lsn: int) -> ChangeEvent:
    return _event(db, table, ChangeOp.TRUNCATE, None, lsn)


def _send(p: Projector[str], *events: ChangeEvent) -> Step[str]:
    """Each event as its own whole transaction, END included; then one step."""
    for event in events:
        p.change(event, f"h{event.position.lsn}")
        marker = TransactionMarker(
            TransactionStatus.END, event.transaction_id or "", "x", 1,
            Counter([event.data_collection]), T0,
        )
        p.marker(event.database, marker, f"end{event.position.lsn}")
    return p.step()


def _end_of(p: Projector[str], event: ChangeEvent) -> None:
    """Only the END marker of ``event``'s transaction: read before the transactions
    that committed after it (one partition, commit order), its change comes later."""
    marker = TransactionMarker(
        TransactionStatus.END, event.transaction_id or "", "x", 1,
        Counter([event.data_collection]), T0,
    )
    p.marker(event.database, marker, f"end{event.position.lsn}")


def _late(p: Projector[str], event: ChangeEvent) -> Step[str]:
    """The change of a transaction whose END was read before (:func:`_end_of`), read
    late from another partition; then one step."""
    p.change(event, f"h{event.position.lsn}")
    return p.step()


def _reservation(rid: int, qty: str, lsn: int) -> ChangeEvent:
    row = {"id": rid, "item_id": ITEM, "warehouse_id": WAREHOUSE,
           "sales_order_line_id": 900 + rid, "quantity": Decimal(qty), "state": "active"}
    return _event("erp", "stock_reservation", ChangeOp.CREATE, row, lsn)


def _reserved(p: Projector[str]) -> Decimal:
    availability = p.store.availability(KEY)
    assert availability is not None
    return availability.reserved


@pytest.fixture
def projector() -> Projector[str]:
    p: Projector[str] = Projector()
    _send(
        p,
        _event("erp", "item", ChangeOp.CREATE, {"id": ITEM, "sku": "A"}, 10),
        _event("erp", "warehouse", ChangeOp.CREATE, {"id": WAREHOUSE, "code": "W"}, 20),
        _event("erp", "stock_quant", ChangeOp.CREATE,
               {"id": 1, "item_id": ITEM, "warehouse_id": WAREHOUSE, "quantity": Decimal(50)}, 30),
        _reservation(1, "5", 40),
        _reservation(2, "7", 50),
    )
    return p


def test_truncate_of_a_stock_table_clears_its_contributions(projector: Projector[str]) -> None:
    assert _reserved(projector) == Decimal("12.000")
    step = _send(projector, _truncate("erp", "stock_reservation", 100))
    assert _reserved(projector) == 0
    assert [a for _, a in step.truncates] == [TruncateAnswer.CLEAR]
    assert not step.dead_letters
    (figures,) = [a for a in step.availability if a.warehouse_id == WAREHOUSE]
    assert figures.reserved == 0 and figures.available_to_promise == Decimal("50.000")
    assert "h100" in step.release  # acknowledged once applied
    # on hand (another table) is untouched
    availability = projector.store.availability(KEY)
    assert availability is not None and availability.on_hand == Decimal("50.000")


def test_rows_from_before_the_truncate_cannot_come_back(projector: Projector[str]) -> None:
    # a row inserted before the truncate, read late from another partition
    late = _reservation(3, "4", 60)
    _end_of(projector, late)
    _send(projector, _truncate("erp", "stock_reservation", 100))
    step = _late(projector, late)
    assert _reserved(projector) == 0 and step.stale == 1
    # a row inserted after it counts
    _send(projector, _reservation(4, "2", 110))
    assert _reserved(projector) == Decimal("2.000")
    # and the rule survives a restart (the state keeps the truncate's position)
    projector.store.flush()
    restarted: Projector[str] = Projector.load(projector.store.kv)
    _send(restarted, _reservation(5, "9", 70))
    assert _reserved(restarted) == Decimal("2.000")


def test_a_redelivered_truncate_changes_nothing(projector: Projector[str]) -> None:
    truncate = _truncate("erp", "stock_reservation", 100)
    _send(projector, truncate)
    _send(projector, _reservation(4, "2", 110))
    # redelivered to the running service: acknowledged as a redelivery, not applied
    step = _send(projector, truncate)
    assert _reserved(projector) == Decimal("2.000")
    assert step.stale == 0 and not step.truncates
    assert sorted(step.release) == ["end100", "h100"]
    # after a restart (nothing remembered) the state's positions refuse it
    projector.store.flush()
    restarted: Projector[str] = Projector.load(projector.store.kv)
    step = _send(restarted, truncate)
    assert _reserved(restarted) == Decimal("2.000")
    assert step.stale == 1 and not step.truncates


def test_rows_newer_than_the_truncate_stay(projector: Projector[str]) -> None:
    truncate = _truncate("erp", "stock_reservation", 100)
    _end_of(projector, truncate)
    _send(projector, _reservation(9, "3", 200))  # seen first, from another partition
    _late(projector, truncate)
    assert _reserved(projector) == Decimal("3.000")


def test_truncate_in_one_transaction_with_inserts_after_it(projector: Projector[str]) -> None:
    xid = "tx-after"
    events = [
        _event("erp", "stock_reservation", ChangeOp.TRUNCATE, None, 300, order=1, xid=xid),
        _event("erp", "stock_reservation", ChangeOp.CREATE,
               {"id": 20, "item_id": ITEM, "warehouse_id": WAREHOUSE,
                "sales_order_line_id": 920, "quantity": Decimal(6), "state": "active"},
               310, order=2, xid=xid),
    ]
    for event in events:
        projector.change(event, f"h{event.position.lsn}")
    marker = TransactionMarker(
        TransactionStatus.END, xid, "x", 2, {"erp.stock_reservation": 2}, T0
    )
    projector.marker("erp", marker, "end")
    projector.step()
    assert _reserved(projector) == Decimal("6.000")


def test_truncate_of_another_table_is_dead_lettered(projector: Projector[str]) -> None:
    step = _send(projector, _truncate("erp", "item", 100))
    ((handle, error),) = step.dead_letters
    assert handle == "h100" and isinstance(error, NeedsResnapshot)
    assert error.cause is Cause.NEEDS_RESNAPSHOT and "erp.item" in error.reason
    assert [a for _, a in step.truncates] == [TruncateAnswer.NEEDS_RESNAPSHOT]
    assert _reserved(projector) == Decimal("12.000")  # nothing cleared


def test_truncated_positions_are_persisted(projector: Projector[str]) -> None:
    _send(projector, _truncate("erp", "stock_quant", 100))
    raw = projector.store.kv.get(inventory_truncates.truncated_key("erp.stock_quant"))
    assert raw is not None and orjson.loads(raw) == [100, 100]


# ----------------------------------------------------------------------------- order-sync


async def test_order_sync_dead_letters_a_truncate_and_applies_the_rest_of_it() -> None:
    from aiokafka import TopicPartition
    from aiokafka.structs import ConsumerRecord

    from services.order_sync.app import CRM_TRANSACTION_TOPIC, OrderSync
    from services.order_sync.domain.outcomes import BatchResult
    from services.shared.batches import RecordBatch
    from services.shared.errors import BadInput
    from services.shared.runtime import build_service
    from services.shared.settings import load_settings
    from tests.unit.test_transactions import change, end

    lines = "cdc.crm.sales_order_line"
    line = change("30", 1, "sales_order_line", row_id=301)
    truncate = replace(
        _event("crm", "sales_order_line", ChangeOp.TRUNCATE, None, 1_002, order=2, xid="30"),
        origin=RecordOrigin(lines, 0, 1),
    )
    items: dict[tuple[str, int], Any] = {
        (lines, 0): line,
        (lines, 1): truncate,
        (CRM_TRANSACTION_TOPIC, 0): end("30", {"crm.sales_order_line": 2}),
    }
    rejected: list[tuple[int, BadInput]] = []
    applied: list[list[ChangeEvent]] = []

    class Intake:
        def decode(self, record: Any) -> Any:
            return items[(record.topic, record.offset)]

        async def marker(self, record: Any) -> Any:
            return items[(record.topic, record.offset)]

        async def reject(self, record: Any, error: BadInput) -> None:
            rejected.append((record.offset, error))

    async def apply_events(events: Any, **_: Any) -> BatchResult:
        applied.append(list(events))
        return BatchResult()

    async def write_status(result: BatchResult) -> None:
        return None

    sync = OrderSync(build_service(load_settings("order-sync", {})))
    sync.service.intake = Intake()  # type: ignore[assignment]
    setattr(sync.syncing, "apply_events", apply_events)  # noqa: B010  (no ERP here)
    setattr(sync.syncing, "_write", write_status)  # noqa: B010  (nor a CRM)
    ledger = sync.crm.source.ledger
    records = [
        ConsumerRecord(t, 0, o, 0, 0, b"k", b"v", None, 1, 1, ())
        for t, o in ((lines, 0), (lines, 1), (CRM_TRANSACTION_TOPIC, 0))
    ]
    await sync.crm.on_batch(RecordBatch(records, ledger))
    await sync.syncing.settle()  # the CRM status is written behind
    ledger.fetched(TopicPartition(lines, 0), 2)
    ledger.fetched(TopicPartition(CRM_TRANSACTION_TOPIC, 0), 1)

    assert applied == [[line]]  # the rest of the transaction, without the truncate
    ((offset, error),) = rejected
    assert offset == 1 and error.cause is Cause.NEEDS_RESNAPSHOT
    assert "TRUNCATE of crm.sales_order_line" in error.reason
    # nothing stays held: every record of the transaction may be committed
    safe = ledger.safe_offsets()
    assert safe[TopicPartition(lines, 0)] == 2
    assert safe[TopicPartition(CRM_TRANSACTION_TOPIC, 0)] == 1
    assert sync.crm.held.open_transactions == 0


def test_clearing_a_large_table_gives_the_loop_back_and_reads_only_that_table(
    projector: Projector[str],
) -> None:
    for rid in range(3, 43):
        _send(projector, _reservation(rid, "1", 100 + rid))
    ledger = projector.store.ledger
    assert len(list(ledger.rows_of("stock_reservation"))) == 42
    assert [row_id for row_id, _, _ in ledger.rows_of("stock_quant")] == [1]
    clearing = inventory_truncates.clear_table(
        projector.store, ("erp", "stock_reservation"),
        _truncate("erp", "stock_reservation", 1_000).position, pause_every=4,
    )
    pauses = 0
    while True:
        try:
            next(clearing)
        except StopIteration as done:
            cleared, keys = done.value
            break
        pauses += 1
    # 42 rows read and 42 deleted, a pause every 4: the loop is given back throughout
    assert cleared == 42 and pauses == 42 // 4 * 2 and keys
    assert _reserved(projector) == 0
    availability = projector.store.availability(KEY)
    assert availability is not None and availability.on_hand == Decimal("50.000")

"""The shared transactional intake routes every record of a fetch, and loses none.

Invariants (DESIGN.md 3 and 4): a change is applied only inside its whole source
transaction, per database (the CRM's and the ERP's transaction ids collide); an
undecodable member gives its whole transaction up; a record that is bad input and says
not even its transaction is dead-lettered at once; every record handed in comes back
out exactly once — applied with its transaction, let go of, or dead — so none is held
forever or committed before its work. Pure: a fake intake port, no Kafka.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TypeAlias

from aiokafka.structs import ConsumerRecord

from services.shared.changes import ChangeEvent
from services.shared.cooperative import Slicer
from services.shared.errors import BadInput, MalformedEvent
from services.shared.holding import GiveUpCause
from services.shared.intake import ChangeIntake
from services.shared.transactions import TransactionMarker
from services.shared.whole_transactions import (
    HeldTransactions,
    SourceTopics,
    Taken,
    parse_heartbeat,
    read_records,
)
from tests.builders import change_event
from tests.unit.test_transactions import end

COLLECTIONS = ("crm.sales_order", "erp.stock_quant")
SOURCES = SourceTopics.of(("crm", "erp"), heartbeats=True)
Record: TypeAlias = "ConsumerRecord[bytes, bytes]"


class FakeIntake:
    """The intake port: typed items (or BadInput) by (topic, offset); rejections kept."""

    def __init__(self, items: Mapping[tuple[str, int], Any]) -> None:
        self.items = items
        self.rejected: list[tuple[str, int]] = []

    def decode(self, record: Record) -> Any:
        return self.items.get((record.topic, record.offset))

    async def marker(self, record: Record) -> TransactionMarker | None:
        item = self.items[(record.topic, record.offset)]
        if isinstance(item, BadInput):
            await self.reject(record, item)
            return None
        assert isinstance(item, TransactionMarker)
        return item

    async def reject(self, record: Record, error: BadInput) -> None:
        self.rejected.append((record.topic, record.offset))


def record(topic: str, offset: int, value: bytes | None = b"{}") -> Record:
    return ConsumerRecord(topic, 0, offset, 0, 0, b"k", value, None, 1, 1, ())


def event(database: str, table: str, xid: str, order: int) -> ChangeEvent:
    return change_event(database, table, after={"id": order}, commit_lsn=1_000,
                        lsn=1_000 + order, transaction_id=xid, order=order,
                        commit_time=datetime(2026, 3, 1, tzinfo=UTC))


def envelope(xid: str, order: int, table: str = "sales_order") -> bytes:
    """A change whose row the decoder refuses but which names its transaction."""
    return json.dumps({
        "op": "c", "after": {"id": order, "amount": "NaN"},
        "source": {"schema": "crm", "table": table, "ts_ms": 1, "lsn": 1_000 + order},
        "transaction": {"id": f"{xid}:1000", "total_order": order},
    }).encode()


async def run(records: list[Record], items: Mapping[tuple[str, int], Any]) -> tuple[
    Taken[tuple[str, int]], FakeIntake, HeldTransactions[tuple[str, int]]
]:
    intake = FakeIntake(items)
    held: HeldTransactions[tuple[str, int]] = HeldTransactions(COLLECTIONS)
    fake: ChangeIntake = intake  # type: ignore[assignment]
    await read_records(records, held, fake, SOURCES, lambda r: (r.topic, r.offset), Slicer())
    return held.drain(), intake, held


async def test_each_database_assembles_its_own_transactions() -> None:
    crm, erp = "cdc.crm.sales_order", "cdc.erp.stock_quant"
    records = [record(crm, 0), record(erp, 0), record("cdc.crm.transaction", 0)]
    items = {
        (crm, 0): event("crm", "sales_order", "7", 1),
        (erp, 0): event("erp", "stock_quant", "7", 1),  # the same xid in the other database
        ("cdc.crm.transaction", 0): end("7", {"crm.sales_order": 1}),
    }
    taken, intake, held = await run(records, items)
    crm_done = taken.released["crm"].complete
    assert [w.handles for w in crm_done] == [[(crm, 0), ("cdc.crm.transaction", 0)]]
    assert taken.released["erp"].complete == []
    assert held.holders["erp"].open_transactions == 1  # still waiting for its END
    assert intake.rejected == []


async def test_an_undecodable_member_gives_its_transaction_up_whole() -> None:
    crm = "cdc.crm.sales_order"
    records = [record(crm, 0), record(crm, 1, envelope("8", 2)), record("cdc.crm.transaction", 0)]
    items = {
        (crm, 0): event("crm", "sales_order", "8", 1),
        (crm, 1): MalformedEvent("unit_price is NaN"),
        ("cdc.crm.transaction", 0): end("8", {"crm.sales_order": 2}),
    }
    taken, intake, _ = await run(records, items)
    released = taken.released["crm"]
    assert released.complete == []
    assert [g.cause for g in released.given_up] == [GiveUpCause.UNDECODABLE]
    assert sorted(h for h, _ in released.dead) == [(crm, 0), (crm, 1)]
    assert intake.rejected == []  # dead letters are the service's to write, with the reason


async def test_bad_records_without_a_transaction_are_dead_lettered_at_once() -> None:
    crm = "cdc.crm.sales_order"
    records = [
        record(crm, 0, b"not json"),
        record("heartbeat.cdc.erp", 0, b"[]"),
        record("cdc.erp.transaction", 0),
    ]
    items = {
        (crm, 0): MalformedEvent("not JSON"),
        ("cdc.erp.transaction", 0): MalformedEvent("marker without a value"),
    }
    taken, intake, _ = await run(records, items)
    assert sorted(intake.rejected) == sorted(
        [(crm, 0), ("heartbeat.cdc.erp", 0), ("cdc.erp.transaction", 0)]
    )
    assert sorted(taken.let_go) == sorted(intake.rejected)  # committed: they are dead letters


async def test_tombstones_and_heartbeats_are_let_go_and_heartbeats_move_source_time() -> None:
    crm = "cdc.crm.sales_order"
    records = [record(crm, 0, None), record("heartbeat.cdc.crm", 0, b'{"ts_ms": 1740830400000}')]
    items = {(crm, 0): None}  # the decoder's Tombstone is not a ChangeEvent: let go
    taken, intake, held = await run(records, items)
    assert sorted(taken.let_go) == [(crm, 0), ("heartbeat.cdc.crm", 0)]
    assert intake.rejected == []
    assert parse_heartbeat(b'{"ts_ms": 1740830400000}') == datetime(2025, 3, 1, 12, tzinfo=UTC)
    assert held.drain().let_go == []  # drained once


async def test_every_record_comes_out_exactly_once() -> None:
    crm = "cdc.crm.sales_order"
    records = [record(crm, n) for n in range(3)] + [record("cdc.crm.transaction", 0)]
    items: dict[tuple[str, int], Any] = {
        (crm, n): event("crm", "sales_order", "9", n + 1) for n in range(3)
    }
    items[("cdc.crm.transaction", 0)] = end("9", {"crm.sales_order": 3})
    taken, _, _ = await run(records, items)
    out = taken.merged()
    handles = [h for w in out.complete for h in w.handles] + out.ack_now + [h for h, _ in out.dead]
    assert sorted(handles) == sorted((r.topic, r.offset) for r in records)


async def test_records_of_a_published_topic_go_to_their_handler_not_the_decoder() -> None:
    sources = SourceTopics.of(("crm",), published=("ambidex.order-identity",))
    assert "ambidex.order-identity" in sources.topics
    identity = record("ambidex.order-identity", 4, b"avro bytes")
    taken_by: list[tuple[str, int]] = []
    intake = FakeIntake({})
    held: HeldTransactions[tuple[str, int]] = HeldTransactions(COLLECTIONS)
    fake: ChangeIntake = intake  # type: ignore[assignment]
    await read_records([identity], held, fake, sources, lambda r: (r.topic, r.offset),
                       Slicer(), lambda _, handle: taken_by.append(handle))
    assert taken_by == [("ambidex.order-identity", 4)]
    assert intake.rejected == [] and held.drain().let_go == []

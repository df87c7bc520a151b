"""The router stage (services.shared.routing) and the worker's guard over its slices
(services.shared.slices), with fakes for the producers: no broker.

Invariants protected (issue 16, docs/adr/0003-scale-out.md): a source transaction is
routed only once it is whole, as one slice per business key it touches (that key's rows
in transaction order, the transaction's id and position, "n of m"), rows resolved
through a key map kept in the router's own state (a line finds its order's warehouse
whether the header came in the same transaction or an earlier one); a row the key map
cannot resolve rejects its transaction whole and leaves the key map as it was;
reference rows go to the reference topic, not into slices. The slices of a step are
produced and acknowledged before the key map and the source offsets are durable, so a
crash in between produces them again, and the worker drops every repeat (and any older
slice): stale never wins, per key and source database.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord
from prometheus_client import CollectorRegistry

from services.shared.batches import OffsetLedger, RecordBatch
from services.shared.changes import ChangeDecoder, ChangeEvent, ChangeOp
from services.shared.cooperative import run_to_end
from services.shared.errors import BadInput, Cause, MalformedEvent
from services.shared.position import SourcePosition
from services.shared.routing import (
    KEY_MAP_PREFIX,
    REFERENCE,
    Reference,
    Routed,
    RouterFold,
    Tick,
    build_router,
    produce_routed,
    reference_key,
    restamped,
)
from services.shared.slice_intake import SliceFold
from services.shared.slices import (
    TICK_KEY,
    Slice,
    SliceRow,
    decode_row,
    decode_slice,
    encode_row,
    encode_slice,
)
from services.shared.state.changelog import Changelog
from services.shared.state.checkpoint import Checkpoint
from services.shared.state.store import KeyValue, MemoryState
from services.shared.transaction_fold import Applied
from services.shared.truncates import TruncateAnswer, TruncateAnswers
from services.shared.whole_transactions import SourceTopics
from tests.builders import COMMIT_TIME, change_event
from tests.unit import test_changes
from tests.unit.test_state_checkpoint import Crash, FakeProducer, LoggedState
from tests.unit.test_transactions import end

TABLES = ("crm.sales_order", "crm.sales_order_line", "crm.warehouse")
TRUNCATES = TruncateAnswers("toy", dict.fromkeys(TABLES, TruncateAnswer.NEEDS_RESNAPSHOT))
ROUTE, REFERENCES = "route.toy", "route.toy.reference"


def route_key(event: ChangeEvent, key_map: KeyValue) -> Iterable[bytes] | Reference:
    """inventory-projection's shape: a line's key is product x warehouse, and its
    warehouse is on its order's header; warehouses are read by every key."""
    row = event.row or {}
    if event.table == "warehouse":
        return REFERENCE
    if event.table == "sales_order":
        key_map.put(b"order:%d" % row["id"], row["warehouse_code"].encode())
        return ()
    warehouse = key_map.get(b"order:%d" % row["order_id"])
    if warehouse is None:
        raise BadInput(f"sales_order_line {row['id']}: order {row['order_id']} never seen",
                       Cause.UNKNOWN_REFERENCE)
    return [b"%d@%s" % (row["product_id"], warehouse)]


class Router:
    """A router's fold over its state, fed records the way the intake would."""

    def __init__(self, state: MemoryState | None = None, log: list[str] | None = None) -> None:
        self.state = state if state is not None else MemoryState()
        self.checkpoint = Checkpoint(Changelog("state.toy.router"))
        self.checkpoint.use(self.state, FakeProducer([] if log is None else log))
        #: the END marker each marker record carries, by the record's identity
        self.ends: dict[int, Any] = {}
        self.fold = self.load()
        self.offset = {"cdc.crm.sales_order": 0, "cdc.crm.sales_order_line": 0,
                       "cdc.crm.warehouse": 0, "cdc.crm.transaction": 0}

    def load(self) -> RouterFold:
        fold = RouterFold.loader(TABLES, route_key, truncates=TRUNCATES)(self.checkpoint.overlay)
        fold.held.resume_progress(self.checkpoint.overlay)
        return fold

    def record(self, topic: str) -> ConsumerRecord[bytes, bytes]:
        offset = self.offset[topic]
        self.offset[topic] += 1
        return ConsumerRecord(topic, 0, offset, 0, 0, b"k%d" % offset, b"%s@%d" % (
            topic.encode(), offset), None, 2, 8, ())

    def transaction(self, xid: int, rows: Sequence[tuple[str, dict[str, Any]]]
                    ) -> list[tuple[ChangeEvent | None, ConsumerRecord[bytes, bytes]]]:
        """A source transaction's changes and its END, as (event, record)."""
        out: list[tuple[ChangeEvent | None, ConsumerRecord[bytes, bytes]]] = []
        counts: dict[str, int] = {}
        for order, (table, row) in enumerate(rows, 1):
            event = change_event("crm", table, after=row, commit_lsn=1_000 * xid,
                                 lsn=1_000 * xid + order, transaction_id=str(xid), order=order)
            out.append((event, self.record(f"cdc.crm.{table}")))
            counts[f"crm.{table}"] = counts.get(f"crm.{table}", 0) + 1
        out.append((None, self.record("cdc.crm.transaction")))
        self.ends[id(out[-1][1])] = end(str(xid), counts, lsn=1_000 * xid + 999)
        return out

    def feed(self, items: Iterable[tuple[ChangeEvent | None, ConsumerRecord[bytes, bytes]]]
             ) -> Applied[Routed]:
        for event, record in items:
            if event is None:
                self.fold.marker("crm", self.ends[id(record)], record)
            else:
                self.fold.change(event, record)
        return run_to_end(self.fold.steps(("crm",)))


def line(id_: int, order: int, product: int) -> tuple[str, dict[str, Any]]:
    return "sales_order_line", {"id": id_, "order_id": order, "product_id": product}


def header(id_: int, warehouse: str) -> tuple[str, dict[str, Any]]:
    return "sales_order", {"id": id_, "warehouse_code": warehouse}


def test_a_whole_transaction_gives_one_slice_per_key_in_transaction_order() -> None:
    router = Router()
    items = router.transaction(7, [
        header(1, "W1"), line(10, 1, 5), line(11, 1, 6), line(12, 1, 5),
        ("warehouse", {"id": 3, "code": "W1"}),
    ])
    assert router.feed(items[:-1]).outcome == Routed()  # no END yet: nothing routed
    step = router.feed(items[-1:])
    slices = step.outcome.slices
    assert [(s.key, s.number, s.slices) for s in slices] == [(b"5@W1", 1, 2), (b"6@W1", 2, 2)]
    assert {(s.transaction_id, s.position, s.database) for s in slices} == {
        ("7", SourcePosition(7_000, 7_005), "crm")}
    records = [r for _, r in items]
    assert [r.offset for r in slices[0].rows] == [0, 2]  # lines 10 and 12, in order
    assert slices[0].rows == (SliceRow.of(records[1]), SliceRow.of(records[3]))
    assert slices[1].rows == (SliceRow.of(records[2]),)
    # the warehouse to the reference topic, keyed by its table and primary key
    [ref] = step.outcome.references
    assert ref.rows == (SliceRow.of(records[4]),) and ref.key == b"cdc.crm.warehouse\x00k0"
    assert ref.key == reference_key(ref.rows[0])
    assert sorted(id(r) for r in step.release) == sorted(id(r) for r in records)


def test_a_line_finds_its_warehouse_through_the_key_map_of_an_earlier_transaction() -> None:
    router = Router()
    router.feed(router.transaction(1, [header(1, "W2")]))
    step = router.feed(router.transaction(2, [line(20, 1, 9)]))
    assert [(s.key, s.transaction_id) for s in step.outcome.slices] == [(b"9@W2", "2")]
    assert router.checkpoint.overlay.get(KEY_MAP_PREFIX + b"order:1") == b"W2"


def test_an_unresolvable_row_rejects_its_transaction_whole_and_keeps_no_key_map_change(
) -> None:
    router = Router()
    items = router.transaction(3, [header(9, "W1"), line(30, 9, 1), line(31, 77, 1)])
    step = router.feed(items)
    assert step.outcome == Routed()
    assert {(h.topic, h.offset) for h, _ in step.dead_letters} == {
        (r.topic, r.offset) for _, r in items}
    assert "order 77 never seen" in " ".join(e.reason for _, e in step.dead_letters)
    assert router.checkpoint.overlay.get(KEY_MAP_PREFIX + b"order:9") is None
    # the router goes on with the next transaction
    step = router.feed(router.transaction(4, [header(9, "W3"), line(32, 9, 1)]))
    assert [s.key for s in step.outcome.slices] == [b"1@W3"]


def test_the_wire_format_gives_the_slice_and_its_records_back() -> None:
    router = Router()
    step = router.feed(router.transaction(5, [header(1, "W1"), line(10, 1, 5)]))
    [piece] = step.outcome.slices
    again = decode_slice(piece.key, encode_slice(piece))
    assert again == piece
    [row] = again.rows
    record = row.record()
    assert (record.topic, record.partition, record.offset, record.key, record.value) == (
        "cdc.crm.sales_order_line", 0, 0, b"k0", b"cdc.crm.sales_order_line@0")
    snapshot = Slice(b"k", "erp", None, SourcePosition(0, 42), COMMIT_TIME, 1, 1,
                     (SliceRow("t", 3, 4, 5, None, None, (("h", None), ("g", b"1"))),))
    assert decode_slice(b"k", encode_slice(snapshot)) == snapshot
    value = encode_slice(piece)
    for bad in (value[:-1], value + b"x", b"\x03" + value[1:], b""):
        with pytest.raises(MalformedEvent):
            decode_slice(piece.key, bad)


class RouteTopic:
    """The route and reference topics: acknowledged (key, value) per topic, in order;
    acks come some turns of the loop later."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.pending: set[asyncio.Future[None]] = set()
        self.topics: dict[str, list[tuple[bytes, bytes]]] = {}

    async def send(self, topic: str, value: bytes | None = None, key: bytes | None = None,
                   partition: int | None = None, timestamp_ms: int | None = None,
                   headers: Any = None) -> asyncio.Future[Any]:
        assert key is not None and value is not None
        self.log.append(f"produce {key.decode()}")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def ack() -> None:
            self.topics.setdefault(topic, []).append((key, value))
            self.log.append(f"ack {key.decode()}")
            future.set_result(None)

        async def slow() -> None:  # slower than the changelog's acks
            for _ in range(10):
                await asyncio.sleep(0)
            ack()

        self.pending.add(asyncio.ensure_future(slow()))
        return future


async def route_batch(router: Router, route: RouteTopic, items: Sequence[Any]) -> None:
    """One batch of the router: fold, then the checkpoint's commit with the produce as
    its effects (what StatefulRunner.on_batch does)."""
    step = router.feed(items)
    router.fold.held.record_progress(router.checkpoint.overlay)
    batch = RecordBatch([r for _, r in items], OffsetLedger())
    await router.checkpoint.commit(batch, step.release, lambda: produce_routed(
        route, step.outcome, route_topic=ROUTE, reference_topic=REFERENCES))


async def test_slices_are_acknowledged_before_the_key_map_and_offsets_are_durable() -> None:
    log: list[str] = []
    router = Router(LoggedState(log), log)
    await route_batch(router, RouteTopic(log), router.transaction(
        1, [header(1, "W1"), line(10, 1, 5), line(11, 1, 6)]))
    acks = [i for i, e in enumerate(log) if e in ("ack 5@W1", "ack 6@W1")]
    assert len(acks) == 2 and max(acks) < log.index("send o") < log.index(
        next(e for e in log if e.startswith("write")))
    # the key map, the holders' progress and the offsets in that one local write
    assert log[log.index("send o") + 1] == "write \x01held,morder:1,o"


async def test_a_crash_between_produce_and_commit_reproduces_and_the_worker_drops_repeats(
) -> None:
    log: list[str] = []
    router = Router(LoggedState([]))
    route = RouteTopic(log)
    first = router.transaction(1, [header(1, "W1"), line(10, 1, 5), line(11, 1, 6)])
    await route_batch(router, route, first)
    second = router.transaction(2, [line(12, 1, 5), line(13, 1, 6), line(14, 1, 5)])
    assert isinstance(router.state, LoggedState)
    router.state.crash_on_write = True
    with pytest.raises(Crash):
        await route_batch(router, route, second)
    # the slices were acknowledged; the key map and offsets were not written
    assert len(route.topics[ROUTE]) == 4
    # the restart: from the durable state, the batch read again and produced again
    router.checkpoint.reset()
    router.fold = router.load()
    await route_batch(router, route, second)
    third = router.transaction(3, [line(15, 1, 6)])
    await route_batch(router, route, third)
    topic = route.topics[ROUTE]
    assert topic[2:4] == topic[4:6]  # the same bytes again
    # the worker: the repeats dropped, each key's slices applied once, in commit order
    guard = SliceFold(MemoryState())
    records = [ConsumerRecord(ROUTE, 0, o, 0, 0, k, v, None, 0, 0, ())
               for o, (k, v) in enumerate(topic)]
    taken = guard.take(records)
    assert taken.repeats == 2 and taken.bad == []
    applied = [(s.key, s.transaction_id, [r.offset for r in s.rows]) for _, s in taken.slices]
    assert applied == [
        (b"5@W1", "1", [0]), (b"6@W1", "1", [1]),
        (b"5@W1", "2", [2, 4]), (b"6@W1", "2", [3]),
        (b"6@W1", "3", [5]),
    ]


def piece(key: bytes, commit_lsn: int, database: str = "crm") -> Slice:
    return Slice(key, database, str(commit_lsn), SourcePosition(commit_lsn, commit_lsn),
                 COMMIT_TIME, 1, 1)


def test_stale_never_wins_per_key_and_source_database() -> None:
    state = MemoryState()
    guard = SliceFold(state)
    assert guard.admit(piece(b"a", 200))
    assert not guard.admit(piece(b"a", 200))  # a repeat
    assert not guard.admit(piece(b"a", 100))  # older
    assert guard.admit(piece(b"b", 100))  # another key has its own
    assert guard.admit(piece(b"a", 100, "erp"))  # another database's LSNs do not compare
    assert guard.admit(piece(b"a", 300))
    assert guard.applied("crm", b"a") == 300 and guard.applied("erp", b"a") == 100
    # snapshot reads (commit LSN 0) are admitted, never recorded: per-row guards decide
    assert guard.admit(piece(b"a", 0)) and guard.admit(piece(b"a", 0))
    assert guard.applied("crm", b"a") == 300
    bad = ConsumerRecord(ROUTE, 0, 9, 0, 0, b"a", b"\x01", None, 1, 1, ())
    assert [r.offset for r, _ in SliceFold(state).take([bad]).bad] == [9]


def test_the_router_is_a_stateful_service_of_the_kit_on_its_own_topics() -> None:
    service = SimpleNamespace(name="toy", registry=CollectorRegistry(),
                              settings=SimpleNamespace(max_hold_seconds=60))
    router = build_router(service, route_key=route_key, collections=TABLES,  # type: ignore[arg-type]
                          sources=SourceTopics.of(("crm",)), truncates=TRUNCATES)
    assert router.source.group_id == "ambidex-toy.router"
    assert set(router.source.topics) == {
        "cdc.crm.sales_order", "cdc.crm.sales_order_line", "cdc.crm.warehouse",
        "cdc.crm.transaction"}
    assert router.checkpoint.changelog.topic == "state.toy.router"
    fold = router._load(MemoryState())
    assert isinstance(fold, RouterFold) and fold.held.holders["crm"].max_hold.seconds == 60


def test_a_row_carried_to_another_key_decodes_as_the_intake_reads_a_change() -> None:
    """A moved row's leave (a delete just before the move) and a brought row (a snapshot
    read, at the move's position) are Debezium envelopes the real decoder reads."""
    decoder = ChangeDecoder(test_changes.schemas())
    moved = test_changes.envelope("u", after=test_changes.order_row(), lsn=24_023_200,
                                  last_commit_lsn=24_023_128)
    row = SliceRow(test_changes.TOPIC, 0, 5, 0, test_changes.KEY,
                   test_changes.encode(moved))
    left = restamped(row, SourcePosition(24_023_128, 24_023_199), delete=True)
    event = decoder.decode(left.topic, 0, left.offset, left.key, left.value)
    assert isinstance(event, ChangeEvent)
    assert event.op is ChangeOp.DELETE and event.after is None
    assert event.position == SourcePosition(24_023_128, 24_023_199)
    assert event.key == {"id": 42} and event.before is not None
    read = test_changes.envelope("r", after=test_changes.order_row(), snapshot="true",
                                 lsn=900, last_commit_lsn=None)
    brought = restamped(SliceRow(test_changes.TOPIC, 0, 6, 0, test_changes.KEY,
                                 test_changes.encode(read)), SourcePosition(24_023_128,
                                                                            24_023_200))
    event = decoder.decode(brought.topic, 0, brought.offset, brought.key, brought.value)
    assert isinstance(event, ChangeEvent) and event.op is ChangeOp.CREATE
    assert event.position == SourcePosition(24_023_128, 24_023_200)
    assert event.after is not None and event.after["id"] == 42


class PartitionedRouteTopic(RouteTopic):
    """A route topic of three partitions: what went to which, in order."""

    def __init__(self) -> None:
        super().__init__([])
        self.sent: list[tuple[int | None, bytes]] = []

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2}

    async def send(self, topic: str, value: bytes | None = None, key: bytes | None = None,
                   partition: int | None = None, timestamp_ms: int | None = None,
                   headers: Any = None) -> asyncio.Future[Any]:
        assert value is not None
        self.sent.append((partition, value))
        return await super().send(topic, value, key or b"-", partition, timestamp_ms, headers)


async def test_source_time_is_ticked_to_every_partition_after_the_slices() -> None:
    """Workers whose figures run on source time see it move while their keys are quiet:
    each database's time goes to every partition when it moved by a second or the
    database became caught up, after the step's slices; a router built without ticks
    sends none."""
    router = Router()
    router.fold.ticks = True
    later = COMMIT_TIME + timedelta(seconds=3)
    router.fold.heartbeat("crm", later, router.record("cdc.crm.transaction"))
    step = router.feed(router.transaction(1, [header(1, "W1"), line(10, 1, 5)]))
    assert step.outcome.ticks == [Tick("crm", later, True)]
    route = PartitionedRouteTopic()
    await produce_routed(route, step.outcome, route_topic=ROUTE, reference_topic=REFERENCES)
    ticks = [(p, decode_slice(TICK_KEY, v)) for p, v in route.sent if p is not None]
    assert [p for p, _ in ticks] == [0, 1, 2]
    assert all(t.tick and t.caught_up and t.commit_time == later and t.database == "crm"
               and not t.rows for _, t in ticks)
    assert route.sent[0][0] is None and not decode_slice(b"5@W1", route.sent[0][1]).tick
    # the same time again: no tick; half a second on: none; caught up no more: one
    assert run_to_end(router.fold.steps(("crm",))).outcome.ticks == []
    router.fold.heartbeat("crm", later + timedelta(milliseconds=500),
                          router.record("cdc.crm.transaction"))
    assert run_to_end(router.fold.steps(("crm",))).outcome.ticks == []
    assert run_to_end(router.fold.steps(())).outcome.ticks == [
        Tick("crm", later + timedelta(milliseconds=500), False)]
    silent = Router()
    silent.fold.heartbeat("crm", later, silent.record("cdc.crm.transaction"))
    assert silent.feed(silent.transaction(1, [header(1, "W1")])).outcome.ticks == []


def test_a_kept_row_reads_back_as_it_was_kept_and_garbage_is_malformed() -> None:
    row = SliceRow("cdc.erp.payment", 2, 41, 1_700, b'{"id":1}', b'{"op":"c"}', (("h", b"v"),))
    assert decode_row(encode_row(row)) == row
    with pytest.raises(MalformedEvent):
        decode_row(b"\x00\x05ab")
    with pytest.raises(MalformedEvent):
        decode_row(encode_row(row) + b"x")

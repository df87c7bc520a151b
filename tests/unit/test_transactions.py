"""Transaction assembly (services.shared.transactions).

Invariants protected here:

* A source transaction is applied whole (invariant 3): an order header and its lines
  are released together, only after END has arrived and every subscribed table has
  delivered the number of events END announced — whatever order the events, the END
  marker and other transactions' records arrive in.
* No duplication (invariants 1 and 6): redelivered events and markers, before or after
  their transaction completed, never produce a second copy of an event or transaction.
* No loss: transactions whose END counts other tables only still complete; snapshot
  reads (no transaction block) are released immediately, one by one.
* Bounded memory: the number of open transactions and buffered events is capped with a
  clear error; inconsistent counts are bad input, not a silent partial release.
* Transaction markers decode from Debezium 3.x JSON; bad markers raise BadInput.
* A member that cannot be decoded is still counted: its transaction completes (never
  waits for an END count it cannot reach) and carries the defect, to be rejected whole.
* Held time is source time: the age of the oldest open transaction and the ones over a
  bound follow the commit times seen (events, markers, heartbeats), not the wall clock.
"""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.shared.cdc_schemas import ColumnInfo, EnvelopeSchemas, build_envelope_schema
from services.shared.changes import (
    ChangeDecoder,
    ChangeEvent,
    ChangeOp,
    RecordOrigin,
    UndecodedChange,
)
from services.shared.errors import MalformedEvent, SchemaViolation
from services.shared.position import SourcePosition
from services.shared.transactions import (
    CompleteTransaction,
    InconsistentTransaction,
    TooManyOpenTransactions,
    TransactionAssembler,
    TransactionMarker,
    TransactionStatus,
    decode_marker,
)
from tests.builders import change_event

ORDERS = "crm.sales_order"
LINES = "crm.sales_order_line"
SUBSCRIBED = {ORDERS, LINES}
COMMIT = datetime(2024, 3, 1, 10, 5, 30, tzinfo=UTC)


def change(
    xid: str | None,
    total_order: int | None,
    table: str = "sales_order",
    *,
    row_id: int = 1,
    commit_lsn: int = 1_000,
) -> ChangeEvent:
    lsn = commit_lsn + (total_order or 0)
    return change_event("crm", table, after={"id": row_id}, commit_lsn=commit_lsn, lsn=lsn,
                        transaction_id=xid, order=total_order, commit_time=COMMIT,
                        snapshot=xid is None)


def end(
    xid: str, counts: dict[str, int], lsn: int = 9_999, ts: datetime | None = None
) -> TransactionMarker:
    return TransactionMarker(
        status=TransactionStatus.END,
        transaction_id=xid,
        raw_id=f"{xid}:{lsn}",
        event_count=sum(counts.values()),
        data_collections=counts,
        ts=ts,
    )


def undecodable(
    xid: str,
    total_order: int,
    table: str = "sales_order_line",
    *,
    row: dict[str, Any] | None = None,
    column: str | None = "unit_price",
    commit_lsn: int = 1_000,
    commit_time: datetime = COMMIT,
) -> UndecodedChange:
    lsn = commit_lsn + total_order
    return UndecodedChange(
        transaction_id=xid,
        total_order=total_order,
        schema="crm",
        table=table,
        op="c",
        row=row if row is not None else {"id": 90 + total_order, "order_id": int(xid),
                                          "line_no": total_order - 1},
        commit_time=commit_time,
        position=SourcePosition(commit_lsn, lsn),
        reason=f"after.{column}: 'NAN' is not a number (NaN)",
        column=column,
        problem="is not a number (NaN)" if column else None,
        origin=RecordOrigin(f"cdc.crm.{table}", 0, lsn),
    )


def begin(xid: str) -> TransactionMarker:
    return TransactionMarker(TransactionStatus.BEGIN, xid, f"{xid}:1", None, {})


def order_with_lines(xid: str, lines: int, commit_lsn: int = 1_000) -> list[ChangeEvent]:
    header = change(xid, 1, "sales_order", row_id=int(xid), commit_lsn=commit_lsn)
    return [header] + [
        change(xid, 2 + n, "sales_order_line", row_id=n, commit_lsn=commit_lsn)
        for n in range(lines)
    ]


def feed(assembler: TransactionAssembler, items: list[Any]) -> list[CompleteTransaction]:
    done: list[CompleteTransaction] = []
    for item in items:
        if isinstance(item, TransactionMarker):
            done.extend(assembler.add_marker(item))
        else:
            done.extend(assembler.add_change(item))
    return done


# --------------------------------------------------------------------------- assembly


def test_events_then_end() -> None:
    assembler = TransactionAssembler(SUBSCRIBED)
    events = order_with_lines("771", 2)
    assert feed(assembler, [begin("771"), *events]) == []
    assert assembler.open_transactions == 1
    (done,) = assembler.add_marker(end("771", {ORDERS: 1, LINES: 2}))
    assert done.id == "771"
    assert done.events == tuple(events)
    assert done.commit_time == COMMIT
    assert done.position == max(e.position for e in events)
    assert assembler.open_transactions == 0 and assembler.buffered_events == 0


def test_end_before_events_and_events_out_of_order() -> None:
    assembler = TransactionAssembler(SUBSCRIBED)
    events = order_with_lines("771", 3)
    assert assembler.add_marker(end("771", {ORDERS: 1, LINES: 3})) == []
    shuffled = [events[2], events[0], events[3]]
    assert feed(assembler, shuffled) == []
    (done,) = assembler.add_change(events[1])
    assert [e.total_order for e in done.events] == [1, 2, 3, 4]


def test_every_arrival_order_releases_exactly_one_whole_transaction() -> None:
    events = order_with_lines("771", 2)
    items: list[Any] = [begin("771"), *events, end("771", {ORDERS: 1, LINES: 2})]
    for permutation in itertools.permutations(items):
        assembler = TransactionAssembler(SUBSCRIBED)
        done = feed(assembler, list(permutation))
        assert len(done) == 1
        assert done[0].events == tuple(events)
        assert assembler.open_transactions == 0


def test_interleaved_transactions_with_duplicates() -> None:
    rng = random.Random(11)
    transactions = {
        str(xid): order_with_lines(str(xid), xid % 4, xid * 100) for xid in range(1, 40)
    }
    items: list[Any] = []
    for xid, events in transactions.items():
        counts = {ORDERS: 1, **({LINES: len(events) - 1} if len(events) > 1 else {})}
        items += [begin(xid), *events, end(xid, counts)]
    items += rng.sample(items, 60)  # redeliveries, anywhere
    rng.shuffle(items)
    # ...except that END markers share one partition: they keep commit order
    slots = [i for i, item in enumerate(items) if isinstance(item, TransactionMarker)]
    ordered = sorted((items[i] for i in slots), key=lambda m: int(m.transaction_id))
    for i, marker in zip(slots, ordered, strict=True):
        items[i] = marker
    assembler = TransactionAssembler(SUBSCRIBED)
    done = feed(assembler, items)
    assert sorted(t.id for t in done if t.id) == sorted(transactions)
    for transaction in done:
        assert transaction.id is not None
        assert transaction.events == tuple(transactions[transaction.id])
    assert assembler.open_transactions == 0 and assembler.buffered_events == 0


def test_duplicate_event_before_completion_is_ignored() -> None:
    assembler = TransactionAssembler(SUBSCRIBED)
    events = order_with_lines("5", 1)
    feed(assembler, [events[0], events[0], events[1]])
    assert assembler.buffered_events == 2
    (done,) = assembler.add_marker(end("5", {ORDERS: 1, LINES: 1}))
    assert len(done.events) == 2


def test_redelivery_after_completion_is_ignored() -> None:
    assembler = TransactionAssembler(SUBSCRIBED)
    events = order_with_lines("5", 1)
    marker = end("5", {ORDERS: 1, LINES: 1})
    assert len(feed(assembler, [*events, marker])) == 1
    assert feed(assembler, [*events, marker, begin("5")]) == []
    assert assembler.open_transactions == 0


def test_end_for_other_tables_only_completes_nothing_and_holds_nothing() -> None:
    assembler = TransactionAssembler(SUBSCRIBED)
    assert assembler.add_marker(begin("9")) == []
    assert assembler.add_marker(end("9", {"crm.customer": 4})) == []
    assert assembler.open_transactions == 0


def test_counts_of_unsubscribed_tables_are_not_awaited() -> None:
    assembler = TransactionAssembler({ORDERS})
    header = change("12", 2)
    (done,) = feed(assembler, [end("12", {"crm.customer": 1, ORDERS: 1}), header])
    assert done.events == (header,)


def test_snapshot_reads_are_single_event_transactions() -> None:
    assembler = TransactionAssembler(SUBSCRIBED)
    read = change(None, None)
    (done,) = assembler.add_change(read)
    assert done == CompleteTransaction(None, (read,), read.commit_time, read.position)
    assert assembler.open_transactions == 0


def test_snapshot_reads_are_released_even_with_a_transaction_block() -> None:
    assembler = TransactionAssembler(SUBSCRIBED)
    read = replace(change("77", 1), op=ChangeOp.READ, is_snapshot=True)
    (done,) = assembler.add_change(read)
    assert done.id is None and done.events == (read,)
    assert assembler.open_transactions == 0


def test_more_events_than_announced_is_inconsistent() -> None:
    assembler = TransactionAssembler(SUBSCRIBED)
    events = order_with_lines("8", 2)
    feed(assembler, events)
    with pytest.raises(InconsistentTransaction) as caught:
        assembler.add_marker(end("8", {ORDERS: 1, LINES: 1}))
    assert "crm.sales_order_line" in caught.value.reason
    assert caught.value.events == tuple(events)
    assert assembler.open_transactions == 0 and assembler.buffered_events == 0


def test_open_transaction_cap() -> None:
    assembler = TransactionAssembler(SUBSCRIBED, max_open_transactions=3)
    for xid in ("1", "2", "3"):
        assembler.add_change(change(xid, 1))
    with pytest.raises(TooManyOpenTransactions, match="limit 3"):
        assembler.add_change(change("4", 1))
    assert assembler.open_transactions == 3
    # Completing one frees a slot.
    assembler.add_marker(end("1", {ORDERS: 1}))
    assert assembler.add_change(change("4", 1)) == []


def test_buffered_event_cap() -> None:
    assembler = TransactionAssembler(SUBSCRIBED, max_buffered_events=2)
    assembler.add_change(change("1", 1))
    assembler.add_change(change("1", 2))
    with pytest.raises(TooManyOpenTransactions, match="buffered"):
        assembler.add_change(change("1", 3))


def test_unsubscribed_event_is_a_configuration_error() -> None:
    assembler = TransactionAssembler({ORDERS})
    with pytest.raises(ValueError, match=r"crm\.sales_order_line"):
        assembler.add_change(change("1", 1, "sales_order_line"))


def test_collections_must_be_qualified() -> None:
    with pytest.raises(ValueError, match=r"schema\.table"):
        TransactionAssembler({"sales_order"})


def test_discard_returns_buffered_events() -> None:
    assembler = TransactionAssembler(SUBSCRIBED)
    events = order_with_lines("3", 1)
    feed(assembler, events)
    assert assembler.open_transaction_ids() == ["3"]
    assert assembler.discard("3") == tuple(events)
    assert assembler.open_transactions == 0 and assembler.buffered_events == 0


# --------------------------------------------------------------------------- markers


def test_decode_debezium_markers() -> None:
    begin_marker = decode_marker(
        b'{"status":"BEGIN","id":"781:39950456","ts_ms":1709287530123,'
        b'"event_count":null,"data_collections":null}'
    )
    assert begin_marker.status is TransactionStatus.BEGIN
    assert begin_marker.transaction_id == "781" and begin_marker.raw_id == "781:39950456"
    assert begin_marker.data_collections == {}
    assert begin_marker.ts == datetime(2024, 3, 1, 10, 5, 30, 123000, tzinfo=UTC)

    end_marker = decode_marker(
        json.dumps(
            {
                "status": "END",
                "id": "781:39951784",  # a different LSN than BEGIN: same transaction
                "ts_ms": 1709287530123,
                "event_count": 3,
                "data_collections": [
                    {"data_collection": ORDERS, "event_count": 1},
                    {"data_collection": LINES, "event_count": 2},
                ],
            }
        ).encode()
    )
    assert end_marker.transaction_id == "781"
    assert end_marker.event_count == 3
    assert end_marker.data_collections == {ORDERS: 1, LINES: 2}


@pytest.mark.parametrize("value", [b"", b"{", b"\xff", b'{"status": "END", "id": "1:2"'])
def test_unreadable_marker_is_malformed(value: bytes) -> None:
    with pytest.raises(MalformedEvent):
        decode_marker(value)


@pytest.mark.parametrize(
    "document",
    [
        [],
        {"status": "COMMIT", "id": "1:2"},
        {"status": "BEGIN", "id": 5},
        {"status": "BEGIN", "id": "x:5"},
        {"status": "END", "id": "1:2", "event_count": None, "data_collections": []},
        {"status": "END", "id": "1:2", "event_count": 2, "data_collections": "crm.a"},
        {"status": "END", "id": "1:2", "event_count": 1, "data_collections": [{"x": 1}]},
        {
            "status": "END",
            "id": "1:2",
            "event_count": 3,
            "data_collections": [{"data_collection": ORDERS, "event_count": 1}],
        },
        {"status": "END", "id": "1:2", "event_count": -1, "data_collections": []},
        {"status": "BEGIN", "id": "1:2", "ts_ms": "yesterday"},
    ],
)
def test_bad_marker_is_a_schema_violation(document: Any) -> None:
    with pytest.raises(SchemaViolation):
        decode_marker(json.dumps(document).encode())


# --------------------------------------------------------------------------- end to end


def _decoder() -> ChangeDecoder:
    id_column = ColumnInfo("id", "bigint", "int8", nullable=False)
    raws = [
        build_envelope_schema("crm", "crm", "sales_order", [id_column], ["id"]),
        build_envelope_schema(
            "crm",
            "crm",
            "sales_order_line",
            [
                id_column,
                ColumnInfo("order_id", "bigint", "int8", nullable=False),
                ColumnInfo("quantity", "numeric", "numeric", False, 14, 3),
            ],
            ["id"],
        ),
    ]
    return ChangeDecoder(EnvelopeSchemas.from_raw(raws))


def _wire(table: str, row: dict[str, Any], xid: int, lsn: int, order: int, dc_order: int) -> bytes:
    return json.dumps(
        {
            "before": None,
            "after": row,
            "source": {
                "version": "3.6.0.Final",
                "connector": "postgresql",
                "name": "cdc.crm",
                "ts_ms": 1709287530123,
                "snapshot": "false",
                "db": "crm",
                "sequence": json.dumps(["5000", str(lsn)]),
                "ts_us": 1709287530123456,
                "ts_ns": 1709287530123456000,
                "schema": "crm",
                "table": table,
                "txId": xid,
                "lsn": lsn,
                "xmin": None,
            },
            "transaction": {
                "id": f"{xid}:{lsn}",
                "total_order": order,
                "data_collection_order": dc_order,
            },
            "op": "c",
            "ts_ms": 1709287530200,
        }
    ).encode()


def test_decoded_wire_events_assemble_with_debezium_ids() -> None:
    """The ``<xid>:<lsn>`` ids differ per record; assembly still matches them up."""
    decoder = _decoder()
    header = _wire("sales_order", {"id": 10}, 781, 6000, 1, 1)
    line_1 = _wire(
        "sales_order_line", {"id": 1, "order_id": 10, "quantity": "2.500"}, 781, 6100, 2, 1
    )
    line_2 = _wire(
        "sales_order_line", {"id": 2, "order_id": 10, "quantity": "1.000"}, 781, 6200, 3, 2
    )
    marker = (
        b'{"status":"END","id":"781:6300","event_count":3,"ts_ms":1709287530123,'
        b'"data_collections":[{"data_collection":"crm.sales_order","event_count":1},'
        b'{"data_collection":"crm.sales_order_line","event_count":2}]}'
    )
    assembler = TransactionAssembler(SUBSCRIBED)
    done: list[CompleteTransaction] = []
    for offset, (topic, value) in enumerate(
        [
            ("cdc.crm.sales_order_line", line_2),
            ("cdc.crm.sales_order", header),
            ("cdc.crm.sales_order_line", line_1),
        ]
    ):
        event = decoder.decode(topic, 0, offset, b'{"id": 1}', value)
        assert isinstance(event, ChangeEvent)
        done += assembler.add_change(event)
    assert done == []
    (transaction,) = assembler.add_marker(decode_marker(marker))
    assert transaction.id == "781"
    assert [e.table for e in transaction.events] == ["sales_order", *["sales_order_line"] * 2]
    assert transaction.position == SourcePosition(5000, 6200)
    line = transaction.events[1].after
    assert line is not None and str(line["quantity"]) == "2.500"


def test_replace_keeps_events_frozen() -> None:
    event = change("1", 1)
    with pytest.raises(AttributeError):
        event.table = "x"  # type: ignore[misc]
    assert replace(event, total_order=2).total_order == 2


# --------------------------------------------------------------------------- undecodable


def test_an_undecodable_member_completes_its_transaction_as_a_defect() -> None:
    assembler = TransactionAssembler(SUBSCRIBED)
    header = change("801", 1, "sales_order", row_id=801)
    good = change("801", 2, "sales_order_line", row_id=5)
    bad = undecodable("801", 3)
    assert feed(assembler, [header, good]) == []
    assert assembler.add_undecodable(bad) == []
    assert assembler.buffered_events == 3
    (done,) = assembler.add_marker(end("801", {ORDERS: 1, LINES: 2}))
    assert done.rejected and done.defects == (bad,)
    assert done.events == (header, good)
    assert done.position == max(header.position, good.position, bad.position)
    assert assembler.open_transactions == 0 and assembler.buffered_events == 0
    # redeliveries of any member after completion are recognised
    assert assembler.add_undecodable(bad) == [] and assembler.add_change(good) == []


def test_a_transaction_of_undecodable_members_only_completes_and_ignores_repeats() -> None:
    assembler = TransactionAssembler(SUBSCRIBED)
    assert assembler.add_marker(end("802", {LINES: 1})) == []
    bad = undecodable("802", 1)
    (done,) = assembler.add_undecodable(bad)
    assert done.events == () and done.defects == (bad,) and done.commit_time == COMMIT


def test_a_repeated_undecodable_member_is_counted_once() -> None:
    assembler = TransactionAssembler(SUBSCRIBED)
    bad = undecodable("803", 2)
    assembler.add_change(change("803", 1, "sales_order", row_id=803))
    assembler.add_undecodable(bad)
    assert assembler.add_undecodable(bad) == []
    assert assembler.add_marker(end("803", {ORDERS: 1, LINES: 2})) == []  # one line missing
    (done,) = assembler.add_undecodable(undecodable("803", 3))
    assert len(done.defects) == 2


def test_an_undecodable_change_of_another_table_is_not_counted() -> None:
    assembler = TransactionAssembler(SUBSCRIBED)
    assert assembler.add_undecodable(undecodable("804", 1, "quote")) == []
    assert assembler.open_transactions == 0


def test_held_time_is_source_time() -> None:
    assembler = TransactionAssembler(SUBSCRIBED)
    assert assembler.oldest_open_age() == 0.0 and assembler.overdue(timedelta(0)) == []
    assembler.add_change(change("805", 1, "sales_order", row_id=805))  # commit at COMMIT
    assembler.add_marker(end("805", {ORDERS: 1, LINES: 1}, ts=COMMIT))
    assert assembler.oldest_open_age() == 0.0
    # a later transaction (another table) and a heartbeat move source time on
    assembler.add_marker(end("806", {"crm.quote": 1}, ts=COMMIT + timedelta(seconds=40)))
    assert assembler.oldest_open_age() == 40.0
    assert assembler.overdue(timedelta(seconds=60)) == []
    assembler.observe(COMMIT + timedelta(seconds=61))
    assembler.observe(COMMIT)  # never backwards
    assert assembler.source_time == COMMIT + timedelta(seconds=61)
    assert assembler.overdue(timedelta(seconds=60)) == ["805"]
    assert assembler.missing_collections("805") == frozenset({LINES})
    events, defects, since = assembler.peek("805")
    assert len(events) == 1 and defects == () and since == COMMIT


def test_monitoring_reports_how_long_this_process_has_held_a_transaction() -> None:
    now = [100.0]
    assembler = TransactionAssembler(SUBSCRIBED, clock=lambda: now[0])
    assert assembler.oldest_open_held_for() == 0.0
    assembler.add_change(change("807", 1, "sales_order", row_id=807))
    now[0] = 112.5
    assembler.observe(COMMIT + timedelta(hours=3))  # a replay: source time races ahead
    assert assembler.oldest_open_held_for() == 12.5
    assembler.add_marker(end("807", {ORDERS: 1}))
    assert assembler.oldest_open_held_for() == 0.0

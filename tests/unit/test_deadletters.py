"""Dead letters (services/shared/deadletters.py).

Invariants protected here (DESIGN invariant 4: bad input is never silently dropped):

* A dead letter keeps the original key, value and headers byte for byte (including
  null key/value, non-UTF-8 bytes and null header values), the reason, the error type
  and the exact source position, through the Avro wire format and back.
* It goes to ``dlq.<service>``, keyed by ``<topic>:<partition>:<offset>`` so that a
  redelivered failure of the same record carries the same key.
* The Kafka publisher awaits the acknowledgment of each letter before returning.
* Rendering for operators is JSON-able and lossless (UTF-8 text, otherwise base64).
* A replay re-sends the original headers plus exactly one ``ambidex.replayed-from``.
* Every letter carries its cause class (bad input, unknown reference, ERP state, needs
  re-snapshot) through the wire format (a v1 letter reads as bad input); inspect shows it.
* Dead-lettering is idempotent per origin and cause: a publisher never writes a letter
  whose identity it knows (loaded from the topic at start, or published since).
* A replay sends each origin once and leaves letters whose cause can only fail again
  (ERP state, needs re-snapshot) unless forced.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any, cast

import click
import pytest

from ambidex.cli_operator import _dead_letter_run
from services.shared.avro import HEADER_SCHEMA, AvroCodec, SchemaCatalogue
from services.shared.deadletter_tools import render_dead_letter, replay_headers, replay_selection
from services.shared.deadletters import (
    DEAD_LETTER_SCHEMA,
    REPLAYED_FROM_HEADER,
    DeadLetter,
    DeadLetterPublisher,
    InMemoryDeadLetterPublisher,
    KafkaDeadLetterPublisher,
    dead_letter_from,
    dead_letter_topic,
    decode_dead_letter,
)
from services.shared.errors import (
    BadInput,
    Cause,
    MalformedEvent,
    NeedsResnapshot,
    SchemaViolation,
)

NOW = dt.datetime(2024, 6, 3, 9, 15, 42, 123456, tzinfo=dt.UTC)
AVRO_LIKE = b"\xc3\x01\xff\xfe\x00binary"


@pytest.fixture(scope="module")
def codec() -> AvroCodec:
    return AvroCodec(SchemaCatalogue.load())


def letter(**overrides: Any) -> DeadLetter:
    base: dict[str, Any] = {
        "topic": "cdc.crm.sales_order",
        "partition": 3,
        "offset": 1234567890123,
        "key": b'{"id": 42}',
        "value": b'{"after": {"id": 42, "amount": "oops"}}',
        "headers": [("traceparent", b"00-abc-01"), ("empty", None)],
        "timestamp_ms": 1717406142000,
        "failed_at": NOW,
    }
    base.update(overrides)
    error = base.pop("error", SchemaViolation("amount: 'oops' is not a decimal"))
    return dead_letter_from(error, "order-sync", **base)


def test_topic_name_per_service() -> None:
    assert dead_letter_topic("order-sync") == "dlq.order-sync"
    assert letter().topic == "dlq.order-sync"
    with pytest.raises(ValueError):
        dead_letter_topic("")


def test_dead_letter_from_keeps_reason_type_and_position() -> None:
    dl = letter()
    assert dl.service == "order-sync"
    assert dl.reason == "amount: 'oops' is not a decimal"
    assert dl.error_type == "SchemaViolation"
    assert (dl.source_topic, dl.source_partition, dl.source_offset) == (
        "cdc.crm.sales_order",
        3,
        1234567890123,
    )
    assert dl.dlq_key == b"cdc.crm.sales_order:3:1234567890123"
    assert dl.failed_at == NOW.replace(microsecond=123000)  # schema keeps milliseconds
    assert dl.attempts == 1


def test_dead_letter_from_normalises_inputs() -> None:
    dl = letter(
        error=MalformedEvent("not JSON"),
        headers={"a": b"1"},
        key=bytearray(b"k"),
        timestamp_ms=-1,
    )
    assert dl.error_type == "MalformedEvent"
    assert dl.headers == (("a", b"1"),)
    assert dl.key == b"k" and isinstance(dl.key, bytes)
    assert dl.timestamp_ms is None
    assert letter(headers=[(b"bin", b"v")]).headers == (("bin", b"v"),)
    assert letter(headers=None).headers == ()
    with pytest.raises(ValueError):
        letter(failed_at=dt.datetime(2024, 1, 1))


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"key": None, "value": None, "headers": [], "timestamp_ms": None},
        {"value": AVRO_LIKE, "headers": [("h", b"\x00\xff")]},
        {"error": BadInput("custom"), "attempts": 3},
    ],
)
def test_wire_round_trip_is_exact(codec: AvroCodec, overrides: dict[str, Any]) -> None:
    dl = letter(**overrides)
    data = codec.encode(DEAD_LETTER_SCHEMA, dl.to_record())
    assert data[:2] == b"\xc3\x01"
    assert decode_dead_letter(codec, data) == dl


def test_decoding_something_else_is_bad_input(codec: AvroCodec) -> None:
    with pytest.raises(MalformedEvent):
        decode_dead_letter(codec, b'{"not": "avro"}')


async def test_in_memory_publisher_records_what_kafka_would_get(codec: AvroCodec) -> None:
    publisher = InMemoryDeadLetterPublisher(codec)
    port: DeadLetterPublisher = publisher  # satisfies the port
    first, second = letter(), letter(offset=7, value=AVRO_LIKE)
    await port.publish(first)
    await port.publish(second)
    assert [r.topic for r in publisher.records] == ["dlq.order-sync"] * 2
    assert publisher.records[0].key == b"cdc.crm.sales_order:3:1234567890123"
    assert (HEADER_SCHEMA, DEAD_LETTER_SCHEMA.encode()) in publisher.records[0].headers
    assert publisher.letters == [first, second]
    assert publisher.topic_letters("order-sync") == [(0, first), (1, second)]
    assert publisher.topic_letters("receivables") == []


class _RecordingProducer:
    """Stands in for AIOKafkaProducer: records send_and_wait calls."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send_and_wait(self, topic: str, **kwargs: Any) -> object:
        self.sent.append({"topic": topic, **kwargs})
        return object()


async def test_kafka_publisher_sends_and_awaits_ack(codec: AvroCodec) -> None:
    producer = _RecordingProducer()
    publisher = KafkaDeadLetterPublisher(cast(Any, producer), codec)
    dl = letter()
    await publisher.publish(dl)
    (sent,) = producer.sent
    assert sent["topic"] == "dlq.order-sync"
    assert sent["key"] == dl.dlq_key
    assert dict(sent["headers"])[HEADER_SCHEMA] == DEAD_LETTER_SCHEMA.encode()
    assert decode_dead_letter(codec, sent["value"]) == dl


def test_render_is_json_and_lossless() -> None:
    dl = letter(value=AVRO_LIKE, headers=[("t", b"text"), ("b", b"\xff"), ("n", None)])
    view = render_dead_letter(dl)
    json.dumps(view)  # JSON-able
    assert view["key"] == {"utf8": '{"id": 42}'}
    assert base64.b64decode(view["value"]["base64"]) == AVRO_LIKE
    assert view["headers"] == [
        {"key": "t", "value": {"utf8": "text"}},
        {"key": "b", "value": {"base64": "/w=="}},
        {"key": "n", "value": None},
    ]
    assert view["source"] == {
        "topic": "cdc.crm.sales_order",
        "partition": 3,
        "offset": 1234567890123,
    }
    assert view["reason"] == dl.reason
    assert view["error_type"] == "SchemaViolation"
    assert view["failed_at"] == "2024-06-03T09:15:42.123000+00:00"
    assert view["original_timestamp"] == "2024-06-03T09:15:42+00:00"


def test_render_null_key_and_value() -> None:
    view = render_dead_letter(letter(key=None, value=None, timestamp_ms=None))
    assert view["key"] is None and view["value"] is None
    assert view["original_timestamp"] is None


def test_replay_headers_keep_originals_and_mark_origin_once() -> None:
    dl = letter(headers=[("a", b"1"), (REPLAYED_FROM_HEADER, b"dlq.order-sync:1"), ("b", None)])
    assert replay_headers(dl, "order-sync", 99) == [
        ("a", b"1"),
        ("b", None),
        (REPLAYED_FROM_HEADER, b"dlq.order-sync:99"),
    ]


# ----------------------------------------------------------------------------- causes


def test_cause_comes_from_the_error_and_survives_the_wire(codec: AvroCodec) -> None:
    plain = letter()
    refused = letter(error=BadInput("the ERP refused it", cause=Cause.ERP_STATE))
    truncated = letter(error=NeedsResnapshot("TRUNCATE of erp.item"))
    assert [plain.cause, refused.cause, truncated.cause] == [
        Cause.BAD_INPUT, Cause.ERP_STATE, Cause.NEEDS_RESNAPSHOT,
    ]
    for dl in (plain, refused, truncated):
        data = codec.encode(DEAD_LETTER_SCHEMA, dl.to_record())
        assert decode_dead_letter(codec, data) == dl


def test_a_letter_written_with_v1_reads_as_bad_input(codec: AvroCodec) -> None:
    record = letter(error=BadInput("x", cause=Cause.ERP_STATE)).to_record()
    del record["cause"]
    data = codec.encode(DEAD_LETTER_SCHEMA, record, version=1)
    assert decode_dead_letter(codec, data).cause is Cause.BAD_INPUT


def test_inspect_shows_the_cause_and_whether_it_is_replayable() -> None:
    shown = render_dead_letter(letter(error=BadInput("refused", cause=Cause.ERP_STATE)))
    assert shown["cause"] == "erp_state" and shown["replayable"] is False
    shown = render_dead_letter(letter())
    assert shown["cause"] == "bad_input" and shown["replayable"] is True


def test_only_erp_state_and_truncates_are_not_replayable() -> None:
    assert {c for c in Cause if not c.replayable} == {Cause.ERP_STATE, Cause.NEEDS_RESNAPSHOT}


# ----------------------------------------------------------------------- idempotence


async def test_publisher_writes_one_letter_per_origin_and_cause(codec: AvroCodec) -> None:
    publisher = InMemoryDeadLetterPublisher(codec)
    assert await publisher.publish(letter())
    # the same record rejected again (a replay of the source topic, a redelivery)
    assert not await publisher.publish(letter(failed_at=NOW + dt.timedelta(hours=1)))
    assert await publisher.publish(letter(offset=8))  # another record
    assert await publisher.publish(  # the same record for another class of reason
        letter(error=BadInput("refused", cause=Cause.ERP_STATE))
    )
    assert len(publisher.records) == 3


async def test_kafka_publisher_skips_letters_already_in_the_topic(codec: AvroCodec) -> None:
    producer = _RecordingProducer()
    publisher = KafkaDeadLetterPublisher(cast(Any, producer), codec)
    publisher.known.add(letter().identity)  # what load_index found in dlq.<service>
    assert not await publisher.publish(letter())
    assert await publisher.publish(letter(offset=9))
    assert not await publisher.publish(letter(offset=9))
    assert [decode_dead_letter(codec, s["value"]).source_offset for s in producer.sent] == [9]


# ----------------------------------------------------------------------------- replay


def test_replay_offers_each_origin_once_and_no_erp_state_unless_forced() -> None:
    bad = letter(offset=1)
    refused = letter(offset=2, error=BadInput("refused", cause=Cause.ERP_STATE))
    truncate = letter(offset=3, error=NeedsResnapshot("TRUNCATE of erp.item"))
    repeat = letter(offset=1, failed_at=NOW + dt.timedelta(days=1))  # an older repeat
    letters = [(0, bad), (1, refused), (2, truncate), (3, repeat)]

    chosen, not_replayable, repeats = replay_selection(letters, offsets=None, force=False)
    assert chosen == [(0, bad)] and not_replayable == 2 and repeats == 1

    chosen, not_replayable, repeats = replay_selection(letters, offsets=None, force=True)
    assert [o for o, _ in chosen] == [0, 1, 2] and not_replayable == 0 and repeats == 1

    chosen, _, _ = replay_selection(letters, offsets={1, 3}, force=False)
    assert [o for o, _ in chosen] == [3]


def test_a_letter_the_command_cannot_decode_is_one_line_not_a_traceback() -> None:
    """Registry-format letters read without AMBIDEX_SCHEMA_REGISTRY_URL: the operator
    gets the reason (which names the setting), not a traceback."""
    async def reading() -> None:
        raise SchemaViolation(
            "dlq.x offset 0: registry wire format (schema id 2) but no schema registry "
            "is configured (AMBIDEX_SCHEMA_REGISTRY_URL)"
        )

    with pytest.raises(click.ClickException, match="AMBIDEX_SCHEMA_REGISTRY_URL"):
        _dead_letter_run(None, reading())  # type: ignore[arg-type]

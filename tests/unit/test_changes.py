"""Change-event decoding (services.shared.changes).

Invariants protected here:

* Money is exact (invariant 5): a ``numeric`` arrives as a string and is decoded to a
  ``Decimal`` with every digit kept (``"123456789012.34"`` never passes through float).
* Row values are typed as the source declared them: ``date``, naive ``datetime`` for
  ``timestamp``, UTC-aware ``datetime`` for ``timestamptz``, ``int``, ``bool``, ``str``.
* Ordering (invariant 2): every change carries the source position from
  ``source.sequence``; snapshot reads sort before any streamed change.
* Bad input never escapes as anything but ``BadInput`` (invariant 4): unreadable bytes
  raise ``MalformedEvent``, envelopes that break the topic's Avro schema raise
  ``SchemaViolation`` with a reason that names the field.
* Deletes are followed by tombstones, which decode to an explicit ``Tombstone``.
* NaN and ±Infinity in a numeric column are bad values naming the column and the
  problem; a change refused that way still says which transaction and row it belongs
  to (:func:`undecoded_change`), so its transaction can be rejected whole; an update
  correcting such a value is read (its before-image leaves the value out).
"""

from __future__ import annotations

import contextlib
import copy
import json
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest

from services.shared.cdc_schemas import ColumnInfo, EnvelopeSchemas, build_envelope_schema
from services.shared.changes import (
    BadValue,
    ChangeDecoder,
    ChangeEvent,
    ChangeOp,
    RecordOrigin,
    Tombstone,
    transaction_xid,
    undecoded_change,
)
from services.shared.errors import BadInput, MalformedEvent, SchemaViolation
from services.shared.position import SourcePosition

TOPIC = "cdc.crm.sales_order"

ORDER_COLUMNS = [
    ColumnInfo("id", "bigint", "int8", nullable=False),
    ColumnInfo("customer_id", "bigint", "int8", nullable=False),
    ColumnInfo("order_number", "character varying", "varchar", nullable=False),
    ColumnInfo("status", "text", "text", nullable=False),
    ColumnInfo("total_amount", "numeric", "numeric", False, 18, 2),
    ColumnInfo("currency_code", "character", "bpchar", nullable=False),
    ColumnInfo("order_date", "date", "date", nullable=False),
    ColumnInfo("promised_date", "date", "date", nullable=True),
    ColumnInfo("confirmed_at", "timestamp with time zone", "timestamptz", nullable=True),
    ColumnInfo("created_at", "timestamp without time zone", "timestamp", nullable=False),
    ColumnInfo("line_count", "integer", "int4", nullable=False),
    ColumnInfo("is_priority", "boolean", "bool", nullable=False),
    ColumnInfo("external_ref", "uuid", "uuid", nullable=True),
]


def schemas() -> EnvelopeSchemas:
    return EnvelopeSchemas.from_raw(
        [build_envelope_schema("crm", "crm", "sales_order", ORDER_COLUMNS, ["id"])]
    )


@pytest.fixture(scope="module")
def decoder() -> ChangeDecoder:
    return ChangeDecoder(schemas())


def order_row(**overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": 42,
        "customer_id": 7,
        "order_number": "SO-2024-00042",
        "status": "confirmed",
        "total_amount": "123456789012.34",
        "currency_code": "EUR",
        "order_date": 19_783,  # 2024-03-01
        "promised_date": None,
        "confirmed_at": "2024-03-01T10:15:30.123456Z",
        "created_at": 1_709_287_200_000_000,  # 2024-03-01T10:00:00 (no zone)
        "line_count": 3,
        "is_priority": False,
        "external_ref": "5f0c9a57-7a7e-4d5b-9a43-1b2f5d9d1e10",
    }
    row.update(overrides)
    return row


def envelope(
    op: str = "c",
    *,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    txid: int | None = 771,
    lsn: int = 24_023_200,
    last_commit_lsn: int | None = 24_023_128,
    total_order: int = 1,
    snapshot: str = "false",
    transaction: bool = True,
) -> dict[str, Any]:
    """A Debezium 3.x PostgreSQL envelope as JsonConverter (schemas.enable=false) writes it."""
    sequence = json.dumps([None if last_commit_lsn is None else str(last_commit_lsn), str(lsn)])
    return {
        "before": before,
        "after": after,
        "source": {
            "version": "3.6.0.Final",
            "connector": "postgresql",
            "name": "cdc.crm",
            "ts_ms": 1_709_287_530_123,
            "snapshot": snapshot,
            "db": "crm",
            "sequence": sequence,
            "ts_us": 1_709_287_530_123_456,
            "ts_ns": 1_709_287_530_123_456_000,
            "schema": "crm",
            "table": "sales_order",
            "txId": txid,
            "lsn": lsn,
            "xmin": None,
        },
        "transaction": (
            {"id": f"{txid}:{lsn}", "total_order": total_order, "data_collection_order": 1}
            if transaction
            else None
        ),
        "op": op,
        "ts_ms": 1_709_287_530_500,
        "ts_us": 1_709_287_530_500_321,
        "ts_ns": 1_709_287_530_500_321_000,
    }


def encode(document: Any) -> bytes:
    return json.dumps(document).encode()


KEY = b'{"id": 42}'


def decode_change(decoder: ChangeDecoder, document: Any, key: bytes | None = KEY) -> ChangeEvent:
    event = decoder.decode(TOPIC, 3, 1001, key, encode(document))
    assert isinstance(event, ChangeEvent)
    return event


# --------------------------------------------------------------------------- happy paths


def test_insert_is_decoded_with_typed_values(decoder: ChangeDecoder) -> None:
    event = decode_change(decoder, envelope("c", after=order_row()))
    assert event.op is ChangeOp.CREATE
    assert (event.database, event.schema, event.table) == ("crm", "crm", "sales_order")
    assert event.data_collection == "crm.sales_order"
    assert event.key == {"id": 42}
    assert event.before is None
    after = event.after
    assert after is not None
    assert after["total_amount"] == Decimal("123456789012.34")
    assert str(after["total_amount"]) == "123456789012.34"
    assert after["order_date"] == date(2024, 3, 1)
    assert after["promised_date"] is None
    assert after["confirmed_at"] == datetime(2024, 3, 1, 10, 15, 30, 123456, tzinfo=UTC)
    assert after["confirmed_at"].tzinfo is not None
    assert after["created_at"] == datetime(2024, 3, 1, 10, 0, 0)
    assert after["created_at"].tzinfo is None
    assert after["line_count"] == 3 and after["is_priority"] is False
    assert after["currency_code"] == "EUR"
    assert event.row is after
    assert not event.is_delete
    assert event.position == SourcePosition(24_023_128, 24_023_200)
    assert event.transaction_id == "771"
    assert (event.total_order, event.data_collection_order) == (1, 1)
    assert event.commit_time == datetime(2024, 3, 1, 10, 5, 30, 123000, tzinfo=UTC)
    assert not event.is_snapshot
    assert event.origin == RecordOrigin(TOPIC, 3, 1001)


def test_update_carries_both_images(decoder: ChangeDecoder) -> None:
    before = order_row(status="draft", total_amount="100.00")
    after = order_row(status="confirmed", total_amount="100.10")
    event = decode_change(decoder, envelope("u", before=before, after=after))
    assert event.op is ChangeOp.UPDATE
    assert event.before is not None and event.after is not None
    assert event.before["total_amount"] == Decimal("100.00")
    assert event.after["total_amount"] == Decimal("100.10")
    assert event.row == event.after


def test_delete_row_is_the_before_image(decoder: ChangeDecoder) -> None:
    event = decode_change(decoder, envelope("d", before=order_row(status="cancelled")))
    assert event.is_delete
    assert event.after is None
    assert event.row is event.before
    assert event.row is not None and event.row["status"] == "cancelled"


def test_tombstone_after_delete(decoder: ChangeDecoder) -> None:
    record = decoder.decode(TOPIC, 0, 5, KEY, None)
    assert record == Tombstone({"id": 42}, RecordOrigin(TOPIC, 0, 5))


def test_snapshot_read_sorts_before_streamed_changes(decoder: ChangeDecoder) -> None:
    read = decode_change(
        decoder,
        envelope("r", after=order_row(), snapshot="true", last_commit_lsn=None, transaction=False),
    )
    streamed = decode_change(decoder, envelope("u", before=order_row(), after=order_row()))
    assert read.op is ChangeOp.READ and read.is_snapshot
    assert read.position.commit_lsn == 0
    assert read.transaction_id is None and read.total_order is None
    assert read.position < streamed.position


def test_last_snapshot_record_is_a_snapshot(decoder: ChangeDecoder) -> None:
    read = decode_change(decoder, envelope("r", after=order_row(), snapshot="last"))
    assert read.is_snapshot and read.position.commit_lsn == 0


def test_truncate_has_no_key_and_no_rows(decoder: ChangeDecoder) -> None:
    event = decode_change(decoder, envelope("t"), key=None)
    assert event.op is ChangeOp.TRUNCATE
    assert event.key == {} and event.before is None and event.after is None and event.row is None


def test_position_orders_by_commit_then_lsn(decoder: ChangeDecoder) -> None:
    # A later transaction may contain a change with a *lower* LSN (it began earlier).
    first = decode_change(decoder, envelope(after=order_row(), lsn=500, last_commit_lsn=400))
    second = decode_change(decoder, envelope(after=order_row(), lsn=450, last_commit_lsn=600))
    assert first.position < second.position


def test_null_last_commit_lsn_falls_back_to_the_change_lsn(decoder: ChangeDecoder) -> None:
    event = decode_change(decoder, envelope(after=order_row(), lsn=900, last_commit_lsn=None))
    assert event.position == SourcePosition(900, 900)


def test_extra_unknown_fields_are_tolerated(decoder: ChangeDecoder) -> None:
    document = envelope(after=order_row(new_column="x"))
    document["source"]["commit_lsn"] = 123
    event = decode_change(decoder, document)
    assert event.after is not None and event.after["new_column"] == "x"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0.01", "0.01"), ("-5.50", "-5.50"), ("9999999999999999.99", "9999999999999999.99")],
)
def test_decimals_stay_exact(decoder: ChangeDecoder, text: str, expected: str) -> None:
    event = decode_change(decoder, envelope(after=order_row(total_amount=text)))
    assert event.after is not None
    assert str(event.after["total_amount"]) == expected


def test_timestamptz_with_offset_is_normalised_to_utc(decoder: ChangeDecoder) -> None:
    row = order_row(confirmed_at="2024-03-01T12:15:30+02:00")
    event = decode_change(decoder, envelope(after=row))
    assert event.after is not None
    assert event.after["confirmed_at"] == datetime(2024, 3, 1, 10, 15, 30, tzinfo=UTC)
    assert event.after["confirmed_at"].utcoffset().total_seconds() == 0


def test_transaction_xid_strips_the_lsn() -> None:
    assert transaction_xid("781:39950456") == "781"
    assert transaction_xid("781") == "781"
    with pytest.raises(SchemaViolation):
        transaction_xid("abc:1")


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "value",
    [b"", b"{", b'{"before": null, "after": {"id": 4', b"\xff\xfe\x00garbage", b"not json"],
)
def test_unreadable_bytes_are_malformed(decoder: ChangeDecoder, value: bytes) -> None:
    with pytest.raises(MalformedEvent):
        decoder.decode(TOPIC, 0, 0, KEY, value)


def test_truncated_real_envelope_is_malformed(decoder: ChangeDecoder) -> None:
    data = encode(envelope(after=order_row()))
    with pytest.raises(MalformedEvent):
        decoder.decode(TOPIC, 0, 0, KEY, data[: len(data) // 2])


def test_malformed_key_is_malformed(decoder: ChangeDecoder) -> None:
    with pytest.raises(MalformedEvent):
        decoder.decode(TOPIC, 0, 0, b"{id", encode(envelope(after=order_row())))


def test_unknown_topic_is_a_schema_violation(decoder: ChangeDecoder) -> None:
    with pytest.raises(SchemaViolation, match=r"cdc\.crm\.nope"):
        decoder.decode("cdc.crm.nope", 0, 0, KEY, encode(envelope(after=order_row())))


def _violation(decoder: ChangeDecoder, document: Any, key: bytes | None = KEY) -> str:
    with pytest.raises(SchemaViolation) as caught:
        decoder.decode(TOPIC, 0, 0, key, encode(document))
    return caught.value.reason


def test_missing_row_field_names_the_field(decoder: ChangeDecoder) -> None:
    row = order_row()
    del row["order_number"]
    reason = _violation(decoder, envelope(after=row))
    assert "order_number" in reason and "missing" in reason


def test_wrong_row_type_names_the_field(decoder: ChangeDecoder) -> None:
    reason = _violation(decoder, envelope(after=order_row(line_count="three")))
    assert "line_count" in reason and "'three'" in reason and "int" in reason


def test_float_money_is_rejected(decoder: ChangeDecoder) -> None:
    reason = _violation(decoder, envelope(after=order_row(total_amount=12.5)))
    assert "total_amount" in reason


def test_non_numeric_decimal_string_is_rejected(decoder: ChangeDecoder) -> None:
    for bad in ("12,50", "NaN", "1_000.00", "", "12.5 EUR"):
        reason = _violation(decoder, envelope(after=order_row(total_amount=bad)))
        assert "after.total_amount" in reason


def test_bad_timestamptz_is_rejected(decoder: ChangeDecoder) -> None:
    reason = _violation(decoder, envelope(after=order_row(confirmed_at="yesterday")))
    assert "confirmed_at" in reason
    reason = _violation(decoder, envelope(after=order_row(confirmed_at="2024-03-01T10:00:00")))
    assert "time zone" in reason


def test_missing_source_block(decoder: ChangeDecoder) -> None:
    document = envelope(after=order_row())
    del document["source"]
    assert "source" in _violation(decoder, document)


def test_unknown_op(decoder: ChangeDecoder) -> None:
    reason = _violation(decoder, envelope("x", after=order_row()))
    assert "op" in reason and "'c'" in reason


def test_op_and_images_must_agree(decoder: ChangeDecoder) -> None:
    assert "after" in _violation(decoder, envelope("c"))
    assert "'d'" in _violation(decoder, envelope("d", after=order_row()))
    assert "'t'" in _violation(decoder, envelope("t", after=order_row()), key=None)


def test_value_must_be_an_object(decoder: ChangeDecoder) -> None:
    assert "list" in _violation(decoder, [1, 2])


def test_key_is_required_and_complete(decoder: ChangeDecoder) -> None:
    document = envelope(after=order_row())
    assert "no key" in _violation(decoder, document, key=None)
    assert "'id'" in _violation(decoder, document, key=b'{"other": 1}')
    assert "object" in _violation(decoder, document, key=b"[42]")


def test_bad_sequence(decoder: ChangeDecoder) -> None:
    document = envelope(after=order_row())
    document["source"]["sequence"] = "[oops"
    assert "sequence" in _violation(decoder, document)


def test_out_of_range_date_is_a_violation(decoder: ChangeDecoder) -> None:
    assert "order_date" in _violation(decoder, envelope(after=order_row(order_date=2**31 - 1)))


def test_every_failure_is_bad_input(decoder: ChangeDecoder) -> None:
    """Fuzz: random corruptions of a valid envelope only ever raise BadInput."""
    import random

    rng = random.Random(7)
    base = encode(envelope("u", before=order_row(), after=order_row()))
    junk: list[Any] = [None, 1, -1, 2**70, 1.5, "x", True, [], {}, [None], {"a": 1}]
    for _ in range(500):
        document = json.loads(base)
        target = document
        path = rng.choice(
            [["after"], ["before"], ["source"], ["transaction"], []]
        )  # pick a sub-object and clobber one of its keys
        for part in path:
            target = target[part]
        name = rng.choice(sorted(target))
        target[name] = copy.deepcopy(rng.choice(junk))
        with contextlib.suppress(BadInput):
            decoder.decode(TOPIC, 0, 0, KEY, encode(document))
    for _ in range(300):
        data = bytearray(base)
        for _ in range(rng.randint(1, 5)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        with contextlib.suppress(BadInput):
            decoder.decode(TOPIC, 0, 0, KEY, bytes(data))


# --------------------------------------------------------------------------- NaN, infinities


@pytest.mark.parametrize(
    ("text", "problem"),
    [("NAN", "is not a number (NaN)"), ("NaN", "is not a number (NaN)"),
     ("INFINITY", "is infinite"), ("-Infinity", "is infinite"), ("+inf", "is infinite")],
)
def test_nan_and_infinities_are_bad_values_naming_the_column(
    decoder: ChangeDecoder, text: str, problem: str
) -> None:
    with pytest.raises(BadValue) as caught:
        decoder.decode(TOPIC, 0, 0, KEY, encode(envelope(after=order_row(total_amount=text))))
    error = caught.value
    assert isinstance(error, SchemaViolation)  # still bad input of the schema kind
    assert (error.side, error.column, error.problem) == ("after", "total_amount", problem)
    assert "after.total_amount" in error.reason and problem in error.reason


def test_an_update_correcting_a_nan_is_read_and_its_before_image_leaves_it_out(
    decoder: ChangeDecoder,
) -> None:
    """The fix of a NaN (UPDATE ... SET total = 5) carries the NaN in its before-image:
    the change is what corrects it, so it is read; a delete of such a row (its only
    image) and a NaN in the after-image are still bad values."""
    value = encode(envelope(
        "u", before=order_row(total_amount="NAN"), after=order_row(total_amount="5.00")
    ))
    change = decoder.decode(TOPIC, 0, 0, KEY, value)
    assert isinstance(change, ChangeEvent)
    assert change.after is not None and change.after["total_amount"] == Decimal("5.00")
    assert change.before is not None and change.before["total_amount"] is None
    with pytest.raises(BadValue):
        decoder.decode(TOPIC, 0, 1, KEY, encode(envelope("d", before=order_row(
            total_amount="NAN"))))
    with pytest.raises(BadValue):
        decoder.decode(TOPIC, 0, 2, KEY, encode(envelope(
            "u", before=order_row(), after=order_row(total_amount="Infinity"))))


def test_an_undecodable_change_still_says_its_transaction_and_row(decoder: ChangeDecoder) -> None:
    value = encode(envelope(after=order_row(total_amount="NAN"), total_order=3))
    with pytest.raises(BadValue) as caught:
        decoder.decode(TOPIC, 2, 77, KEY, value)
    member = undecoded_change(TOPIC, 2, 77, value, caught.value)
    assert member is not None
    assert (member.transaction_id, member.total_order) == ("771", 3)
    assert member.data_collection == "crm.sales_order"
    assert member.row is not None and member.row["id"] == 42
    assert (member.column, member.problem) == ("total_amount", "is not a number (NaN)")
    assert member.position == SourcePosition(24_023_128, 24_023_200)
    assert member.origin == RecordOrigin(TOPIC, 2, 77)
    assert member.reason == caught.value.reason


@pytest.mark.parametrize(
    "value",
    [None, b"\x00garbage", b"[1, 2]", encode(envelope(after=order_row(), transaction=False))],
)
def test_a_record_without_a_transaction_block_has_no_membership(value: bytes | None) -> None:
    assert undecoded_change(TOPIC, 0, 0, value, SchemaViolation("bad")) is None

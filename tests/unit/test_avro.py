"""The published-event wire format (services/shared/avro.py).

Invariants protected here:

* Every event is Avro single-object encoding: ``C3 01``, the 8-byte little-endian
  CRC-64-AVRO fingerprint of the schema's Parsing Canonical Form, then the binary body
  -- checked against vectors from Avro's own test data, so any language's Avro library
  can decode our bytes.
* Money is exact: a Decimal goes in and the same Decimal comes out; a float is refused
  for a decimal field, never converted (DESIGN invariant 5).
* Nothing that does not conform to its schema is written: fastavro alone would truncate
  floats into ints, overflow ints, drop unknown fields and exceed decimal precision.
* Decoding never crashes with an arbitrary exception: bad bytes raise MalformedEvent,
  unknown schemas SchemaViolation, each with a reason (so the event can be dead-lettered).
* Schema evolution: data written with an older version is read in the latest shape.
"""

from __future__ import annotations

import datetime as dt
import io
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_reader

from services.shared.avro import (
    HEADER_SCHEMA,
    HEADER_SCHEMA_VERSION,
    SINGLE_OBJECT_MARKER,
    AvroCodec,
    SchemaCatalogue,
    fingerprint,
)
from services.shared.errors import BadInput, MalformedEvent, SchemaViolation

FIXTURES = Path(__file__).parent / "fixtures" / "schemas"
UTC = dt.UTC


# Vectors from Apache Avro share/test/data/schema-tests.txt (signed 64-bit, as Java
# prints them) -- the Java implementation cross-checks them against the spec.
AVRO_FINGERPRINT_VECTORS: list[tuple[Any, int]] = [
    ("null", 7195948357588979594),
    ("int", 8247732601305521295),
    ("string", -8142146995180207161),
    ({"fields": [], "type": "record", "name": "foo", "namespace": "x.y"}, 5916914534497305771),
    (
        {"fields": [], "type": "record", "name": "a.b.foo", "namespace": "x.y"},
        -4616218487480524110,
    ),
    (
        {
            "namespace": "x.y.z",
            "type": "enum",
            "name": "foo",
            "doc": "foo bar",
            "symbols": ["A1", "A2"],
        },
        -4448647247586288245,
    ),
    (
        {
            "name": "PigValue",
            "type": "record",
            "fields": [{"name": "value", "type": ["null", "int", "long", "PigValue"]}],
        },
        -1759257747318642341,
    ),
]


def _rabin(data: bytes) -> int:
    """CRC-64-AVRO written out from the Avro specification, independent of fastavro."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for b in data:
        fp = (fp >> 8) ^ table[(fp ^ b) & 0xFF]
    return fp


@pytest.mark.parametrize(("schema", "expected"), AVRO_FINGERPRINT_VECTORS)
def test_fingerprint_matches_avro_test_vectors(schema: Any, expected: int) -> None:
    assert fingerprint(schema) == (expected & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "little")


def test_single_object_header_of_int_matches_avro_reference() -> None:
    # Avro's Ruby test_fingerprints.rb: single_object_encoding_header of "int"
    expected = bytes([0xC3, 0x01, 0x8F, 0x5C, 0x39, 0x3F, 0x1A, 0xD5, 0x75, 0x72])
    assert SINGLE_OBJECT_MARKER + fingerprint("int") == expected


def test_fingerprint_agrees_with_an_independent_rabin_on_our_schemas() -> None:
    for entry in SchemaCatalogue.load():
        expected = _rabin(entry.canonical.encode()).to_bytes(8, "little")
        assert entry.fingerprint == expected, entry.key


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def catalogue() -> SchemaCatalogue:
    return SchemaCatalogue.load(FIXTURES)


@pytest.fixture(scope="module")
def codec(catalogue: SchemaCatalogue) -> AvroCodec:
    return AvroCodec(catalogue)


def widget_v1(**overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": 7,
        "name": "gear",
        "price": Decimal("1234.50"),
        "currency": "EUR",
        "status": "ACTIVE",
        "updated_at": dt.datetime(2024, 5, 1, 12, 30, 15, 123000, tzinfo=UTC),
    }
    record.update(overrides)
    return record


def widget_v2(**overrides: Any) -> dict[str, Any]:
    record = widget_v1(weight_kg=Decimal("2.125"), tags=["a", "b"], status="DRAFT")
    record.update(overrides)
    return record


# --------------------------------------------------------------------------- encoding


def test_encoding_is_marker_fingerprint_body_readable_by_plain_avro(codec: AvroCodec) -> None:
    data = codec.encode("widget", widget_v2())
    schema_file = FIXTURES / "published" / "widget" / "v2.avsc"
    schema = json.loads(schema_file.read_text())
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == fingerprint(schema)
    # any Avro reader with only the schema file decodes the body
    body = schemaless_reader(io.BytesIO(data[10:]), parse_schema(schema), None)
    assert body == widget_v2()


def test_round_trip_latest_version_by_default(codec: AvroCodec) -> None:
    event = codec.decode(codec.encode("widget", widget_v2()))
    assert (event.schema_name, event.version) == ("ambidex.test.Widget", 2)
    assert event.record == widget_v2()


def test_name_resolves_as_key_or_full_name(codec: AvroCodec) -> None:
    assert codec.encode("ambidex.test.Widget", widget_v2()) == codec.encode("widget", widget_v2())


@pytest.mark.parametrize(
    "amount",
    ["0.00", "0.01", "-0.01", "9999999999999999.99", "-9999999999999999.99", "0.1", "42"],
)
def test_decimal_round_trip_is_exact(codec: AvroCodec, amount: str) -> None:
    value = Decimal(amount)
    record = codec.decode(codec.encode("widget", widget_v2(price=value))).record
    assert isinstance(record["price"], Decimal)
    assert record["price"] == value
    assert record["price"].as_tuple().exponent == -2  # scale of the schema


def test_decimal_sum_stays_exact(codec: AvroCodec) -> None:
    record = codec.decode(codec.encode("widget", widget_v2(price=Decimal("0.1") + Decimal("0.2"))))
    assert record.record["price"] == Decimal("0.30")


def test_headers_name_schema_and_version(codec: AvroCodec) -> None:
    assert codec.headers("widget") == [
        (HEADER_SCHEMA, b"ambidex.test.Widget"),
        (HEADER_SCHEMA_VERSION, b"2"),
    ]
    assert codec.headers("widget", version=1)[1] == (HEADER_SCHEMA_VERSION, b"1")


# --------------------------------------------------------------------------- encode guards


def _violation(codec: AvroCodec, record: dict[str, Any], version: int | None = None) -> str:
    with pytest.raises(SchemaViolation) as info:
        codec.encode("widget", record, version=version)
    assert isinstance(info.value, BadInput)
    return info.value.reason


def test_float_for_decimal_is_rejected_with_reason(codec: AvroCodec) -> None:
    reason = _violation(codec, widget_v2(price=12.34))
    assert "price" in reason
    assert "float" in reason
    assert "Decimal" in reason


def test_float_for_nullable_decimal_is_rejected_with_reason(codec: AvroCodec) -> None:
    reason = _violation(codec, widget_v2(weight_kg=2.5))
    assert "weight_kg" in reason
    assert "float" in reason


def test_nullable_decimal_accepts_null(codec: AvroCodec) -> None:
    record = codec.decode(codec.encode("widget", widget_v2(weight_kg=None))).record
    assert record["weight_kg"] is None


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"price": Decimal("12.345")}, "decimal places"),
        ({"price": Decimal("10000000000000000")}, "does not fit"),
        ({"price": Decimal("NaN")}, "finite"),
        ({"price": "12.34"}, "not a decimal.Decimal"),
        ({"id": 1.0}, "float"),
        ({"id": True}, "not an int"),
        ({"id": 2**63}, "64-bit"),
        ({"name": None}, "not a string"),
        ({"status": "LOST"}, "not a symbol"),
        ({"tags": ["a", 1]}, "tags[1]"),
        ({"colour": "red"}, "unknown field(s) colour"),
        ({"updated_at": dt.datetime(2024, 5, 1, 12, 0)}, "naive datetime"),
    ],
)
def test_non_conforming_records_are_refused(
    codec: AvroCodec, overrides: dict[str, Any], expected: str
) -> None:
    assert expected in _violation(codec, widget_v2(**overrides))


def test_missing_required_field_is_refused(codec: AvroCodec) -> None:
    record = widget_v2()
    del record["currency"]
    assert "currency: missing" in _violation(codec, record)


def test_missing_field_with_default_is_filled(codec: AvroCodec) -> None:
    record = widget_v2()
    del record["tags"]
    assert codec.decode(codec.encode("widget", record)).record["tags"] == []


def test_timestamp_as_epoch_millis_is_accepted(codec: AvroCodec) -> None:
    record = codec.decode(codec.encode("widget", widget_v2(updated_at=0))).record
    assert record["updated_at"] == dt.datetime(1970, 1, 1, tzinfo=UTC)


def test_unknown_schema_name_is_a_key_error(codec: AvroCodec) -> None:
    with pytest.raises(KeyError):
        codec.encode("nope", {})
    with pytest.raises(KeyError):
        codec.encode("widget", widget_v2(), version=9)


# --------------------------------------------------------------------------- decode errors


@pytest.mark.parametrize(
    ("data", "error", "expected"),
    [
        (b"", MalformedEvent, "truncated"),
        (b"\xc3\x01\x00\x01", MalformedEvent, "truncated"),
        (b'{"id": 42, "name": "not avro"}', MalformedEvent, "bad marker"),
        (b"\xc3\x01" + b"\x00" * 8 + b"\x02", SchemaViolation, "unknown schema fingerprint"),
    ],
)
def test_undecodable_bytes_raise_bad_input(
    codec: AvroCodec, data: bytes, error: type[BadInput], expected: str
) -> None:
    with pytest.raises(error) as info:
        codec.decode(data)
    assert expected in info.value.reason


def test_unknown_fingerprint_names_it(codec: AvroCodec) -> None:
    with pytest.raises(SchemaViolation) as info:
        codec.decode(SINGLE_OBJECT_MARKER + bytes.fromhex("0102030405060708") + b"\x00")
    assert "0102030405060708" in info.value.reason


def test_truncated_body_is_malformed(codec: AvroCodec) -> None:
    data = codec.encode("widget", widget_v2())
    for cut in (11, len(data) // 2, len(data) - 1):
        with pytest.raises(MalformedEvent):
            codec.decode(data[:cut])


def test_trailing_bytes_are_malformed(codec: AvroCodec) -> None:
    with pytest.raises(MalformedEvent) as info:
        codec.decode(codec.encode("widget", widget_v2()) + b"\x00")
    assert "trailing" in info.value.reason


def test_reader_of_another_record_is_a_violation(codec: AvroCodec) -> None:
    cat = SchemaCatalogue.from_schemas(
        {
            "widget": {1: json.loads((FIXTURES / "published/widget/v1.avsc").read_text())},
            "other": {1: {"type": "record", "name": "x.Other", "fields": []}},
        }
    )
    data = AvroCodec(cat).encode("widget", widget_v1())
    with pytest.raises(SchemaViolation):
        AvroCodec(cat).decode(data, reader_schema_name="other")


# --------------------------------------------------------------------------- evolution


def test_v1_data_is_read_in_the_latest_shape(codec: AvroCodec) -> None:
    data = codec.encode("widget", widget_v1(), version=1)
    event = codec.decode(data)
    assert (event.schema_name, event.version) == ("ambidex.test.Widget", 1)
    assert event.record == {**widget_v1(), "weight_kg": None, "tags": []}


def test_old_reader_reads_new_data(catalogue: SchemaCatalogue, codec: AvroCodec) -> None:
    """Forward compatibility: a consumer still on v1 reads v2 data (unknown symbol -> default)."""
    data = codec.encode("widget", widget_v2())
    v1, v2 = catalogue.get("widget", 1), catalogue.get("widget", 2)
    record = schemaless_reader(io.BytesIO(data[10:]), v2.parsed, v1.parsed)
    assert record == widget_v1(status="ACTIVE")


# --------------------------------------------------------------------------- catalogue


def test_project_catalogue_has_the_dead_letter_schema() -> None:
    cat = SchemaCatalogue.load()
    entry = cat.get("dead_letter")
    assert entry.name == "ambidex.platform.DeadLetter"
    assert cat.get("ambidex.platform.DeadLetter") is entry
    assert cat.by_fingerprint(entry.fingerprint) is entry


def _write(root: Path, rel: str, schema: dict[str, Any]) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(schema))


def test_catalogue_refuses_badly_named_version_file(tmp_path: Path) -> None:
    _write(tmp_path, "published/thing/version1.avsc", {"type": "record", "name": "T", "fields": []})
    with pytest.raises(ValueError, match=r"v<N>\.avsc"):
        SchemaCatalogue.load(tmp_path)


def test_catalogue_refuses_renamed_record_across_versions(tmp_path: Path) -> None:
    _write(tmp_path, "published/thing/v1.avsc", {"type": "record", "name": "a.T", "fields": []})
    _write(tmp_path, "published/thing/v2.avsc", {"type": "record", "name": "a.U", "fields": []})
    with pytest.raises(ValueError, match="one full name"):
        SchemaCatalogue.load(tmp_path)


def test_catalogue_refuses_a_version_identical_to_another(tmp_path: Path) -> None:
    schema = {"type": "record", "name": "a.T", "fields": [{"name": "x", "type": "int"}]}
    _write(tmp_path, "published/thing/v1.avsc", schema)
    _write(tmp_path, "published/thing/v2.avsc", {**schema, "doc": "only a doc change"})
    with pytest.raises(ValueError, match="same canonical form"):
        SchemaCatalogue.load(tmp_path)


def test_catalogue_refuses_invalid_schema(tmp_path: Path) -> None:
    _write(tmp_path, "ambidex/broken.avsc", {"type": "record", "name": "B", "fields": [{"x": 1}]})
    with pytest.raises(ValueError, match=r"broken\.avsc"):
        SchemaCatalogue.load(tmp_path)

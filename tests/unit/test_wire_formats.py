"""Both wire formats: what a codec writes in the registry format (magic 0, 4-byte
big-endian schema id, Avro body) is what Confluent's deserializers expect, and every
reader decodes either format by its first byte, asking the registry only for ids it has
not seen and never for a schema outside the catalogue."""

from __future__ import annotations

import io
import json
from decimal import Decimal
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_reader

from services.shared.avro import AvroCodec, SchemaCatalogue, UnregisteredSchema
from services.shared.errors import MalformedEvent, SchemaViolation
from services.shared.resilience import is_transient
from services.shared.schema_registry import (
    RegistryIds,
    RegistryUnavailable,
    public_url,
    registry_prefix,
    registry_schema_id,
    value_subject,
)
from services.shared.settings import SettingsError, load_settings

V1: dict[str, Any] = {
    "type": "record", "name": "Payment", "namespace": "test.wire",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal",
                                    "precision": 18, "scale": 2}},
        {"name": "currency", "type": "string"},
    ],
}
V2: dict[str, Any] = {**V1, "fields": [*V1["fields"],
                                       {"name": "note", "type": "string", "default": ""}]}
RECORD = {"id": 7, "amount": Decimal("12.30"), "currency": "EUR"}


@pytest.fixture
def catalogue() -> SchemaCatalogue:
    return SchemaCatalogue.from_schemas({"payment": {1: V1, 2: V2}})


def registry_codec(catalogue: SchemaCatalogue, fetch: Any = None) -> AvroCodec:
    ids = RegistryIds(fetch)
    ids.remember(catalogue.get("payment", 1), 41)
    ids.remember(catalogue.get("payment", 2), 42)
    return AvroCodec(catalogue, wire="registry", ids=ids)


def test_prefix_is_magic_zero_and_big_endian_id() -> None:
    assert registry_prefix(1) == b"\x00\x00\x00\x00\x01"
    assert registry_prefix(0x01020304) == b"\x00\x01\x02\x03\x04"
    assert registry_schema_id(registry_prefix(2**31 - 1) + b"body") == 2**31 - 1
    with pytest.raises(ValueError):
        registry_prefix(2**31)
    with pytest.raises(ValueError):
        registry_prefix(-1)


def test_registry_value_is_prefix_plus_plain_avro_body(catalogue: SchemaCatalogue) -> None:
    value = registry_codec(catalogue).encode("payment", {**RECORD, "note": "x"})
    assert value[:5] == b"\x00\x00\x00\x00\x2a"  # id 42: the newest version
    # what any Confluent-format reader does: skip 5 bytes, read with the id's schema
    body = schemaless_reader(io.BytesIO(value[5:]), parse_schema(V2), None)
    assert body == {**RECORD, "note": "x"}


def test_each_codec_reads_both_formats(catalogue: SchemaCatalogue) -> None:
    registry = registry_codec(catalogue)
    single = AvroCodec(catalogue)
    framed = registry.encode("payment", RECORD, version=1)
    plain = single.encode("payment", RECORD, version=1)
    assert framed[0] == 0 and plain[:2] == b"\xc3\x01"
    for codec in (registry, single):
        decoded = codec.decode(plain)
        assert (decoded.version, decoded.record) == (1, {**RECORD, "note": ""})
    decoded = registry.decode(framed)
    assert (decoded.schema_name, decoded.version) == ("test.wire.Payment", 1)
    assert decoded.record == {**RECORD, "note": ""}  # resolved to the newest version


def test_registry_value_without_a_registry_is_refused_with_the_reason(
    catalogue: SchemaCatalogue,
) -> None:
    framed = registry_codec(catalogue).encode("payment", RECORD)
    with pytest.raises(SchemaViolation, match="no schema registry is configured"):
        AvroCodec(catalogue).decode(framed)


def test_unseen_id_is_asked_once_and_matched_by_canonical_form(
    catalogue: SchemaCatalogue,
) -> None:
    asked: list[int] = []

    def fetch(schema_id: int) -> str:
        asked.append(schema_id)
        # the registry may store the text reformatted: matched by canonical form
        return json.dumps(V1, indent=2)

    writer = registry_codec(catalogue)
    value = registry_prefix(99) + writer.encode("payment", RECORD, version=1)[5:]
    reader = AvroCodec(catalogue, ids=RegistryIds(fetch))
    assert reader.decode(value).version == 1
    assert reader.decode(value).version == 1
    assert asked == [99]


def test_id_of_a_schema_outside_the_catalogue_is_bad_input(catalogue: SchemaCatalogue) -> None:
    other = {"type": "record", "name": "Other", "fields": [{"name": "x", "type": "int"}]}
    reader = AvroCodec(catalogue, ids=RegistryIds(lambda _: json.dumps(other)))
    with pytest.raises(SchemaViolation, match="not in this catalogue"):
        reader.decode(registry_prefix(5) + b"\x02")


def test_unreachable_registry_is_transient_not_bad_input(catalogue: SchemaCatalogue) -> None:
    def down(_: int) -> str:
        raise RegistryUnavailable("schema registry http://r:8081: ConnectError")

    reader = AvroCodec(catalogue, ids=RegistryIds(down))
    with pytest.raises(RegistryUnavailable) as caught:
        reader.decode(registry_prefix(5) + b"\x02")
    assert is_transient(caught.value)


@pytest.mark.parametrize("data", [b"\x00", b"\x00\x00\x00\x2a"])
def test_truncated_registry_frame_is_malformed(catalogue: SchemaCatalogue, data: bytes) -> None:
    with pytest.raises(MalformedEvent, match="truncated"):
        registry_codec(catalogue).decode(data)


def test_trailing_bytes_after_a_registry_body_are_malformed(catalogue: SchemaCatalogue) -> None:
    value = registry_codec(catalogue).encode("payment", RECORD)
    with pytest.raises(MalformedEvent, match="trailing"):
        registry_codec(catalogue).decode(value + b"\x00")


def test_neither_format_names_both_markers(catalogue: SchemaCatalogue) -> None:
    with pytest.raises(MalformedEvent, match=r"c301.*00"):
        AvroCodec(catalogue).decode(b"{\"json\": 1}")


def test_publishing_a_schema_without_an_id_fails_loudly(catalogue: SchemaCatalogue) -> None:
    codec = AvroCodec(catalogue, wire="registry", ids=RegistryIds())
    with pytest.raises(UnregisteredSchema, match="no schema registry id"):
        codec.encode("payment", RECORD)


def test_subject_and_shown_url() -> None:
    assert value_subject("ambidex.availability") == "ambidex.availability-value"
    assert public_url("https://u:secret@reg:8443/apis/ccompat/v7") == (
        "https://reg:8443/apis/ccompat/v7"
    )


def test_wire_format_setting() -> None:
    assert load_settings("s", {}).published_wire_format == "single-object"
    url = {"AMBIDEX_SCHEMA_REGISTRY_URL": "http://reg:8081/"}
    settings = load_settings("s", url)
    assert settings.published_wire_format == "registry"
    assert settings.schema_registry_url == "http://reg:8081"
    forced = {**url, "AMBIDEX_WIRE_FORMAT": "single-object"}
    assert load_settings("s", forced).published_wire_format == "single-object"
    with pytest.raises(SettingsError, match="AMBIDEX_SCHEMA_REGISTRY_URL"):
        load_settings("s", {"AMBIDEX_WIRE_FORMAT": "registry"})
    with pytest.raises(SettingsError, match="credentials"):
        load_settings("s", {"AMBIDEX_SCHEMA_REGISTRY_URL": "http://u:pw@reg:8081"})
    secret = load_settings("s", {**url, "AMBIDEX_SCHEMA_REGISTRY_USERNAME": "svc",
                                 "AMBIDEX_SCHEMA_REGISTRY_PASSWORD": "hunter2"})
    assert "hunter2" not in json.dumps(secret.redacted(), default=str) + repr(secret)


def test_asyncapi_states_both_wire_formats() -> None:
    import yaml

    from ambidex.asyncapi import DOCUMENT

    document = yaml.safe_load(DOCUMENT.read_text())
    assert document["servers"]["kafka"]["bindings"]["kafka"]["schemaRegistryUrl"]
    messages = document["components"]["messages"].values()
    assert messages
    for message in messages:
        assert "0x00" in message["description"] and "0xC3 0x01" in message["description"]
        binding = message["bindings"]["kafka"]
        assert (binding["schemaIdLocation"], binding["schemaIdPayloadEncoding"]) == (
            "payload", "confluent")

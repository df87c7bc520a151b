"""Change-envelope schemas (services.shared.cdc_schemas).

Invariants protected here:

* Each PostgreSQL column type maps to the type its values have on the wire with the
  project's Debezium settings (decimal.handling.mode=string,
  time.precision.mode=adaptive_time_microseconds), with the ``ambidex.logical``
  attribute the decoder relies on; money/quantities never become floats (invariant 5).
* Nullable columns (and generated ones) accept null; NOT NULL columns do not.
* Generation is deterministic (same table -> byte-identical file), and the loader
  agrees with the generator: what is written can be loaded, keyed by topic.
* The committed ``schemas/cdc/**`` files load, and a change built from each of them
  decodes — so the decoder and the committed schemas cannot drift apart.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastavro.validation import validate

from services.shared.cdc_schemas import (
    DEFAULT_ROOT,
    ColumnInfo,
    EnvelopeSchemaError,
    EnvelopeSchemas,
    SchemaGenerationError,
    TopicSchema,
    build_envelope_schema,
    load_envelope_schemas,
    main,
    render_schema,
)
from services.shared.changes import ChangeDecoder, ChangeEvent

COLUMNS = [
    ColumnInfo("id", "bigint", "int8", nullable=False),
    ColumnInfo("amount", "numeric", "numeric", False, 18, 2),
    ColumnInfo("ratio", "numeric", "numeric", True),
    ColumnInfo("quantity", "numeric", "numeric", True, 14, 3),
    ColumnInfo("due_date", "date", "date", True),
    ColumnInfo("created_at", "timestamp without time zone", "timestamp", False),
    ColumnInfo("confirmed_at", "timestamp with time zone", "timestamptz", True),
    ColumnInfo("opens_at", "time without time zone", "time", True),
    ColumnInfo("position", "smallint", "int2", False),
    ColumnInfo("lines", "integer", "int4", False),
    ColumnInfo("active", "boolean", "bool", False),
    ColumnInfo("name", "text", "text", False),
    ColumnInfo("code", "character varying", "varchar", False),
    ColumnInfo("currency_code", "character", "bpchar", False),
    ColumnInfo("ref", "uuid", "uuid", True),
    ColumnInfo("attrs", "jsonb", "jsonb", True),
    ColumnInfo("state", "USER-DEFINED", "order_state", False, is_enum=True),
    ColumnInfo("total", "numeric", "numeric", False, 18, 2, is_generated=True),
]


def build() -> dict[str, Any]:
    return build_envelope_schema("erp", "erp", "sale_order", COLUMNS, ["id"])


def row_fields(schema: dict[str, Any]) -> dict[str, Any]:
    before = next(f for f in schema["fields"] if f["name"] == "before")
    return {f["name"]: f["type"] for f in before["type"][1]["fields"]}


def test_type_mapping() -> None:
    fields = row_fields(build())
    assert fields["id"] == "long"
    assert fields["amount"] == {
        "type": "string",
        "ambidex.logical": "decimal",
        "precision": 18,
        "scale": 2,
    }
    assert fields["ratio"] == ["null", {"type": "string", "ambidex.logical": "decimal"}]
    assert fields["quantity"][1]["scale"] == 3
    assert fields["due_date"] == ["null", {"type": "int", "ambidex.logical": "date"}]
    assert fields["created_at"] == {"type": "long", "ambidex.logical": "timestamp-micros"}
    assert fields["confirmed_at"] == ["null", {"type": "string", "ambidex.logical": "timestamptz"}]
    assert fields["opens_at"] == ["null", {"type": "long", "ambidex.logical": "time-micros"}]
    assert fields["position"] == "int" and fields["lines"] == "int"
    assert fields["active"] == "boolean"
    for name in ("name", "code", "currency_code", "state"):
        assert fields[name] == "string"
    assert fields["ref"] == ["null", "string"] and fields["attrs"] == ["null", "string"]
    assert fields["total"][0] == "null"  # generated: not published by pgoutput < 18


def test_field_order_follows_columns_and_envelope_shape() -> None:
    schema = build()
    assert list(row_fields(schema)) == [c.name for c in COLUMNS]
    assert [f["name"] for f in schema["fields"]] == [
        "before",
        "after",
        "source",
        "transaction",
        "op",
        "ts_ms",
        "ts_us",
        "ts_ns",
    ]
    assert schema["ambidex.topic"] == "cdc.erp.sale_order"
    assert schema["ambidex.key"] == ["id"]


def test_rendering_is_deterministic() -> None:
    assert render_schema(build()) == render_schema(build())


def test_unsupported_type_is_named() -> None:
    with pytest.raises(SchemaGenerationError, match=r"sale_order\.geom"):
        build_envelope_schema(
            "erp", "erp", "sale_order", [ColumnInfo("geom", "USER-DEFINED", "geometry")], []
        )


def test_key_must_be_a_column() -> None:
    with pytest.raises(SchemaGenerationError, match="key"):
        build_envelope_schema("erp", "erp", "t", COLUMNS[:1], ["nope"])


def test_nullability_is_enforced() -> None:
    topic = TopicSchema.from_raw(build())
    base = {
        "id": 1,
        "amount": "1.00",
        "ratio": None,
        "quantity": None,
        "due_date": None,
        "created_at": 0,
        "confirmed_at": None,
        "opens_at": None,
        "position": 1,
        "lines": 1,
        "active": True,
        "name": "n",
        "code": "c",
        "currency_code": "EUR",
        "ref": None,
        "attrs": None,
        "state": "draft",
        "total": None,
    }
    envelope = sample_envelope(base)
    assert validate(envelope, topic.parsed, raise_errors=False)
    envelope["after"] = {**base, "amount": None}
    assert not validate(envelope, topic.parsed, raise_errors=False)


def test_loader_round_trip(tmp_path: Path) -> None:
    (tmp_path / "erp").mkdir()
    (tmp_path / "erp" / "sale_order.avsc").write_text(render_schema(build()))
    schemas = load_envelope_schemas(tmp_path)
    assert list(schemas) == ["cdc.erp.sale_order"]
    topic = schemas["cdc.erp.sale_order"]
    assert topic.key_columns == ("id",)
    assert topic.data_collection == "erp.sale_order"
    assert schemas.logical_types("cdc.erp.sale_order") == {
        "amount": "decimal",
        "ratio": "decimal",
        "quantity": "decimal",
        "due_date": "date",
        "created_at": "timestamp-micros",
        "confirmed_at": "timestamptz",
        "opens_at": "time-micros",
        "total": "decimal",
    }
    assert schemas.data_collections("erp") == frozenset({"erp.sale_order"})
    assert schemas.data_collections("crm") == frozenset()


def test_loader_rejects_a_misplaced_file(tmp_path: Path) -> None:
    (tmp_path / "crm").mkdir()
    (tmp_path / "crm" / "sale_order.avsc").write_text(render_schema(build()))
    with pytest.raises(EnvelopeSchemaError, match="path says"):
        load_envelope_schemas(tmp_path)


def test_loader_rejects_non_envelopes(tmp_path: Path) -> None:
    (tmp_path / "crm").mkdir()
    (tmp_path / "crm" / "x.avsc").write_text('{"type": "record", "name": "x", "fields": []}')
    with pytest.raises(EnvelopeSchemaError, match="not a change-envelope"):
        load_envelope_schemas(tmp_path)
    (tmp_path / "crm" / "x.avsc").write_text("{")
    with pytest.raises(EnvelopeSchemaError, match="unreadable"):
        load_envelope_schemas(tmp_path)


def test_duplicate_topics_are_rejected() -> None:
    with pytest.raises(EnvelopeSchemaError, match="two schemas"):
        EnvelopeSchemas.from_raw([build(), build()])


def test_cli_requires_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main([])
    assert "--dsn" in capsys.readouterr().err


# --------------------------------------------------------------------------- committed


def sample_envelope(row: dict[str, Any], table: str = "sale_order") -> dict[str, Any]:
    return {
        "before": None,
        "after": row,
        "source": {
            "version": "3.6.0.Final",
            "connector": "postgresql",
            "name": "cdc.x",
            "ts_ms": 1709287530123,
            "snapshot": "false",
            "db": "x",
            "sequence": '["100","200"]',
            "ts_us": None,
            "ts_ns": None,
            "schema": "x",
            "table": table,
            "txId": 5,
            "lsn": 200,
            "xmin": None,
        },
        "transaction": {"id": "5:200", "total_order": 1, "data_collection_order": 1},
        "op": "c",
        "ts_ms": 1709287530200,
    }


_SAMPLES: dict[tuple[str, str | None], Any] = {
    ("string", "decimal"): "1234567890.12",
    ("int", "date"): 19783,
    ("long", "timestamp-micros"): 1709287200000000,
    ("string", "timestamptz"): "2024-03-01T10:15:30.123456Z",
    ("long", "time-micros"): 3_600_000_000,
    ("int", None): 7,
    ("long", None): 42,
    ("boolean", None): True,
    ("float", None): 1.5,
    ("double", None): 2.5,
    ("string", None): "text",
}

COMMITTED = sorted(DEFAULT_ROOT.glob("*/*.avsc"))


@pytest.mark.skipif(not COMMITTED, reason="schemas/cdc has not been generated yet")
def test_committed_schemas_load_and_decode() -> None:
    schemas = load_envelope_schemas(DEFAULT_ROOT)
    assert len(schemas) == len(COMMITTED)
    decoder = ChangeDecoder(schemas)
    for topic, spec in schemas.items():
        row = {c.name: _SAMPLES[(c.wire_type, c.logical)] for c in spec.columns}
        envelope = sample_envelope(row, spec.table)
        key = json.dumps({name: row[name] for name in spec.key_columns}).encode()
        event = decoder.decode(topic, 0, 0, key, json.dumps(envelope).encode())
        assert isinstance(event, ChangeEvent), topic
        assert event.after is not None
        assert set(event.after) == {c.name for c in spec.columns}

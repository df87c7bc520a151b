"""Avro schemas of the Debezium change envelopes, as they arrive on the CDC topics.

Debezium's PostgreSQL connector writes each change as an envelope
``{before, after, source, transaction, op, ts_ms, ts_us, ts_ns}``; Kafka Connect's
JsonConverter (``schemas.enable=false``) turns it into plain JSON, so row values arrive
in their *wire* types (see ``docs/conventions.md``):

=====================  ===============  ===============================================
PostgreSQL             JSON / Avro      ``ambidex.logical``
=====================  ===============  ===============================================
numeric(p, s)          string           ``decimal`` (+ ``precision``/``scale``)
date                   int              ``date`` (days since 1970-01-01)
timestamp              long             ``timestamp-micros`` (µs since epoch, no zone)
timestamptz            string           ``timestamptz`` (ISO-8601, UTC)
time                   long             ``time-micros`` (µs since midnight)
smallint, integer      int
bigint                 long
boolean                boolean
real / double          float / double
text, varchar, char,   string
uuid, json(b), enums
=====================  ===============  ===============================================

This module has two halves:

* the **generator** reads a live database's ``information_schema`` (asyncpg) and writes
  one ``schemas/cdc/<db>/<table>.avsc`` per captured table
  (``python -m services.shared.cdc_schemas --dsn … --db crm --schema crm --out
  schemas/cdc/crm``); the mapping itself is the pure function
  :func:`build_envelope_schema`, so it is unit tested without a server;
* the **loader** :func:`load_envelope_schemas` parses the committed files into an
  :class:`EnvelopeSchemas` registry: topic ``cdc.<db>.<table>`` -> parsed fastavro
  schema, primary-key columns and per-column logical types, which the change decoder
  (:mod:`services.shared.changes`) compiles into converters.

Custom attributes on the top-level record (``ambidex.topic``, ``ambidex.database``,
``ambidex.source_schema``, ``ambidex.table``, ``ambidex.key``) make each file
self-describing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastavro import parse_schema

LOGICAL_ATTR = "ambidex.logical"

DECIMAL = "decimal"
DATE = "date"
TIMESTAMP_MICROS = "timestamp-micros"
TIMESTAMPTZ = "timestamptz"
TIME_MICROS = "time-micros"
LOGICAL_TYPES = frozenset({DECIMAL, DATE, TIMESTAMP_MICROS, TIMESTAMPTZ, TIME_MICROS})

DEFAULT_ROOT = Path(__file__).resolve().parent.parent.parent / "schemas" / "cdc"

_AVRO_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class SchemaGenerationError(ValueError):
    """A table cannot be described as a change envelope (unsupported type, bad name)."""


class EnvelopeSchemaError(ValueError):
    """A committed ``.avsc`` file is not a well-formed change-envelope schema."""


# --------------------------------------------------------------------------- mapping


@dataclass(frozen=True, slots=True)
class ColumnInfo:
    """One column as ``information_schema.columns`` describes it."""

    name: str
    data_type: str
    udt_name: str = ""
    nullable: bool = True
    numeric_precision: int | None = None
    numeric_scale: int | None = None
    is_generated: bool = False
    is_enum: bool = False


def _wire_type(column: ColumnInfo, table: str) -> dict[str, Any] | str:
    """The Avro type a column's values have on the wire (non-null branch)."""
    data_type = column.data_type.lower()
    if data_type == "numeric":
        spec: dict[str, Any] = {"type": "string", LOGICAL_ATTR: DECIMAL}
        if column.numeric_precision is not None:
            spec["precision"] = column.numeric_precision
            spec["scale"] = column.numeric_scale or 0
        return spec
    if data_type == "date":
        return {"type": "int", LOGICAL_ATTR: DATE}
    if data_type == "timestamp without time zone":
        return {"type": "long", LOGICAL_ATTR: TIMESTAMP_MICROS}
    if data_type == "timestamp with time zone":
        return {"type": "string", LOGICAL_ATTR: TIMESTAMPTZ}
    if data_type == "time without time zone":
        return {"type": "long", LOGICAL_ATTR: TIME_MICROS}
    if data_type in ("smallint", "integer"):
        return "int"
    if data_type == "bigint":
        return "long"
    if data_type == "boolean":
        return "boolean"
    if data_type == "real":
        return "float"
    if data_type == "double precision":
        return "double"
    if data_type in (
        "text",
        "character varying",
        "character",
        "uuid",
        "json",
        "jsonb",
        "time with time zone",
    ):
        return "string"
    if data_type == "user-defined" and column.is_enum:
        return "string"
    raise SchemaGenerationError(
        f"{table}.{column.name}: PostgreSQL type {column.data_type!r} ({column.udt_name}) "
        "has no wire mapping in services/shared/cdc_schemas.py"
    )


def _source_schema() -> dict[str, Any]:
    """``source`` block of Debezium 3.x PostgreSQL change events."""
    return {
        "type": "record",
        "name": "Source",
        "namespace": "io.debezium.connector.postgresql",
        "fields": [
            {"name": "version", "type": "string"},
            {"name": "connector", "type": "string"},
            {"name": "name", "type": "string"},
            {"name": "ts_ms", "type": "long"},
            {"name": "snapshot", "type": ["null", "string"], "default": None},
            {"name": "db", "type": "string"},
            {"name": "sequence", "type": ["null", "string"], "default": None},
            {"name": "ts_us", "type": ["null", "long"], "default": None},
            {"name": "ts_ns", "type": ["null", "long"], "default": None},
            {"name": "schema", "type": "string"},
            {"name": "table", "type": "string"},
            {"name": "txId", "type": ["null", "long"], "default": None},
            {"name": "lsn", "type": ["null", "long"], "default": None},
            {"name": "xmin", "type": ["null", "long"], "default": None},
        ],
    }


def _transaction_block_schema() -> dict[str, Any]:
    return {
        "type": "record",
        "name": "block",
        "namespace": "event",
        "fields": [
            {"name": "id", "type": "string"},
            {"name": "total_order", "type": "long"},
            {"name": "data_collection_order", "type": "long"},
        ],
    }


def build_envelope_schema(
    database_label: str,
    source_schema: str,
    table: str,
    columns: Sequence[ColumnInfo],
    key_columns: Sequence[str],
) -> dict[str, Any]:
    """The change-envelope Avro schema (a JSON-able dict) of one captured table.

    Field order follows ``columns`` (callers pass them in ``ordinal_position`` order),
    so the output is deterministic. Generated columns are nullable because pgoutput
    does not publish them before PostgreSQL 18.
    """
    for name in (database_label, table, *(column.name for column in columns)):
        if not _AVRO_NAME.match(name):
            raise SchemaGenerationError(f"{table}: {name!r} is not a valid Avro name")
    if not columns:
        raise SchemaGenerationError(f"{source_schema}.{table}: no columns")
    names = {column.name for column in columns}
    missing = [key for key in key_columns if key not in names]
    if missing:
        raise SchemaGenerationError(f"{table}: key columns {missing} are not columns")
    topic = f"cdc.{database_label}.{table}"
    fields: list[dict[str, Any]] = []
    for column in columns:
        wire = _wire_type(column, table)
        if column.nullable or column.is_generated:
            fields.append({"name": column.name, "type": ["null", wire], "default": None})
        else:
            fields.append({"name": column.name, "type": wire})
    row = {"type": "record", "name": "Value", "namespace": topic, "fields": fields}
    return {
        "type": "record",
        "name": "Envelope",
        "namespace": topic,
        "doc": (
            f"Debezium change envelope of {source_schema}.{table} as it arrives on {topic} "
            "(JsonConverter, schemas.enable=false). Generated by services.shared.cdc_schemas."
        ),
        "ambidex.topic": topic,
        "ambidex.database": database_label,
        "ambidex.source_schema": source_schema,
        "ambidex.table": table,
        "ambidex.key": list(key_columns),
        "fields": [
            {"name": "before", "type": ["null", row], "default": None},
            {"name": "after", "type": ["null", f"{topic}.Value"], "default": None},
            {"name": "source", "type": _source_schema()},
            {
                "name": "transaction",
                "type": ["null", _transaction_block_schema()],
                "default": None,
            },
            {
                "name": "op",
                "type": {
                    "type": "enum",
                    "name": "Operation",
                    "namespace": topic,
                    "symbols": ["c", "u", "d", "r", "t"],
                },
            },
            {"name": "ts_ms", "type": ["null", "long"], "default": None},
            {"name": "ts_us", "type": ["null", "long"], "default": None},
            {"name": "ts_ns", "type": ["null", "long"], "default": None},
        ],
    }


def render_schema(schema: Mapping[str, Any]) -> str:
    """Deterministic text of a schema file."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


# --------------------------------------------------------------------------- generator

_COLUMNS_SQL = """
SELECT c.table_name, c.column_name, c.data_type, c.udt_schema, c.udt_name,
       c.is_nullable, c.numeric_precision, c.numeric_scale, c.is_generated
FROM information_schema.columns AS c
JOIN information_schema.tables AS t
  ON t.table_schema = c.table_schema AND t.table_name = c.table_name
WHERE c.table_schema = $1 AND t.table_type = 'BASE TABLE'
ORDER BY c.table_name, c.ordinal_position
"""

_KEYS_SQL = """
SELECT tc.table_name, kcu.column_name
FROM information_schema.table_constraints AS tc
JOIN information_schema.key_column_usage AS kcu
  ON kcu.constraint_schema = tc.constraint_schema
 AND kcu.constraint_name = tc.constraint_name
 AND kcu.table_name = tc.table_name
WHERE tc.table_schema = $1 AND tc.constraint_type = 'PRIMARY KEY'
ORDER BY tc.table_name, kcu.ordinal_position
"""

_ENUMS_SQL = """
SELECT n.nspname, t.typname
FROM pg_type AS t JOIN pg_namespace AS n ON n.oid = t.typnamespace
WHERE t.typtype = 'e'
"""


async def generate_envelope_schemas(
    dsn: str, database_label: str, source_schema: str, out_dir: Path
) -> list[Path]:
    """Write ``<out_dir>/<table>.avsc`` for every base table of ``source_schema``.

    Stale ``.avsc`` files in ``out_dir`` (tables that no longer exist) are removed so
    the directory mirrors the database. Returns the written paths, sorted.
    """
    import asyncpg  # imported here: nothing connects (or needs the driver) at import

    connection = await asyncpg.connect(dsn)
    try:
        column_rows = await connection.fetch(_COLUMNS_SQL, source_schema)
        key_rows = await connection.fetch(_KEYS_SQL, source_schema)
        enum_rows = await connection.fetch(_ENUMS_SQL)
    finally:
        await connection.close()

    enums = {(row["nspname"], row["typname"]) for row in enum_rows}
    tables: dict[str, list[ColumnInfo]] = {}
    for row in column_rows:
        tables.setdefault(row["table_name"], []).append(
            ColumnInfo(
                name=row["column_name"],
                data_type=row["data_type"],
                udt_name=row["udt_name"],
                nullable=row["is_nullable"] == "YES",
                numeric_precision=row["numeric_precision"],
                numeric_scale=row["numeric_scale"],
                is_generated=row["is_generated"] == "ALWAYS",
                is_enum=(row["udt_schema"], row["udt_name"]) in enums,
            )
        )
    keys: dict[str, list[str]] = {}
    for row in key_rows:
        keys.setdefault(row["table_name"], []).append(row["column_name"])
    if not tables:
        raise SchemaGenerationError(f"schema {source_schema!r} has no tables (or no access)")

    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for table in sorted(tables):
        if table not in keys:
            raise SchemaGenerationError(f"{source_schema}.{table} has no primary key")
        schema = build_envelope_schema(
            database_label, source_schema, table, tables[table], keys[table]
        )
        parse_schema(schema)  # never write a file the loader would reject
        path = out_dir / f"{table}.avsc"
        text = render_schema(schema)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        written.append(path)
    for stale in out_dir.glob("*.avsc"):
        if stale not in written:
            stale.unlink()
    return written


# --------------------------------------------------------------------------- loader


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    """A row column of a topic: its wire Avro type and Ambidex logical type."""

    name: str
    wire_type: str
    logical: str | None
    nullable: bool
    precision: int | None = None
    scale: int | None = None


@dataclass(frozen=True)
class TopicSchema:
    """Everything the decoder needs about one CDC topic."""

    topic: str
    database: str
    source_schema: str
    table: str
    key_columns: tuple[str, ...]
    columns: tuple[ColumnSpec, ...]
    parsed: Any = field(repr=False)
    raw: Mapping[str, Any] = field(repr=False)

    @property
    def data_collection(self) -> str:
        """Debezium's name of the table in transaction metadata (``schema.table``)."""
        return f"{self.source_schema}.{self.table}"

    @property
    def logical_types(self) -> dict[str, str]:
        return {c.name: c.logical for c in self.columns if c.logical is not None}

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any], origin: str = "<schema>") -> TopicSchema:
        try:
            topic = raw["ambidex.topic"]
            database = raw["ambidex.database"]
            source_schema = raw["ambidex.source_schema"]
            table = raw["ambidex.table"]
            key_columns = tuple(raw["ambidex.key"])
            fields = {f["name"]: f for f in raw["fields"]}
            row_type = fields["before"]["type"][1]
            columns = tuple(_column_spec(f) for f in row_type["fields"])
        except (KeyError, IndexError, TypeError) as error:
            raise EnvelopeSchemaError(
                f"{origin}: not a change-envelope schema ({error!r})"
            ) from error
        if topic != f"cdc.{database}.{table}":
            raise EnvelopeSchemaError(f"{origin}: topic {topic!r} != cdc.{database}.{table}")
        try:
            parsed = parse_schema(dict(raw))
        except Exception as error:  # fastavro raises several types for bad schemas
            raise EnvelopeSchemaError(f"{origin}: invalid Avro schema: {error}") from error
        return cls(topic, database, source_schema, table, key_columns, columns, parsed, raw)


def _column_spec(avro_field: Mapping[str, Any]) -> ColumnSpec:
    avro_type = avro_field["type"]
    nullable = isinstance(avro_type, list)
    if nullable:
        non_null = [branch for branch in avro_type if branch != "null"]
        if len(non_null) != 1:
            raise EnvelopeSchemaError(f"column {avro_field['name']}: unsupported union")
        avro_type = non_null[0]
    if isinstance(avro_type, str):
        return ColumnSpec(avro_field["name"], avro_type, None, nullable)
    logical = avro_type.get(LOGICAL_ATTR)
    if logical is not None and logical not in LOGICAL_TYPES:
        raise EnvelopeSchemaError(f"column {avro_field['name']}: unknown logical {logical!r}")
    return ColumnSpec(
        avro_field["name"],
        avro_type["type"],
        logical,
        nullable,
        avro_type.get("precision"),
        avro_type.get("scale"),
    )


class EnvelopeSchemas(Mapping[str, TopicSchema]):
    """Registry of change-envelope schemas by topic (``cdc.<db>.<table>``)."""

    def __init__(self, schemas: Iterable[TopicSchema] = ()) -> None:
        self._by_topic: dict[str, TopicSchema] = {}
        for schema in schemas:
            if schema.topic in self._by_topic:
                raise EnvelopeSchemaError(f"two schemas for topic {schema.topic}")
            self._by_topic[schema.topic] = schema

    @classmethod
    def from_raw(cls, raws: Iterable[Mapping[str, Any]]) -> EnvelopeSchemas:
        return cls(TopicSchema.from_raw(raw) for raw in raws)

    def __getitem__(self, topic: str) -> TopicSchema:
        return self._by_topic[topic]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_topic)

    def __len__(self) -> int:
        return len(self._by_topic)

    def logical_types(self, topic: str) -> dict[str, str]:
        return self._by_topic[topic].logical_types

    def data_collections(self, database: str | None = None) -> frozenset[str]:
        """``schema.table`` names, as Debezium's transaction metadata spells them."""
        return frozenset(
            s.data_collection
            for s in self._by_topic.values()
            if database is None or s.database == database
        )


def load_envelope_schemas(root: Path = DEFAULT_ROOT) -> EnvelopeSchemas:
    """Parse every ``<root>/<db>/<table>.avsc``; the path must agree with the content."""
    schemas: list[TopicSchema] = []
    for path in sorted(root.glob("*/*.avsc")):
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise EnvelopeSchemaError(f"{path}: unreadable ({error})") from error
        if not isinstance(raw, dict):
            raise EnvelopeSchemaError(f"{path}: not a JSON object")
        schema = TopicSchema.from_raw(raw, origin=str(path))
        expected = f"cdc.{path.parent.name}.{path.stem}"
        if schema.topic != expected:
            raise EnvelopeSchemaError(
                f"{path}: declares topic {schema.topic}, its path says {expected}"
            )
        schemas.append(schema)
    return EnvelopeSchemas(schemas)


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.shared.cdc_schemas",
        description="Generate change-envelope Avro schemas from a live PostgreSQL schema.",
    )
    parser.add_argument("--dsn", required=True, help="postgresql://user@host:port/db")
    parser.add_argument("--db", required=True, help="database label, e.g. crm")
    parser.add_argument("--schema", required=True, help="PostgreSQL schema to describe")
    parser.add_argument("--out", required=True, type=Path, help="e.g. schemas/cdc/crm")
    args = parser.parse_args(argv)
    try:
        paths = asyncio.run(generate_envelope_schemas(args.dsn, args.db, args.schema, args.out))
    except SchemaGenerationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

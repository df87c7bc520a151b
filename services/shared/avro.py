"""The wire format of every event Ambidex publishes, and its schema catalogue.

Every value on a published topic (and on the dead-letter topics) is one Avro datum in
Avro's **single-object encoding** (Avro specification, "Single object encoding")::

    0xC3 0x01 | 8-byte little-endian CRC-64-AVRO fingerprint | Avro binary body
                 of the writer schema's Parsing Canonical Form

so any Avro library (Java ``BinaryMessageDecoder``, fastavro, the Rust ``apache-avro``
crate ...) decodes it from the schema files alone, without a registry service. Two
Kafka headers repeat the schema for humans and tools: ``ambidex.schema`` (the record's
full name) and ``ambidex.schema.version`` (``N`` of ``vN.avsc``); decoders never need
them, the fingerprint is authoritative.

Schemas live in files (see :class:`SchemaCatalogue`):

* ``schemas/published/<name>/v<N>.avsc`` -- what services publish, versioned;
* ``schemas/ambidex/<name>.avsc`` (version 1) or ``schemas/ambidex/<name>/v<N>.avsc`` --
  platform records such as dead letters.

Each file is self-contained (no references to types defined in other files). All
versions of one ``<name>`` share one Avro full name, and each ``v<N+1>`` must be both
backward and forward compatible with ``v<N>`` (:func:`check_compatible`).

Money in published schemas is ``{"type": "bytes", "logicalType": "decimal",
"precision": 18, "scale": 2}`` (or scale 4) beside a ``currency`` string field; it is
read and written as :class:`decimal.Decimal`. :meth:`AvroCodec.encode` validates every
record before writing it, because fastavro on its own silently truncates a float given
for an ``int``, writes an ``int`` out of 32-bit range, ignores unknown fields and
accepts a decimal beyond the declared precision; a ``float`` for a decimal is refused
with a reason, never converted.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import random
import re
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint as _fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form
from fastavro.utils import generate_many

from services.shared.errors import MalformedEvent, SchemaViolation

__all__ = [
    "DEFAULT_SCHEMA_ROOT",
    "HEADER_SCHEMA",
    "HEADER_SCHEMA_VERSION",
    "SINGLE_OBJECT_MARKER",
    "AvroCodec",
    "DecodedEvent",
    "SchemaCatalogue",
    "SchemaEntry",
    "check_compatible",
    "fingerprint",
]

SINGLE_OBJECT_MARKER = b"\xc3\x01"
"""The two marker bytes that open every single-object encoded datum."""
_PREFIX_LEN = 10  # marker (2) + fingerprint (8)

HEADER_SCHEMA = "ambidex.schema"
"""Kafka header: full name of the value's schema (informative; the fingerprint decides)."""
HEADER_SCHEMA_VERSION = "ambidex.schema.version"
"""Kafka header: version ``N`` of the value's schema, as decimal text."""

DEFAULT_SCHEMA_ROOT = Path(__file__).resolve().parents[2] / "schemas"
"""The project's ``schemas/`` directory (independent of the working directory)."""

Record = dict[str, Any]


def fingerprint(schema: Any) -> bytes:
    """CRC-64-AVRO (Rabin) fingerprint of ``schema``'s Parsing Canonical Form.

    Returned as the 8 little-endian bytes that follow the marker in single-object
    encoding. ``schema`` is a JSON-like schema (str, list or dict).
    """
    canonical = to_parsing_canonical_form(schema)
    return bytes.fromhex(_fastavro_fingerprint(canonical, "CRC-64-AVRO"))


# --------------------------------------------------------------------------- catalogue


@dataclass(frozen=True, eq=False, slots=True)
class SchemaEntry:
    """One version of one schema, parsed once and kept for the process's life."""

    key: str
    """The catalogue name: ``<name>`` of ``published/<name>/`` or the ``ambidex/`` stem."""
    name: str
    """The Avro full name of the record (what the ``ambidex.schema`` header carries)."""
    version: int
    schema: Mapping[str, Any] = field(repr=False)
    """The schema as written in the file (JSON)."""
    parsed: Any = field(repr=False)
    """fastavro's parsed form (what its reader and writer take)."""
    canonical: str = field(repr=False)
    """Parsing Canonical Form."""
    fingerprint: bytes
    """CRC-64-AVRO of :attr:`canonical`, 8 bytes little-endian."""
    prefix: bytes = field(repr=False)
    """Marker plus fingerprint: the first 10 bytes of every datum in this schema."""
    path: Path | None = field(repr=False)
    validate: Callable[[Any], None] = field(repr=False)
    """Raises :class:`SchemaViolation` when a record does not conform (encode guard)."""
    headers: tuple[tuple[str, bytes], ...] = field(repr=False)
    """The two informative Kafka headers for a value in this schema."""

    @classmethod
    def build(
        cls, key: str, version: int, schema: Mapping[str, Any], path: Path | None = None
    ) -> SchemaEntry:
        where = str(path) if path is not None else f"{key} v{version}"
        if not isinstance(schema, Mapping) or schema.get("type") != "record":
            raise ValueError(f"{where}: a catalogue schema must be a JSON object of type record")
        try:
            parsed: Any = parse_schema(dict(schema))
            canonical = to_parsing_canonical_form(dict(schema))
        except Exception as exc:  # fastavro raises several types for bad schemas
            raise ValueError(f"{where}: not a valid Avro schema: {exc}") from exc
        fp = fingerprint(dict(schema))
        name = parsed["name"]
        headers = (
            (HEADER_SCHEMA, name.encode()),
            (HEADER_SCHEMA_VERSION, str(version).encode()),
        )
        return cls(
            key=key,
            name=name,
            version=version,
            schema=schema,
            parsed=parsed,
            canonical=canonical,
            fingerprint=fp,
            prefix=SINGLE_OBJECT_MARKER + fp,
            path=path,
            validate=_compile_validator(parsed),
            headers=headers,
        )


_VERSION_FILE = re.compile(r"^v([1-9][0-9]*)\.avsc$")


class SchemaCatalogue:
    """Every schema Ambidex reads or writes, by name, version and fingerprint.

    Names resolve both as the catalogue key (``availability``, ``dead_letter``) and as
    the Avro full name (``ambidex.platform.DeadLetter``).
    """

    def __init__(self, entries: Sequence[SchemaEntry]) -> None:
        self._by_key: dict[str, dict[int, SchemaEntry]] = {}
        self._alias: dict[str, str] = {}
        self._by_fp: dict[bytes, SchemaEntry] = {}
        for entry in entries:
            versions = self._by_key.setdefault(entry.key, {})
            if entry.version in versions:
                raise ValueError(f"{entry.key}: version {entry.version} defined twice")
            other = next(iter(versions.values()), None)
            if other is not None and other.name != entry.name:
                raise ValueError(
                    f"{entry.key}: v{entry.version} is named {entry.name} but "
                    f"v{other.version} is {other.name}; all versions must share one full name"
                )
            versions[entry.version] = entry
            owner = self._alias.get(entry.name)
            if owner is not None and owner != entry.key:
                raise ValueError(f"{entry.name} is defined under both {owner} and {entry.key}")
            self._alias[entry.name] = entry.key
            clash = self._by_fp.get(entry.fingerprint)
            if clash is not None:
                raise ValueError(
                    f"{entry.key} v{entry.version} has the same canonical form as "
                    f"{clash.key} v{clash.version}; a new version must change the schema"
                )
            self._by_fp[entry.fingerprint] = entry
        for key in self._by_key:
            if key in self._alias and self._alias[key] != key:
                raise ValueError(f"catalogue key {key} is also the full name of another schema")
        self._latest = {k: v[max(v)] for k, v in self._by_key.items()}

    @classmethod
    def load(cls, root: Path = DEFAULT_SCHEMA_ROOT) -> SchemaCatalogue:
        """Read ``root/published/<name>/v<N>.avsc`` and ``root/ambidex/*.avsc``.

        A missing ``published`` or ``ambidex`` directory is simply empty. Raises
        :class:`ValueError` naming the file for anything malformed.
        """
        entries = [
            SchemaEntry.build(key, version, _read_json(path), path)
            for key, version, path in _schema_files(root)
        ]
        return cls(entries)

    @classmethod
    def from_schemas(
        cls, schemas: Mapping[str, Mapping[int, Mapping[str, Any]]]
    ) -> SchemaCatalogue:
        """Build a catalogue from in-memory schemas: ``{key: {version: schema}}``."""
        return cls(
            [
                SchemaEntry.build(key, version, schema)
                for key, versions in schemas.items()
                for version, schema in versions.items()
            ]
        )

    def _key(self, name: str) -> str:
        if name in self._by_key:
            return name
        key = self._alias.get(name)
        if key is None:
            raise KeyError(f"no schema named {name!r} in the catalogue")
        return key

    def get(self, name: str, version: int | None = None) -> SchemaEntry:
        """The entry for ``name`` (key or full name); the latest version by default."""
        key = self._key(name)
        if version is None:
            return self._latest[key]
        try:
            return self._by_key[key][version]
        except KeyError:
            raise KeyError(f"schema {name!r} has no version {version}") from None

    def latest(self, name: str) -> SchemaEntry:
        return self._latest[self._key(name)]

    def versions(self, name: str) -> list[SchemaEntry]:
        """All versions of ``name``, oldest first."""
        versions = self._by_key[self._key(name)]
        return [versions[v] for v in sorted(versions)]

    def by_fingerprint(self, fp: bytes) -> SchemaEntry | None:
        return self._by_fp.get(bytes(fp))

    def names(self) -> list[str]:
        """Catalogue keys (``published/<name>`` folders and ``ambidex/`` stems), sorted."""
        return sorted(self._by_key)

    def __iter__(self) -> Iterator[SchemaEntry]:
        for key in self.names():
            yield from self.versions(key)

    def __len__(self) -> int:
        return len(self._by_fp)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON: {exc}") from exc


def _schema_files(root: Path) -> Iterator[tuple[str, int, Path]]:
    """(key, version, path) of every catalogue schema file under ``root``."""
    published = root / "published"
    if published.is_dir():
        for folder in sorted(p for p in published.iterdir() if p.is_dir()):
            yield from _versioned(folder)
    platform = root / "ambidex"
    if platform.is_dir():
        for path in sorted(platform.iterdir()):
            if path.is_dir():
                yield from _versioned(path)
            elif path.suffix == ".avsc":
                yield path.stem, 1, path


def _versioned(folder: Path) -> Iterator[tuple[str, int, Path]]:
    for path in sorted(folder.glob("*.avsc")):
        match = _VERSION_FILE.match(path.name)
        if match is None:
            raise ValueError(f"{path}: versioned schema files are named v<N>.avsc")
        yield folder.name, int(match.group(1)), path


# --------------------------------------------------------------------------- codec


@dataclass(frozen=True, slots=True)
class DecodedEvent:
    """A decoded datum: the record is shaped by the reader schema (latest version)."""

    schema_name: str
    """Avro full name of the writer schema."""
    version: int
    """Version the datum was written with (the writer schema's)."""
    record: Record


class AvroCodec:
    """Encodes and decodes Ambidex events (single-object encoding).

    Thread-safe and cheap to share: all schemas are parsed once by the catalogue.
    """

    def __init__(self, catalogue: SchemaCatalogue) -> None:
        self.catalogue = catalogue

    def encode(
        self, schema_name: str, record: Mapping[str, Any], version: int | None = None
    ) -> bytes:
        """Validate ``record`` against the schema and return its single-object encoding.

        Raises :class:`SchemaViolation` when the record does not conform (with the
        field path and the reason), :class:`KeyError` for an unknown schema name.
        """
        entry = self.catalogue.get(schema_name, version)
        entry.validate(record)
        buf = io.BytesIO()
        buf.write(entry.prefix)
        try:
            schemaless_writer(buf, entry.parsed, record)
        except Exception as exc:  # the validator should have caught it; keep the reason
            raise SchemaViolation(f"{entry.name} v{entry.version}: cannot encode: {exc}") from exc
        return buf.getvalue()

    def headers(self, schema_name: str, version: int | None = None) -> list[tuple[str, bytes]]:
        """The informative Kafka headers (``ambidex.schema``, ``ambidex.schema.version``)."""
        return list(self.catalogue.get(schema_name, version).headers)

    def decode(self, data: bytes, reader_schema_name: str | None = None) -> DecodedEvent:
        """Decode a single-object encoded datum.

        The writer schema is found by fingerprint; the record is resolved to the latest
        version of ``reader_schema_name`` (default: the writer's own name), so a
        consumer always sees the newest shape. Raises :class:`MalformedEvent` for bytes
        that are not single-object Avro (bad marker, truncated, trailing bytes) and
        :class:`SchemaViolation` for an unknown fingerprint or a resolution failure.
        """
        if len(data) < _PREFIX_LEN:
            raise MalformedEvent(
                f"truncated: {len(data)} bytes, a single-object encoded Avro datum has at "
                f"least {_PREFIX_LEN} (2 marker + 8 fingerprint)"
            )
        if data[:2] != SINGLE_OBJECT_MARKER:
            raise MalformedEvent(
                f"bad marker {bytes(data[:2]).hex()}: not Avro single-object encoding "
                f"(expected c301)"
            )
        fp = bytes(data[2:_PREFIX_LEN])
        writer = self.catalogue.by_fingerprint(fp)
        if writer is None:
            raise SchemaViolation(
                f"unknown schema fingerprint {fp.hex()} (CRC-64-AVRO, little-endian): "
                f"written with a schema this catalogue does not have"
            )
        if reader_schema_name is None:
            reader = self.catalogue.latest(writer.key)
        else:
            try:
                reader = self.catalogue.latest(reader_schema_name)
            except KeyError as exc:
                raise SchemaViolation(f"unknown reader schema {reader_schema_name!r}") from exc
        buf = io.BytesIO(data)
        buf.seek(_PREFIX_LEN)
        record: Any
        try:
            if reader is writer:
                record = schemaless_reader(buf, writer.parsed, None)
            else:
                record = schemaless_reader(buf, writer.parsed, reader.parsed)
        except (EOFError, StopIteration, IndexError, OverflowError, MemoryError) as exc:
            raise MalformedEvent(
                f"{writer.name} v{writer.version}: truncated or corrupt Avro body: {exc!r}"
            ) from exc
        except UnicodeDecodeError as exc:
            raise MalformedEvent(f"{writer.name} v{writer.version}: corrupt string: {exc}") from exc
        except Exception as exc:
            raise SchemaViolation(
                f"{writer.name} v{writer.version} cannot be read as {reader.name} "
                f"v{reader.version}: {exc}"
            ) from exc
        if buf.tell() != len(data):
            raise MalformedEvent(
                f"{writer.name} v{writer.version}: {len(data) - buf.tell()} trailing bytes "
                f"after the Avro body"
            )
        return DecodedEvent(writer.name, writer.version, record)


# --------------------------------------------------------------------------- validation

_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1

Check = Callable[[Any, str], None]


class _Invalid(Exception):
    pass


def _fail(path: str, message: str) -> None:
    raise _Invalid(f"{path or '<record>'}: {message}")


def _compile_validator(parsed: Any) -> Callable[[Any], None]:
    """Turn a parsed schema into a fast checker raising :class:`SchemaViolation`."""
    named: dict[str, Check] = {}
    check = _compile(parsed, named)
    name = parsed["name"]

    def validate(record: Any) -> None:
        try:
            check(record, "")
        except _Invalid as exc:
            raise SchemaViolation(f"{name}: {exc}") from None

    return validate


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _compile(schema: Any, named: dict[str, Check]) -> Check:
    if isinstance(schema, str):
        prim = _PRIMITIVE_CHECKS.get(schema)
        if prim is not None:
            return prim
        ref = schema

        def check_ref(value: Any, path: str) -> None:
            named[ref](value, path)

        return check_ref
    if isinstance(schema, list):
        return _compile_union(schema, named)
    kind = schema["type"]
    logical = schema.get("logicalType")
    if logical == "decimal" and kind in ("bytes", "fixed"):
        return _decimal_check(schema)
    if logical is not None and kind in ("int", "long", "string"):
        special = _logical_check(kind, logical)
        if special is not None:
            return special
    if kind == "record" or kind == "error":
        return _compile_record(schema, named)
    if kind == "enum":
        symbols = frozenset(schema["symbols"])

        def check_enum(value: Any, path: str) -> None:
            if not isinstance(value, str) or value not in symbols:
                _fail(path, f"{_describe(value)} is not a symbol of {schema['name']}")

        named[schema["name"]] = check_enum
        return check_enum
    if kind == "fixed":
        size = schema["size"]

        def check_fixed(value: Any, path: str) -> None:
            if not isinstance(value, bytes | bytearray) or len(value) != size:
                _fail(path, f"{_describe(value)} is not {size} bytes (fixed {schema['name']})")

        named[schema["name"]] = check_fixed
        return check_fixed
    if kind == "array":
        items = _compile(schema["items"], named)

        def check_array(value: Any, path: str) -> None:
            if not isinstance(value, list | tuple):
                _fail(path, f"{_describe(value)} is not an array")
            for i, item in enumerate(value):
                items(item, f"{path}[{i}]")

        return check_array
    if kind == "map":
        values = _compile(schema["values"], named)

        def check_map(value: Any, path: str) -> None:
            if not isinstance(value, Mapping):
                _fail(path, f"{_describe(value)} is not a map")
            for k, v in value.items():
                if not isinstance(k, str):
                    _fail(path, f"map key {_describe(k)} is not a string")
                values(v, f"{path}[{k!r}]")

        return check_map
    # {"type": "int"} and friends, or a logical type we do not special-case
    return _compile(kind, named)


def _compile_record(schema: Mapping[str, Any], named: dict[str, Check]) -> Check:
    name = schema["name"]
    fields: list[tuple[str, bool, Check]] = []

    def check_record(value: Any, path: str) -> None:
        if not isinstance(value, Mapping):
            _fail(path, f"{_describe(value)} is not a record ({name})")
        if not names.issuperset(value):
            unknown = sorted(str(k) for k in value if k not in names)
            _fail(path, f"unknown field(s) {', '.join(unknown)} for {name}")
        prefix = f"{path}." if path else ""
        for fname, has_default, check in fields:
            if fname in value:
                check(value[fname], prefix + fname)
            elif not has_default:
                _fail(prefix + fname, "missing (the field has no default)")

    named[name] = check_record  # before the fields: records may be recursive
    for f in schema["fields"]:
        fields.append((f["name"], "default" in f, _compile(f["type"], named)))
    names = frozenset(f[0] for f in fields)
    return check_record


def _compile_union(branches: list[Any], named: dict[str, Check]) -> Check:
    checks = [_compile(b, named) for b in branches]
    nullable = "null" in branches
    others = [c for b, c in zip(branches, checks, strict=True) if b != "null"]
    label = "[" + ", ".join(_type_label(b) for b in branches) + "]"

    def check_union(value: Any, path: str) -> None:
        if value is None:
            if nullable:
                return
            _fail(path, f"null is not allowed by union {label}")
        reasons = []
        for check in others:
            try:
                check(value, path)
                return
            except _Invalid as exc:
                reasons.append(str(exc))
        if len(reasons) == 1:
            raise _Invalid(reasons[0])
        _fail(path, f"{_describe(value)} matches no branch of union {label}")

    return check_union


def _type_label(schema: Any) -> str:
    if isinstance(schema, str):
        return schema
    if isinstance(schema, dict):
        return str(schema.get("name") or schema.get("logicalType") or schema.get("type"))
    return "union"


def _check_null(value: Any, path: str) -> None:
    if value is not None:
        _fail(path, f"{_describe(value)} is not null")


def _check_boolean(value: Any, path: str) -> None:
    if not isinstance(value, bool):
        _fail(path, f"{_describe(value)} is not a boolean")


def _check_int(value: Any, path: str) -> None:
    if type(value) is not int:
        if isinstance(value, float):
            _fail(path, f"{_describe(value)} is a float; an Avro int takes an int only")
        _fail(path, f"{_describe(value)} is not an int")
    if not _INT_MIN <= value <= _INT_MAX:
        _fail(path, f"{value} is outside the 32-bit range of an Avro int")


def _check_long(value: Any, path: str) -> None:
    if type(value) is not int:
        if isinstance(value, float):
            _fail(path, f"{_describe(value)} is a float; an Avro long takes an int only")
        _fail(path, f"{_describe(value)} is not an int")
    if not _LONG_MIN <= value <= _LONG_MAX:
        _fail(path, f"{value} is outside the 64-bit range of an Avro long")


def _check_floating(value: Any, path: str) -> None:
    if isinstance(value, bool) or not isinstance(value, float | int):
        _fail(path, f"{_describe(value)} is not a number (float/double)")


def _check_string(value: Any, path: str) -> None:
    if not isinstance(value, str):
        _fail(path, f"{_describe(value)} is not a string")


def _check_bytes(value: Any, path: str) -> None:
    if not isinstance(value, bytes | bytearray):
        _fail(path, f"{_describe(value)} is not bytes")


_PRIMITIVE_CHECKS: dict[str, Check] = {
    "null": _check_null,
    "boolean": _check_boolean,
    "int": _check_int,
    "long": _check_long,
    "float": _check_floating,
    "double": _check_floating,
    "string": _check_string,
    "bytes": _check_bytes,
}


def _decimal_check(schema: Mapping[str, Any]) -> Check:
    precision = int(schema["precision"])
    scale = int(schema.get("scale", 0))
    max_adjusted = precision - scale  # abs(value) < 10 ** (precision - scale)

    def check_decimal(value: Any, path: str) -> None:
        if type(value) is not Decimal:
            if isinstance(value, float):
                _fail(
                    path,
                    f"{_describe(value)} is a float; decimal({precision},{scale}) takes "
                    f"decimal.Decimal only (money is exact, never a float)",
                )
            _fail(
                path, f"{_describe(value)} is not a decimal.Decimal (decimal({precision},{scale}))"
            )
        if not value.is_finite():
            _fail(path, f"{value} is not a finite decimal")
        exponent = value.as_tuple().exponent
        if isinstance(exponent, int) and -exponent > scale:
            _fail(
                path,
                f"{value} has more than {scale} decimal places (decimal({precision},{scale})); "
                f"quantize it explicitly",
            )
        if value and value.adjusted() >= max_adjusted:
            _fail(path, f"{value} does not fit decimal({precision},{scale})")

    return check_decimal


def _logical_check(kind: str, logical: str) -> Check | None:
    base = _PRIMITIVE_CHECKS[kind]
    if logical in ("timestamp-millis", "timestamp-micros"):

        def check_timestamp(value: Any, path: str) -> None:
            if isinstance(value, _dt.datetime):
                if value.tzinfo is None:
                    _fail(path, f"naive datetime {value}; {logical} needs a timezone-aware one")
                return
            base(value, path)

        return check_timestamp
    if logical in ("local-timestamp-millis", "local-timestamp-micros"):
        return _either(_dt.datetime, base, logical)
    if logical == "date":
        return _either(_dt.date, base, logical)
    if logical in ("time-millis", "time-micros"):
        return _either(_dt.time, base, logical)
    if logical == "uuid":
        return _either(uuid.UUID, base, logical)
    return None


def _either(cls: type, base: Check, logical: str) -> Check:
    def check(value: Any, path: str) -> None:
        if isinstance(value, cls):
            return
        try:
            base(value, path)
        except _Invalid:
            _fail(path, f"{_describe(value)} is neither a {cls.__name__} nor raw {logical}")

    return check


# --------------------------------------------------------------------------- compatibility

_PROMOTIONS: dict[str, frozenset[str]] = {
    # writer type -> reader types that can read it (Avro spec, "Schema Resolution")
    "int": frozenset({"long", "float", "double"}),
    "long": frozenset({"float", "double"}),
    "float": frozenset({"double"}),
    "string": frozenset({"bytes"}),
    # the spec also lets a string reader read bytes, but arbitrary bytes are not UTF-8:
    # treated as a break so that a bytes->string change is never "compatible" by luck
}
_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})


def check_compatible(
    old: Mapping[str, Any], new: Mapping[str, Any], *, samples: int = 50
) -> list[str]:
    """Problems that stop ``new`` being FULL (backward and forward) compatible with ``old``.

    Empty means: a reader with ``new`` reads data written with ``old`` (backward) and a
    reader with ``old`` reads data written with ``new`` (forward). Two checks:

    * structural, by the Avro schema resolution rules: same record names, every field
      a reader lacks in the writer has a default (so added fields need defaults and
      only fields with defaults may be removed), types equal or an allowed promotion
      (int->long->float->double, string->bytes) in the direction of reading, enum
      symbols known to the reader or a reader enum default, same fixed sizes, unions
      covering each other; and logical types (decimal precision/scale) unchanged;
    * empirical, if the structure is sound: ``samples`` random records generated for
      each schema are written with it and read back through fastavro's resolution
      with the other as reader.
    """
    problems: list[str] = []
    try:
        old_parsed: Any = parse_schema(dict(old))
        new_parsed: Any = parse_schema(dict(new))
    except Exception as exc:
        return [f"schema does not parse: {exc}"]
    old_named: dict[str, Any] = {}
    new_named: dict[str, Any] = {}
    _collect_named(old_parsed, old_named)
    _collect_named(new_parsed, new_named)
    for label, reader, writer, rn, wn in (
        ("backward (new reads old)", new_parsed, old_parsed, new_named, old_named),
        ("forward (old reads new)", old_parsed, new_parsed, old_named, new_named),
    ):
        for problem in _can_read(reader, writer, rn, wn, "", set()):
            problems.append(f"{label}: {problem}")
    if problems or samples <= 0:
        return problems
    for label, writer, reader in (
        ("backward (new reads old)", old_parsed, new_parsed),
        ("forward (old reads new)", new_parsed, old_parsed),
    ):
        failure = _sample_round_trip(writer, reader, samples)
        if failure is not None:
            problems.append(f"{label}: {failure}")
    return problems


def _sample_round_trip(writer: Any, reader: Any, samples: int) -> str | None:
    state = random.getstate()
    random.seed(0x0A3B1DE)  # reproducible samples; restore the caller's generator after
    try:
        records = list(generate_many(writer, samples))
    finally:
        random.setstate(state)
    for i, record in enumerate(records):
        buf = io.BytesIO()
        try:
            schemaless_writer(buf, writer, record)
            buf.seek(0)
            schemaless_reader(buf, writer, reader)
        except Exception as exc:
            return f"sample record {i} fails schema resolution: {exc}"
    return None


def _collect_named(schema: Any, named: dict[str, Any]) -> None:
    if isinstance(schema, list):
        for branch in schema:
            _collect_named(branch, named)
    elif isinstance(schema, dict):
        kind = schema.get("type")
        if kind in ("record", "error", "enum", "fixed"):
            named[schema["name"]] = schema
        if kind in ("record", "error"):
            for f in schema["fields"]:
                _collect_named(f["type"], named)
        elif kind == "array":
            _collect_named(schema["items"], named)
        elif kind == "map":
            _collect_named(schema["values"], named)


def _resolve(schema: Any, named: Mapping[str, Any]) -> Any:
    if isinstance(schema, str) and schema not in _PRIMITIVES:
        return named[schema]
    if isinstance(schema, dict) and schema.get("type") in _PRIMITIVES and len(schema) == 1:
        return schema["type"]
    return schema


def _kind(schema: Any) -> str:
    if isinstance(schema, str):
        return schema
    if isinstance(schema, list):
        return "union"
    return str(schema["type"])


def _logical(schema: Any) -> tuple[Any, ...] | None:
    if not isinstance(schema, dict) or "logicalType" not in schema:
        return None
    lt = schema["logicalType"]
    if lt == "decimal":
        return (lt, schema.get("precision"), schema.get("scale", 0))
    return (lt,)


def _can_read(
    reader: Any,
    writer: Any,
    rnamed: Mapping[str, Any],
    wnamed: Mapping[str, Any],
    path: str,
    seen: set[tuple[str, str]],
) -> list[str]:
    """Why a reader with ``reader`` cannot read data written with ``writer`` (if so)."""
    reader = _resolve(reader, rnamed)
    writer = _resolve(writer, wnamed)
    where = path or "<root>"
    rk, wk = _kind(reader), _kind(writer)

    if wk == "union":
        problems: list[str] = []
        for branch in writer:
            problems.extend(_can_read(reader, branch, rnamed, wnamed, path, seen))
        return problems
    if rk == "union":
        for branch in reader:
            if not _can_read(branch, writer, rnamed, wnamed, path, seen):
                return []
        return [f"{where}: writer type {_type_label(writer)} matches no branch of reader union"]

    if rk != wk and wk not in _PRIMITIVES:
        return [f"{where}: written as {wk}, cannot be read as {rk}"]
    if rk != wk:
        if rk in _PROMOTIONS.get(wk, frozenset()):
            return _logical_problems(reader, writer, where)
        return [f"{where}: written as {wk}, cannot be read as {rk} (not an Avro promotion)"]
    if wk in _PRIMITIVES:
        return _logical_problems(reader, writer, where)

    if wk in ("record", "error", "enum", "fixed"):
        rname, wname = reader["name"], writer["name"]
        aliases = {_alias_name(a, rname) for a in reader.get("aliases", [])}
        if rname != wname and wname not in aliases:
            return [f"{where}: named type {wname} renamed to {rname} without an alias"]
    if wk == "fixed":
        if reader["size"] != writer["size"]:
            return [f"{where}: fixed size changed from {writer['size']} to {reader['size']}"]
        return _logical_problems(reader, writer, where)
    if wk == "enum":
        missing = [s for s in writer["symbols"] if s not in reader["symbols"]]
        if missing and "default" not in reader:
            return [
                f"{where}: enum symbol(s) {', '.join(missing)} unknown to the reader, "
                f"which has no enum default"
            ]
        return []
    if wk == "array":
        return _can_read(reader["items"], writer["items"], rnamed, wnamed, f"{path}[]", seen)
    if wk == "map":
        return _can_read(reader["values"], writer["values"], rnamed, wnamed, f"{path}{{}}", seen)
    # records
    pair = (reader["name"], writer["name"])
    if pair in seen:  # recursive type already being checked
        return []
    seen = seen | {pair}
    problems = []
    wfields = {f["name"]: f for f in writer["fields"]}  # aliases count on the reader side only
    prefix = f"{path}." if path else ""
    for rf in reader["fields"]:
        names = [rf["name"], *rf.get("aliases", [])]
        wf = next((wfields[n] for n in names if n in wfields), None)
        if wf is None:
            if "default" not in rf:
                problems.append(
                    f"{prefix}{rf['name']}: the reader needs this field, the writer lacks it "
                    f"and it has no default (a field added, or removed, without a default)"
                )
            continue
        problems.extend(
            _can_read(rf["type"], wf["type"], rnamed, wnamed, prefix + rf["name"], seen)
        )
    return problems


def _alias_name(alias: str, full_name: str) -> str:
    if "." in alias or "." not in full_name:
        return alias
    return full_name.rsplit(".", 1)[0] + "." + alias


def _logical_problems(reader: Any, writer: Any, where: str) -> list[str]:
    rl, wl = _logical(reader), _logical(writer)
    if rl == wl:
        return []
    if rl and wl and rl[0] == wl[0] == "decimal":
        return [
            f"{where}: decimal changed from ({wl[1]},{wl[2]}) to ({rl[1]},{rl[2]}); "
            f"precision and scale are part of the value's meaning"
        ]
    return [
        f"{where}: logical type changed from {wl[0] if wl else 'none'} to {rl[0] if rl else 'none'}"
    ]

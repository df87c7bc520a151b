"""The wire formats of every event Ambidex publishes, and its schema catalogue.

Every value on a published topic (and on the dead-letter topics) is one Avro datum,
framed in one of two ways (``docs/wire-format.md``): the ecosystem's **registry wire
format** (``0x00``, 4-byte schema id, body: :mod:`services.shared.schema_registry`),
used when a schema registry is configured, or Avro's **single-object encoding** (Avro
specification, "Single object encoding")::

    0xC3 0x01 | 8-byte little-endian CRC-64-AVRO fingerprint | Avro binary body
                 of the writer schema's Parsing Canonical Form

which any Avro library (Java ``BinaryMessageDecoder``, fastavro, the Rust ``apache-avro``
crate ...) decodes from the schema files alone, without a registry service.
:meth:`AvroCodec.decode` reads both, dispatching on the first byte. Two
Kafka headers repeat the schema for humans and tools: ``ambidex.schema`` (the record's
full name) and ``ambidex.schema.version`` (``N`` of ``vN.avsc``); decoders never need
them, the fingerprint is authoritative.

Schemas live in files (see :class:`SchemaCatalogue`):

* ``schemas/published/<name>/v<N>.avsc`` -- what services publish, versioned;
* ``schemas/ambidex/<name>.avsc`` (version 1) or ``schemas/ambidex/<name>/v<N>.avsc`` --
  platform records such as dead letters.

Each file is self-contained (no references to types defined in other files). All
versions of one ``<name>`` share one Avro full name, and each ``v<N+1>`` must be both
backward and forward compatible with ``v<N>`` (:mod:`services.shared.avro_compat`).

Money in published schemas is ``{"type": "bytes", "logicalType": "decimal",
"precision": 18, "scale": 2}`` (or scale 4) beside a ``currency`` string field; it is
read and written as :class:`decimal.Decimal`. :meth:`AvroCodec.encode` validates every
record before writing it (:mod:`services.shared.avro_validation`): a ``float`` for a
decimal is refused with a reason, never converted.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint as _fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form

from services.shared.avro_validation import compile_validator
from services.shared.errors import MalformedEvent, SchemaViolation
from services.shared.schema_registry import (
    REGISTRY_MAGIC,
    REGISTRY_PREFIX_LEN,
    RegistryIds,
    RegistryRefused,
    registry_prefix,
    registry_schema_id,
)

__all__ = [
    "DEFAULT_SCHEMA_ROOT",
    "HEADER_SCHEMA",
    "HEADER_SCHEMA_VERSION",
    "SINGLE_OBJECT_MARKER",
    "AvroCodec",
    "DecodedEvent",
    "SchemaCatalogue",
    "SchemaEntry",
    "UnregisteredSchema",
    "WireFormat",
    "fingerprint",
]

WireFormat = Literal["registry", "single-object"]
"""``registry``: magic byte 0, 4-byte schema id, body; ``single-object``: Avro's."""

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
            validate=compile_validator(parsed),
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


class UnregisteredSchema(RuntimeError):
    """Registry format asked for a schema the registry has no id for in this process
    (it publishes to a topic deploy/topics.yaml does not say it produces)."""


class AvroCodec:
    """Encodes Ambidex events in one wire format and decodes both.

    ``wire="registry"`` frames with the ids in ``ids`` (filled at start-up by
    :func:`~services.shared.schema_registry.register_subjects`); ``single-object``
    (the default) needs no registry. Decoding a registry-framed value needs ``ids``
    (with a fetch for ids not seen yet). Thread-safe and cheap to share: all schemas
    are parsed once by the catalogue.
    """

    def __init__(
        self,
        catalogue: SchemaCatalogue,
        *,
        wire: WireFormat = "single-object",
        ids: RegistryIds | None = None,
    ) -> None:
        if wire == "registry" and ids is None:
            raise ValueError("the registry wire format needs registry ids")
        self.catalogue = catalogue
        self.wire = wire
        self.ids = ids

    def _prefix(self, entry: SchemaEntry) -> bytes:
        if self.wire == "single-object" or self.ids is None:
            return entry.prefix
        schema_id = self.ids.id_for(entry)
        if schema_id is None:
            raise UnregisteredSchema(
                f"{entry.name} v{entry.version} has no schema registry id in this process: "
                f"publish it only to topics deploy/topics.yaml names this service as the "
                f"producer of (their subjects are registered at start-up)"
            )
        return registry_prefix(schema_id)

    def encode(
        self, schema_name: str, record: Mapping[str, Any], version: int | None = None
    ) -> bytes:
        """Validate ``record`` against the schema and return it in this codec's format.

        Raises :class:`SchemaViolation` when the record does not conform (with the
        field path and the reason), :class:`KeyError` for an unknown schema name,
        :class:`UnregisteredSchema` (registry format) for a schema without an id.
        """
        entry = self.catalogue.get(schema_name, version)
        entry.validate(record)
        buf = io.BytesIO()
        buf.write(self._prefix(entry))
        try:
            schemaless_writer(buf, entry.parsed, record)
        except Exception as exc:  # the validator should have caught it; keep the reason
            raise SchemaViolation(f"{entry.name} v{entry.version}: cannot encode: {exc}") from exc
        return buf.getvalue()

    def headers(self, schema_name: str, version: int | None = None) -> list[tuple[str, bytes]]:
        """The informative Kafka headers (``ambidex.schema``, ``ambidex.schema.version``)."""
        return list(self.catalogue.get(schema_name, version).headers)

    def decode(self, data: bytes, reader_schema_name: str | None = None) -> DecodedEvent:
        """Decode a datum in either wire format (the first byte says which).

        The writer schema is found by fingerprint (single-object) or schema id
        (registry); the record is resolved to the latest version of
        ``reader_schema_name`` (default: the writer's own name), so a consumer always
        sees the newest shape. Raises :class:`MalformedEvent` for bytes that are
        neither format (bad marker, truncated, trailing bytes),
        :class:`SchemaViolation` for an unknown fingerprint or id or a resolution
        failure, and :class:`~services.shared.schema_registry.RegistryUnavailable`
        (transient) when an unseen id cannot be asked of the registry.
        """
        if data[:1] == bytes((REGISTRY_MAGIC,)):
            return self._decode_body(
                data, REGISTRY_PREFIX_LEN, self._registry_writer(data), reader_schema_name
            )
        if len(data) < _PREFIX_LEN:
            raise MalformedEvent(
                f"truncated: {len(data)} bytes, a single-object encoded Avro datum has at "
                f"least {_PREFIX_LEN} (2 marker + 8 fingerprint)"
            )
        if data[:2] != SINGLE_OBJECT_MARKER:
            raise MalformedEvent(
                f"bad marker {bytes(data[:2]).hex()}: neither Avro single-object encoding "
                f"(c301) nor the registry wire format (00)"
            )
        fp = bytes(data[2:_PREFIX_LEN])
        writer = self.catalogue.by_fingerprint(fp)
        if writer is None:
            raise SchemaViolation(
                f"unknown schema fingerprint {fp.hex()} (CRC-64-AVRO, little-endian): "
                f"written with a schema this catalogue does not have"
            )
        return self._decode_body(data, _PREFIX_LEN, writer, reader_schema_name)

    def _registry_writer(self, data: bytes) -> SchemaEntry:
        if len(data) < REGISTRY_PREFIX_LEN:
            raise MalformedEvent(
                f"truncated: {len(data)} bytes, a registry-framed Avro datum has at least "
                f"{REGISTRY_PREFIX_LEN} (magic 00 + 4-byte schema id)"
            )
        schema_id = registry_schema_id(data)
        if self.ids is None:
            raise SchemaViolation(
                f"registry wire format (schema id {schema_id}) but no schema registry is "
                f"configured (AMBIDEX_SCHEMA_REGISTRY_URL)"
            )
        try:
            writer = self.ids.entry_for(schema_id, self.catalogue)
        except RegistryRefused as error:
            raise SchemaViolation(f"schema id {schema_id}: {error}") from error
        if writer is None:
            raise SchemaViolation(
                f"schema id {schema_id}: the registry's schema is not in this catalogue "
                f"(written with a schema this checkout does not have)"
            )
        return writer

    def _decode_body(
        self, data: bytes, start: int, writer: SchemaEntry, reader_schema_name: str | None
    ) -> DecodedEvent:
        if reader_schema_name is None:
            reader = self.catalogue.latest(writer.key)
        else:
            try:
                reader = self.catalogue.latest(reader_schema_name)
            except KeyError as exc:
                raise SchemaViolation(f"unknown reader schema {reader_schema_name!r}") from exc
        buf = io.BytesIO(data)
        buf.seek(start)
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

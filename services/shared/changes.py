"""Decoding Debezium change events (JSON envelopes) into typed records.

A CDC topic record is either a change envelope (see :mod:`services.shared.cdc_schemas`)
or, after a delete, a tombstone (key, no value). :class:`ChangeDecoder` turns the raw
bytes into a :class:`ChangeEvent` (row values typed: ``Decimal``, ``date``,
``datetime``, ``int``, ``bool``, ``str``) or a :class:`Tombstone`, and turns anything
else into :class:`~services.shared.errors.MalformedEvent` (not readable JSON) or
:class:`~services.shared.errors.SchemaViolation` (readable, but not what the topic's
schema declares). No other exception type leaves :meth:`ChangeDecoder.decode`.

Hot path: per topic, the parsed schema and the list of column converters are built
once; each event is parsed once (orjson), checked once against the topic's schema (a
check generated from it, :mod:`services.shared.avro_check`; fastavro only explains what
that check refuses) and converted in one pass over the columns that need it.

Transaction identity: since Debezium 2.1 the PostgreSQL transaction id in the
``transaction`` block and on the transaction topic is ``"<xid>:<lsn>"`` where the LSN is
the one current when the record was written, so BEGIN, the data events and END of one
transaction carry *different* ids. :attr:`ChangeEvent.transaction_id` (and
:attr:`services.shared.transactions.TransactionMarker.transaction_id`) are therefore the
``<xid>`` part, which is what matches across them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any

import orjson
from fastavro._validate_common import ValidationError
from fastavro.validation import validate

from services.shared.avro_check import compile_check
from services.shared.cdc_schemas import (
    DATE,
    DECIMAL,
    TIME_MICROS,
    TIMESTAMP_MICROS,
    TIMESTAMPTZ,
    ColumnSpec,
    EnvelopeSchemas,
    TopicSchema,
)
from services.shared.errors import BadInput, MalformedEvent, SchemaViolation
from services.shared.position import SourcePosition


class ChangeOp(StrEnum):
    CREATE = "c"
    UPDATE = "u"
    DELETE = "d"
    READ = "r"  # snapshot read
    TRUNCATE = "t"


_OPS = {op.value: op for op in ChangeOp}  # a dict lookup: Enum's __call__ is slow


@dataclass(frozen=True, slots=True)
class RecordOrigin:
    """Where a record came from in Kafka (for dead letters and replay)."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """One decoded change of one source row.

    ``key`` is the typed primary key (empty for TRUNCATE). ``transaction_id`` is the
    PostgreSQL xid (as a string) when the event carries a Debezium transaction block,
    else ``None`` (snapshot reads). ``position`` orders changes of one source database:
    ``source.sequence`` = ``[last_commit_lsn, lsn]``; snapshot reads get
    ``commit_lsn == 0`` so any streamed change wins over them.
    """

    database: str
    schema: str
    table: str
    op: ChangeOp
    key: dict[str, Any]
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    position: SourcePosition
    transaction_id: str | None
    total_order: int | None
    data_collection_order: int | None
    commit_time: datetime
    is_snapshot: bool
    origin: RecordOrigin

    @property
    def is_delete(self) -> bool:
        return self.op is ChangeOp.DELETE

    @property
    def row(self) -> dict[str, Any] | None:
        """The row's state this change reports: ``before`` for deletes, else ``after``."""
        return self.before if self.op is ChangeOp.DELETE else self.after

    @property
    def data_collection(self) -> str:
        """``schema.table``, as Debezium's transaction metadata names the table."""
        return f"{self.schema}.{self.table}"


@dataclass(frozen=True, slots=True)
class Tombstone:
    """The null-valued record Debezium writes after a delete (for log compaction)."""

    key: dict[str, Any] | None
    origin: RecordOrigin


class BadValue(SchemaViolation):
    """One column of a row image holds a value that cannot be used (e.g. NaN).

    ``side`` is ``before``, ``after`` or ``key``; ``problem`` says what is wrong in
    words a person who typed the value understands (``is not a number (NaN)``).
    """

    def __init__(self, reason: str, side: str, column: str, problem: str) -> None:
        super().__init__(reason)
        self.side = side
        self.column = column
        self.problem = problem


@dataclass(frozen=True, slots=True)
class UndecodedChange:
    """What can still be read of a change event that failed to decode: enough to count
    it as a member of its source transaction (so the transaction is rejected whole
    instead of waiting for it forever) and to say which business rows it touched.

    ``row`` is the raw (untyped) row image the change reports (``before`` for deletes,
    else ``after``), or None; ``column``/``problem`` are set for a :class:`BadValue`.
    """

    transaction_id: str
    total_order: int
    schema: str
    table: str
    op: str | None
    row: Mapping[str, Any] | None
    commit_time: datetime
    position: SourcePosition
    reason: str
    column: str | None
    problem: str | None
    origin: RecordOrigin

    @property
    def data_collection(self) -> str:
        return f"{self.schema}.{self.table}"


def undecoded_change(
    topic: str, partition: int, offset: int, value: bytes | None, error: BadInput
) -> UndecodedChange | None:
    """The transaction membership of a change event the decoder refused with ``error``,
    or None when the record does not even say which transaction it belongs to (not
    JSON, no ``transaction`` block, a snapshot read): such a record is only
    dead-lettered, and a transaction missing it ends by the hold bound."""
    if value is None:
        return None
    try:
        envelope = orjson.loads(value)
        if not isinstance(envelope, dict):
            return None
        block, source = envelope.get("transaction"), envelope.get("source")
        if not isinstance(block, dict) or not isinstance(source, dict):
            return None
        raw_id, total_order = block.get("id"), block.get("total_order")
        schema, table = source.get("schema"), source.get("table")
        if not (isinstance(raw_id, str) and isinstance(total_order, int)):
            return None
        if not (isinstance(schema, str) and isinstance(table, str)):
            return None
        xid = transaction_xid(raw_id)
        op = envelope.get("op")
        image = envelope.get("before" if op == ChangeOp.DELETE.value else "after")
        ts_ms = source.get("ts_ms")
        lsn = source.get("lsn")
        try:
            position = _streaming_position(source.get("sequence"), lsn)
        except SchemaViolation:
            position = SourcePosition(0, 0)
    except (ValueError, TypeError, RecursionError, BadInput):
        return None
    return UndecodedChange(
        transaction_id=xid,
        total_order=total_order,
        schema=schema,
        table=table,
        op=op if isinstance(op, str) else None,
        row=image if isinstance(image, dict) else None,
        commit_time=_EPOCH_UTC + timedelta(
            milliseconds=ts_ms if isinstance(ts_ms, int) and not isinstance(ts_ms, bool) else 0
        ),
        position=position,
        reason=error.reason,
        column=error.column if isinstance(error, BadValue) else None,
        problem=error.problem if isinstance(error, BadValue) else None,
        origin=RecordOrigin(topic, partition, offset),
    )


# --------------------------------------------------------------------------- converters

_EPOCH_DATE = date(1970, 1, 1)
_EPOCH = datetime(1970, 1, 1)
_EPOCH_UTC = datetime(1970, 1, 1, tzinfo=UTC)
_DECIMAL_TEXT = re.compile(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")

Converter = Callable[[Any], Any]


_NOT_FINITE = {"nan": "is not a number (NaN)", "infinity": "is infinite", "inf": "is infinite"}


def _to_decimal(value: str) -> Decimal:
    if _DECIMAL_TEXT.fullmatch(value) is None:
        # PostgreSQL numeric admits NaN and ±Infinity; Debezium (string mode) sends them
        # as "NAN" / "INFINITY": never a quantity or an amount anything can compute with
        problem = _NOT_FINITE.get(value.strip().lstrip("+-").lower())
        if problem is not None:
            raise NotFiniteNumber(f"{value!r} {problem}", problem)
        raise ValueError(f"{value!r} is not a decimal number")
    return Decimal(value)


class NotFiniteNumber(ValueError):
    """A numeric value that is NaN or infinite; ``problem`` says which, in words."""

    def __init__(self, message: str, problem: str) -> None:
        super().__init__(message)
        self.problem = problem


def _to_date(value: int) -> date:
    return _EPOCH_DATE + timedelta(days=value)


def _to_timestamp(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def _to_timestamptz(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError(f"{value!r} has no time zone")
    return parsed.astimezone(UTC)


def _to_time(value: int) -> time:
    if not 0 <= value <= 86_400_000_000:
        raise ValueError(f"{value} µs is not a time of day")
    if value == 86_400_000_000:  # PostgreSQL allows 24:00:00
        return time.max
    seconds, micros = divmod(value, 1_000_000)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    return time(hour, minute, second, micros)


_CONVERTERS: dict[str, Converter] = {
    DECIMAL: _to_decimal,
    DATE: _to_date,
    TIMESTAMP_MICROS: _to_timestamp,
    TIMESTAMPTZ: _to_timestamptz,
    TIME_MICROS: _to_time,
}


def _converter_for(column: ColumnSpec) -> Converter | None:
    if column.logical is None:
        return None
    return _CONVERTERS[column.logical]


_SNAPSHOT_FALSE = (None, "false")


class _TopicDecoder:
    """Per-topic precomputed state: parsed schema and the columns needing conversion."""

    __slots__ = ("check", "conversions", "database", "key_columns", "parsed", "topic")

    def __init__(self, schema: TopicSchema) -> None:
        self.topic = schema.topic
        self.database = schema.database
        self.parsed = schema.parsed
        self.check = compile_check(schema.parsed)
        self.key_columns = schema.key_columns
        self.conversions: tuple[tuple[str, Converter], ...] = tuple(
            (column.name, converter)
            for column in schema.columns
            if (converter := _converter_for(column)) is not None
        )

    def convert_row(self, raw: Mapping[str, Any], side: str) -> dict[str, Any]:
        row = dict(raw)
        for name, converter in self.conversions:
            value = row.get(name)
            if value is not None:
                try:
                    row[name] = converter(value)
                except NotFiniteNumber as error:
                    raise BadValue(f"{side}.{name}: {error}", side, name, error.problem) from None
                except (ValueError, ArithmeticError) as error:
                    raise BadValue(
                        f"{side}.{name}: {error}", side, name, "is not a valid value"
                    ) from None
        return row


def _before_image(
    decoder: _TopicDecoder, op: ChangeOp, raw: Mapping[str, Any]
) -> dict[str, Any]:
    """The before-image of a change. An update whose after-image is readable is not
    refused for a NaN or infinity in its before-image: that is the old value being
    corrected (the row that held it was refused already), so the column is left out
    (None) of the before-image. Anything else bad, and the before-image of a delete
    (the only image it has), is still a bad value."""
    row = dict(raw)
    while True:
        try:
            return decoder.convert_row(row, "before")
        except BadValue as error:
            fixable = op is ChangeOp.UPDATE and error.problem in _NOT_FINITE.values()
            if not fixable or row.get(error.column) is None:
                raise
            row[error.column] = None


class ChangeDecoder:
    """Decodes CDC topic records; build once, call :meth:`decode` per record."""

    def __init__(self, envelope_schemas: EnvelopeSchemas) -> None:
        self._topics = {topic: _TopicDecoder(schema) for topic, schema in envelope_schemas.items()}

    @property
    def topics(self) -> frozenset[str]:
        return frozenset(self._topics)

    def decode(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
    ) -> ChangeEvent | Tombstone:
        origin = RecordOrigin(topic, partition, offset)
        decoder = self._topics.get(topic)
        if decoder is None:
            raise SchemaViolation(f"no change-envelope schema for topic {topic!r}")
        try:
            if value is None:
                return Tombstone(self._decode_key(decoder, key, required=False), origin)
            return self._decode_change(decoder, origin, key, value)
        except BadInput:
            raise
        except Exception as error:  # the contract: bad input never escapes as anything else
            raise SchemaViolation(f"undecodable change event: {error!r}") from error

    # ------------------------------------------------------------------ internals

    def _decode_change(
        self, decoder: _TopicDecoder, origin: RecordOrigin, key: bytes | None, value: bytes
    ) -> ChangeEvent:
        envelope = _parse_json(value, "value")
        if not isinstance(envelope, dict):
            raise SchemaViolation(f"value is a JSON {type(envelope).__name__}, not an envelope")
        # The compiled check is the fast path (never more lenient than fastavro); only
        # what it refuses goes to fastavro, which accepts it after all or explains why
        # not. raise_errors=False first: with raise_errors=True fastavro builds an error
        # object (and JSON text) for every union branch it rules out, even on valid input.
        if not decoder.check(envelope) and not validate(
            envelope, decoder.parsed, raise_errors=False
        ):
            try:
                validate(envelope, decoder.parsed, raise_errors=True)
            except ValidationError as error:
                raise SchemaViolation(_violation_reason(error)) from None
            raise SchemaViolation("envelope does not match the topic schema")

        op = _OPS.get(envelope["op"])
        if op is None:
            raise SchemaViolation(f"unknown op {envelope['op']!r}")
        raw_before = envelope["before"]
        raw_after = envelope["after"]
        _check_images(op, raw_before, raw_after)
        after = None if raw_after is None else decoder.convert_row(raw_after, "after")
        before = None if raw_before is None else _before_image(decoder, op, raw_before)

        source = envelope["source"]
        snapshot_flag = source.get("snapshot")
        is_snapshot = op is ChangeOp.READ or snapshot_flag not in _SNAPSHOT_FALSE
        lsn = source.get("lsn")
        if is_snapshot:
            position = SourcePosition(0, lsn or 0)
        else:
            position = _streaming_position(source.get("sequence"), lsn)

        block = envelope.get("transaction")
        if block is None:
            transaction_id = None
            total_order = data_collection_order = None
        else:
            transaction_id = transaction_xid(block["id"])
            total_order = block["total_order"]
            data_collection_order = block["data_collection_order"]

        if op is ChangeOp.TRUNCATE:
            typed_key: dict[str, Any] = {}
        else:
            typed_key = self._decode_key(decoder, key, required=True) or {}

        return ChangeEvent(
            database=decoder.database,
            schema=source["schema"],
            table=source["table"],
            op=op,
            key=typed_key,
            before=before,
            after=after,
            position=position,
            transaction_id=transaction_id,
            total_order=total_order,
            data_collection_order=data_collection_order,
            commit_time=_EPOCH_UTC + timedelta(milliseconds=source["ts_ms"]),
            is_snapshot=is_snapshot,
            origin=origin,
        )

    @staticmethod
    def _decode_key(
        decoder: _TopicDecoder, key: bytes | None, *, required: bool
    ) -> dict[str, Any] | None:
        if key is None:
            if required:
                raise SchemaViolation("record has no key")
            return None
        parsed = _parse_json(key, "key")
        if not isinstance(parsed, dict):
            raise SchemaViolation(f"key is a JSON {type(parsed).__name__}, not an object")
        for column in decoder.key_columns:
            value = parsed.get(column)
            if value is None:
                raise SchemaViolation(f"key has no value for primary-key column {column!r}")
        return decoder.convert_row(parsed, "key")


def transaction_xid(transaction_id: str) -> str:
    """The xid part of a Debezium PostgreSQL transaction id (``"<xid>:<lsn>"``)."""
    xid, _, _ = transaction_id.partition(":")
    if not xid.isdigit():
        raise SchemaViolation(f"transaction id {transaction_id!r} is not '<xid>:<lsn>'")
    return xid


def _parse_json(data: bytes, what: str) -> Any:
    try:
        return orjson.loads(data)
    except (ValueError, RecursionError) as error:  # JSONDecodeError, UnicodeDecodeError
        raise MalformedEvent(f"{what} is not JSON: {error}") from None
    except TypeError as error:
        raise MalformedEvent(f"{what} is not bytes: {error}") from None


def _check_images(op: ChangeOp, before: Any, after: Any) -> None:
    if op in (ChangeOp.CREATE, ChangeOp.READ, ChangeOp.UPDATE) and after is None:
        raise SchemaViolation(f"op {op.value!r} without an 'after' image")
    if op is ChangeOp.CREATE and before is not None:
        raise SchemaViolation("op 'c' with a 'before' image")
    if op is ChangeOp.DELETE and (before is None or after is not None):
        raise SchemaViolation("op 'd' needs a 'before' image and no 'after' image")
    if op is ChangeOp.TRUNCATE and (before is not None or after is not None):
        raise SchemaViolation("op 't' carries no row images")


def _streaming_position(sequence: str | None, lsn: int | None) -> SourcePosition:
    """``source.sequence`` is the JSON text ``["<last_commit_lsn>", "<lsn>"]``.

    Either element may be null (e.g. ``last_commit_lsn`` before the connector has seen
    its first commit); the change's own LSN stands in then, which still sorts after
    every snapshot read and inside its transaction by LSN.
    """
    commit: int | None = None
    change: int | None = lsn
    if sequence is not None:
        try:
            pair = orjson.loads(sequence)
            if not isinstance(pair, list) or len(pair) != 2:
                raise ValueError("not a pair")
            commit = None if pair[0] is None else int(pair[0])
            if pair[1] is not None:
                change = int(pair[1])
        except (ValueError, TypeError, RecursionError):
            raise SchemaViolation(
                f"source.sequence {sequence!r} is not [last_commit_lsn, lsn]"
            ) from None
    if change is None:
        raise SchemaViolation("streamed change without an LSN (source.sequence and source.lsn)")
    return SourcePosition(change if commit is None else commit, change)


def _violation_reason(error: ValidationError) -> str:
    """One readable sentence from fastavro's list of (field, datum, expected) failures.

    For a union fastavro lists a failure per branch; the deepest field path is the one
    that names the actual problem (e.g. ``Value.total_amount`` rather than ``after``).
    """
    details = tuple(getattr(error, "errors", None) or ())
    if not details:
        return f"does not match the topic schema: {error}"
    # fastavro reports a union's branches in order and nested failures after their
    # parents, so the last failure not against "null" is the innermost real one.
    real = [d for d in details if d.schema != "null"] or list(details)
    deepest = real[-1]
    expected = " | ".join(
        dict.fromkeys(_short_type(d.schema) for d in details if d.field == deepest.field)
    )
    field = _short_field(str(deepest.field))
    if deepest.datum is None:
        return f"field {field} is missing or null, expected {expected}"
    shown = repr(deepest.datum)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return f"field {field} is {shown} ({type(deepest.datum).__name__}), expected {expected}"


def _short_field(path: str) -> str:
    """``cdc.crm.sales_order.Value.total`` -> ``Value.total`` (record name + field)."""
    parts = path.removeprefix("Field(").removesuffix(")").split(".")
    return ".".join(parts[-2:]) if len(parts) >= 2 else path


def _short_type(schema: Any) -> str:
    if isinstance(schema, str):
        return schema
    if isinstance(schema, list):
        return " | ".join(_short_type(branch) for branch in schema)
    if isinstance(schema, dict):
        kind = schema.get("type")
        if kind == "enum":
            return "one of " + ", ".join(repr(s) for s in schema.get("symbols", ()))
        if kind == "record":
            return f"record {str(schema.get('name', '')).rsplit('.', 1)[-1]}"
        return str(kind)
    return repr(schema)

"""Dead letters: bad input is never dropped and never stops a service.

A service that catches :class:`~services.shared.errors.BadInput` around an event turns
it into a :class:`DeadLetter` (:func:`dead_letter_from`) holding the reason, the
original key/value/header bytes untouched and where the event came from, and publishes
it to its dead-letter topic ``dlq.<service>`` (:func:`dead_letter_topic`) through a
:class:`DeadLetterPublisher`. Dead letters use the Ambidex wire format (Avro
single-object encoding, schema ``schemas/ambidex/dead_letter/v<N>.avsc``) and are keyed
by ``<source topic>:<partition>:<offset>``, so a redelivered failure of the same record
carries the same key.

Each letter carries a :class:`~services.shared.errors.Cause` (``bad_input``,
``unknown_reference``, ``erp_state``, ``needs_resnapshot``). Dead-lettering is
idempotent per origin and cause: the publisher learns the letters already in the topic
when the service starts (:meth:`KafkaDeadLetterPublisher.load_index`, the last
:data:`INDEX_LIMIT` of them) and remembers what it publishes (the newest
:data:`INDEX_LIMIT` in all, :class:`LetterIndex`), so a replay of the source topics (or
a redelivery after a crash) does not write the same letter again.

Operators inspect them (:func:`read_dead_letters`, :func:`render_dead_letter`) and,
once the cause is fixed, replay them (:func:`replay_dead_letters`): the *original*
bytes go back to the original topic (or another one) with a header
``ambidex.replayed-from = dlq.<service>:<offset>``, once per origin; letters whose
cause is not replayable (``erp_state``, ``needs_resnapshot``: the same record can only
fail again) only with ``force``.

Dead-letter topics have **one partition** (dead letters are rare, and one partition
makes ``offset`` a unique address for ``inspect``/``replay``); the reading functions
refuse a topic with more.
"""

from __future__ import annotations

import base64
import datetime as _dt
import functools
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from services.shared.avro import AvroCodec, SchemaCatalogue
from services.shared.errors import BadInput, Cause, MalformedEvent
from services.shared.kafka import Kafka, client_options

__all__ = [
    "DEAD_LETTER_SCHEMA",
    "INDEX_LIMIT",
    "REPLAYED_FROM_HEADER",
    "DeadLetter",
    "DeadLetterPublisher",
    "DeadLetterTopicError",
    "InMemoryDeadLetterPublisher",
    "KafkaDeadLetterPublisher",
    "LetterIndex",
    "PublishedDeadLetter",
    "ReplayResult",
    "dead_letter_from",
    "dead_letter_topic",
    "read_dead_letters",
    "render_dead_letter",
    "replay_dead_letters",
]

DEAD_LETTER_SCHEMA = "ambidex.platform.DeadLetter"
"""Full name of the dead-letter schema (catalogue key ``dead_letter``)."""
REPLAYED_FROM_HEADER = "ambidex.replayed-from"
"""Header added to a replayed record: ``dlq.<service>:<offset>``."""

INDEX_LIMIT = 100_000
"""How many of the newest letters a publisher reads at start to skip repeats (bounded
memory and start time; dead letters are rare, so this covers a topic's retention)."""

log = logging.getLogger(__name__)

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)
_MS = _dt.timedelta(milliseconds=1)

Headers = tuple[tuple[str, bytes | None], ...]
HeadersIn = Mapping[str, bytes | None] | Iterable[tuple[str | bytes, bytes | None]] | None


def dead_letter_topic(service: str) -> str:
    """The dead-letter topic of ``service``: ``dlq.<service>``."""
    if not service:
        raise ValueError("service name is empty")
    return f"dlq.{service}"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One rejected input event, with everything needed to understand and replay it."""

    service: str
    reason: str
    error_type: str
    source_topic: str
    source_partition: int
    source_offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers
    timestamp_ms: int | None
    """Kafka timestamp of the original record (ms since the epoch), if any."""
    failed_at: _dt.datetime
    """When the service rejected it (timezone-aware UTC, millisecond precision)."""
    attempts: int = 1
    cause: Cause = Cause.BAD_INPUT

    @property
    def topic(self) -> str:
        """The dead-letter topic this letter belongs to."""
        return dead_letter_topic(self.service)

    @property
    def dlq_key(self) -> bytes:
        """Kafka key on the dead-letter topic: ``<topic>:<partition>:<offset>``."""
        return f"{self.source_topic}:{self.source_partition}:{self.source_offset}".encode()

    @property
    def identity(self) -> tuple[bytes, str]:
        """What makes two letters the same: the origin and the cause (a record rejected
        again for the same class of reason, e.g. on a replay, is not a new letter)."""
        return self.dlq_key, self.cause.value

    def to_record(self) -> dict[str, Any]:
        """The Avro record (schema ``ambidex.platform.DeadLetter``)."""
        return {
            "service": self.service,
            "reason": self.reason,
            "error_type": self.error_type,
            "source_topic": self.source_topic,
            "source_partition": self.source_partition,
            "source_offset": self.source_offset,
            "original_key": self.key,
            "original_value": self.value,
            "original_headers": [
                {"key": k.encode("utf-8", "surrogateescape"), "value": v} for k, v in self.headers
            ],
            "original_timestamp": self.timestamp_ms,
            "failed_at": self.failed_at,
            "attempts": self.attempts,
            "cause": self.cause.value,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> DeadLetter:
        """Inverse of :meth:`to_record` (as fastavro returns it: datetimes for timestamps)."""
        return cls(
            service=record["service"],
            reason=record["reason"],
            error_type=record["error_type"],
            source_topic=record["source_topic"],
            source_partition=record["source_partition"],
            source_offset=record["source_offset"],
            key=record["original_key"],
            value=record["original_value"],
            headers=tuple(
                (bytes(h["key"]).decode("utf-8", "surrogateescape"), h["value"])
                for h in record["original_headers"]
            ),
            timestamp_ms=_to_ms(record["original_timestamp"]),
            failed_at=_to_datetime(record["failed_at"]),
            attempts=record["attempts"],
            cause=_cause(record.get("cause")),
        )


def _cause(value: object) -> Cause:
    try:
        return Cause(str(value))
    except ValueError:  # a cause a newer writer knows: treat it as plain bad input
        return Cause.BAD_INPUT


def dead_letter_from(
    error: BadInput,
    service: str,
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    headers: HeadersIn,
    timestamp_ms: int | None,
    attempts: int = 1,
    failed_at: _dt.datetime | None = None,
) -> DeadLetter:
    """The dead letter for ``error`` raised while processing the given source record.

    ``key``/``value``/``headers`` must be the record's bytes exactly as consumed.
    ``failed_at`` defaults to now; it is truncated to milliseconds (what the schema
    keeps). A negative Kafka timestamp (-1 means "none") is stored as null.
    """
    when = failed_at if failed_at is not None else _dt.datetime.now(_dt.UTC)
    if when.tzinfo is None:
        raise ValueError("failed_at must be timezone-aware")
    when = when.astimezone(_dt.UTC)
    when = when.replace(microsecond=when.microsecond // 1000 * 1000)
    return DeadLetter(
        service=service,
        reason=error.reason,
        error_type=type(error).__name__,
        source_topic=topic,
        source_partition=partition,
        source_offset=offset,
        key=_as_bytes(key),
        value=_as_bytes(value),
        headers=_normalise_headers(headers),
        timestamp_ms=timestamp_ms if timestamp_ms is not None and timestamp_ms >= 0 else None,
        failed_at=when,
        attempts=attempts,
        cause=error.cause,
    )


# --------------------------------------------------------------------------- publishing


class DeadLetterPublisher(Protocol):
    """Port: where a service sends its dead letters."""

    async def publish(self, letter: DeadLetter) -> bool:
        """Store ``letter`` durably; returns only once it is acknowledged. False (and
        nothing written) when a letter with the same :attr:`DeadLetter.identity` is
        already there."""
        ...


class LetterIndex:
    """The identities of the newest :data:`INDEX_LIMIT` letters, oldest forgotten first.

    What a publisher remembers to skip repeats: as much as it reads at start
    (:meth:`KafkaDeadLetterPublisher.load_index`), so a long-running service knows no
    more than a restarted one, and its memory does not grow with the letters written.
    """

    def __init__(self, limit: int = INDEX_LIMIT) -> None:
        self.limit = limit
        self._identities: OrderedDict[tuple[bytes, str], None] = OrderedDict()

    def add(self, identity: tuple[bytes, str]) -> None:
        identities = self._identities
        identities[identity] = None
        identities.move_to_end(identity)
        if len(identities) > self.limit:
            identities.popitem(last=False)

    def __contains__(self, identity: object) -> bool:
        return identity in self._identities

    def __len__(self) -> int:
        return len(self._identities)


class KafkaDeadLetterPublisher:
    """Publishes to ``dlq.<service>`` with an already started aiokafka producer.

    Awaits the broker's acknowledgment of every letter, so a letter is never lost
    between "rejected" and "committed the source offset". Configure the producer with
    ``acks="all"`` (and ``enable_idempotence=True``) for that acknowledgment to mean
    "replicated".
    """

    def __init__(self, producer: AIOKafkaProducer, codec: AvroCodec) -> None:
        self._producer = producer
        self._codec = codec
        self._headers = codec.headers(DEAD_LETTER_SCHEMA)
        self.known = LetterIndex()
        """Identities of the newest letters in the topic (loaded at start, then published)."""

    async def load_index(
        self, kafka: Kafka, service: str, *, limit: int = INDEX_LIMIT
    ) -> int:
        """Learn the identities of the newest ``limit`` letters in ``dlq.<service>``;
        how many are known. A topic that cannot be read leaves the index empty
        (logged): a repeated letter is better than a service that does not start."""
        try:
            async for _, letter in read_dead_letters(
                kafka, service, limit=None, tail=limit, codec=self._codec
            ):
                self.known.add(letter.identity)
        except (DeadLetterTopicError, TimeoutError, BadInput) as error:
            log.warning("dead-letter index not loaded: %s", error)
        return len(self.known)

    async def publish(self, letter: DeadLetter) -> bool:
        identity = letter.identity
        if identity in self.known:
            return False
        value = self._codec.encode(DEAD_LETTER_SCHEMA, letter.to_record())
        await self._producer.send_and_wait(
            letter.topic, value=value, key=letter.dlq_key, headers=self._headers
        )
        self.known.add(identity)
        return True


@dataclass(frozen=True, slots=True)
class PublishedDeadLetter:
    """What :class:`InMemoryDeadLetterPublisher` "sent": the Kafka record it would be."""

    topic: str
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...]


@dataclass
class InMemoryDeadLetterPublisher:
    """Fake for unit tests: encodes like the Kafka publisher and keeps the records."""

    codec: AvroCodec
    records: list[PublishedDeadLetter] = field(default_factory=list)
    known: set[tuple[bytes, str]] = field(default_factory=set)

    async def publish(self, letter: DeadLetter) -> bool:
        if letter.identity in self.known:
            return False
        self.known.add(letter.identity)
        value = self.codec.encode(DEAD_LETTER_SCHEMA, letter.to_record())
        self.records.append(
            PublishedDeadLetter(
                letter.topic, letter.dlq_key, value, tuple(self.codec.headers(DEAD_LETTER_SCHEMA))
            )
        )
        return True

    @property
    def letters(self) -> list[DeadLetter]:
        """The published letters, decoded back from their bytes."""
        return [decode_dead_letter(self.codec, r.value) for r in self.records]

    def topic_letters(self, service: str) -> list[tuple[int, DeadLetter]]:
        """(offset, letter) as ``read_dead_letters`` would yield them for ``service``."""
        topic = dead_letter_topic(service)
        mine = [r for r in self.records if r.topic == topic]
        return [(i, decode_dead_letter(self.codec, r.value)) for i, r in enumerate(mine)]


def decode_dead_letter(codec: AvroCodec, data: bytes) -> DeadLetter:
    """Decode one dead-letter record value; :class:`BadInput` if it is not one."""
    event = codec.decode(data, DEAD_LETTER_SCHEMA)
    if event.schema_name != DEAD_LETTER_SCHEMA:
        raise MalformedEvent(f"not a dead letter: written with {event.schema_name}")
    return DeadLetter.from_record(event.record)


# --------------------------------------------------------------------------- inspection


def render_dead_letter(letter: DeadLetter) -> dict[str, Any]:
    """A JSON-able view for humans (``ambidex deadletters inspect``).

    Byte strings appear as ``{"utf8": text}`` when they are valid UTF-8, otherwise as
    ``{"base64": text}``; ``null`` stays ``null``.
    """
    return {
        "service": letter.service,
        "cause": letter.cause.value,
        "replayable": letter.cause.replayable,
        "error_type": letter.error_type,
        "reason": letter.reason,
        "source": {
            "topic": letter.source_topic,
            "partition": letter.source_partition,
            "offset": letter.source_offset,
        },
        "original_timestamp": (
            _to_datetime(letter.timestamp_ms).isoformat()
            if letter.timestamp_ms is not None
            else None
        ),
        "failed_at": letter.failed_at.isoformat(),
        "attempts": letter.attempts,
        "key": _render_bytes(letter.key),
        "value": _render_bytes(letter.value),
        "headers": [{"key": k, "value": _render_bytes(v)} for k, v in letter.headers],
    }


def _render_bytes(data: bytes | None) -> dict[str, str] | None:
    if data is None:
        return None
    try:
        return {"utf8": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode("ascii")}


class DeadLetterTopicError(LookupError):
    """The dead-letter topic does not exist or is not single-partition."""


@functools.cache
def _default_codec() -> AvroCodec:
    return AvroCodec(SchemaCatalogue.load())


async def read_dead_letters(
    kafka: Kafka,
    service: str,
    *,
    limit: int | None,
    since_offset: int = 0,
    tail: int | None = None,
    codec: AvroCodec | None = None,
    idle_timeout_s: float = 30.0,
) -> AsyncIterator[tuple[int, DeadLetter]]:
    """Yield ``(offset, letter)`` from ``dlq.<service>``, from ``since_offset`` up to the
    end the topic had when reading started, then stop; with ``tail``, only from the
    last ``tail`` offsets before that end.

    No consumer group, no commits: reading changes nothing. ``limit`` caps the number
    of letters. Raises :class:`DeadLetterTopicError` for a missing or multi-partition
    topic, :class:`MalformedEvent`/:class:`SchemaViolation` for a record that is not a
    dead letter, :class:`TimeoutError` if the broker delivers nothing for
    ``idle_timeout_s`` before the end is reached.
    """
    codec = codec or _default_codec()
    topic = dead_letter_topic(service)
    if limit is not None and limit <= 0:
        return
    tp = await _single_partition(kafka, topic)
    consumer = AIOKafkaConsumer(
        **client_options(kafka),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        if tail is not None:
            since_offset = max(since_offset, end - tail)
        if since_offset > 0:
            consumer.seek(tp, since_offset)
        else:
            await consumer.seek_to_beginning(tp)
        count = 0
        idle = 0.0
        while await consumer.position(tp) < end:
            batch = await consumer.getmany(tp, timeout_ms=1000)
            messages = batch.get(tp, [])
            if not messages:
                idle += 1.0
                if idle >= idle_timeout_s:
                    raise TimeoutError(
                        f"{topic}: nothing delivered for {idle_timeout_s:.0f}s before "
                        f"reaching offset {end}"
                    )
                continue
            idle = 0.0
            for message in messages:
                if message.offset >= end:
                    return
                if message.value is None:  # a tombstone someone wrote to clean up
                    continue
                try:
                    letter = decode_dead_letter(codec, message.value)
                except BadInput as exc:
                    raise type(exc)(f"{topic} offset {message.offset}: {exc.reason}") from exc
                yield message.offset, letter
                count += 1
                if limit is not None and count >= limit:
                    return
    finally:
        await consumer.stop()


async def _single_partition(kafka: Kafka, topic: str) -> TopicPartition:
    admin = AIOKafkaAdminClient(**client_options(kafka))
    await admin.start()
    try:
        (description,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if description.get("error_code", 0) != 0 or not description.get("partitions"):
        raise DeadLetterTopicError(
            f"topic {topic} does not exist (error code {description.get('error_code')})"
        )
    partitions = sorted(p["partition"] for p in description["partitions"])
    if partitions != [0]:
        raise DeadLetterTopicError(
            f"{topic} has partitions {partitions}; dead-letter topics have exactly one"
        )
    return TopicPartition(topic, 0)


def replay_headers(letter: DeadLetter, service: str, offset: int) -> list[tuple[str, bytes | None]]:
    """The original headers, plus (replacing any earlier one) ``ambidex.replayed-from``."""
    kept = [(k, v) for k, v in letter.headers if k != REPLAYED_FROM_HEADER]
    kept.append((REPLAYED_FROM_HEADER, f"{dead_letter_topic(service)}:{offset}".encode()))
    return kept


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """What :func:`replay_dead_letters` did."""

    replayed: int
    not_replayable: int
    """Letters left alone because their cause can only fail again (no ``force``)."""
    repeats: int
    """Further letters of an origin already replayed in this run (written before
    dead-lettering was idempotent, or for another cause)."""
    chosen: tuple[tuple[int, DeadLetter], ...] = ()
    """``(offset, letter)`` of each letter replayed (or, in a dry run, that would be)."""


def replay_selection(
    letters: Iterable[tuple[int, DeadLetter]], *, offsets: set[int] | None, force: bool
) -> tuple[list[tuple[int, DeadLetter]], int, int]:
    """Which letters a replay sends: ``(to send, not replayable, repeats)``.

    Pure: selected by ``offsets`` (None: all), only those whose cause is replayable
    unless ``force``, and one per origin (the first)."""
    chosen: list[tuple[int, DeadLetter]] = []
    seen: set[bytes] = set()
    not_replayable = repeats = 0
    for offset, letter in letters:
        if offsets is not None and offset not in offsets:
            continue
        if not force and not letter.cause.replayable:
            not_replayable += 1
            continue
        if letter.dlq_key in seen:
            repeats += 1
            continue
        seen.add(letter.dlq_key)
        chosen.append((offset, letter))
    return chosen, not_replayable, repeats


async def replay_dead_letters(
    kafka: Kafka,
    service: str,
    *,
    offsets: set[int] | None,
    target_topic: str | None,
    force: bool = False,
    dry_run: bool = False,
    codec: AvroCodec | None = None,
) -> ReplayResult:
    """Re-produce the original key, value and headers of dead letters.

    ``offsets`` selects letters by their offset in ``dlq.<service>`` (``None``: all
    of them up to the current end); :func:`replay_selection` keeps one per origin and,
    without ``force``, none whose cause is not replayable. Each goes to its original
    topic, or to ``target_topic``, with the header
    ``ambidex.replayed-from = dlq.<service>:<offset>``. Every send is acknowledged
    (``acks=all``, idempotent producer) before returning. Offsets that do not exist are
    ignored (compare the count). ``dry_run`` selects the same letters and sends nothing.
    """
    if offsets is not None and not offsets:
        return ReplayResult(0, 0, 0)
    since = min(offsets) if offsets else 0
    letters = [
        item
        async for item in read_dead_letters(
            kafka, service, limit=None, since_offset=since, codec=codec
        )
    ]
    chosen, not_replayable, repeats = replay_selection(letters, offsets=offsets, force=force)
    if dry_run:
        return ReplayResult(len(chosen), not_replayable, repeats, tuple(chosen))
    producer = AIOKafkaProducer(**client_options(kafka), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for offset, letter in chosen:
            await producer.send_and_wait(
                target_topic or letter.source_topic,
                value=letter.value,
                key=letter.key,
                headers=replay_headers(letter, service, offset),
            )
    finally:
        await producer.stop()
    return ReplayResult(len(chosen), not_replayable, repeats, tuple(chosen))


# --------------------------------------------------------------------------- helpers


def _as_bytes(data: bytes | bytearray | memoryview | None) -> bytes | None:
    return None if data is None else bytes(data)


def _normalise_headers(headers: HeadersIn) -> Headers:
    if headers is None:
        return ()
    items: Iterable[tuple[str | bytes, bytes | None]]
    items = headers.items() if isinstance(headers, Mapping) else headers
    out: list[tuple[str, bytes | None]] = []
    for k, v in items:
        key = k.decode("utf-8", "surrogateescape") if isinstance(k, bytes | bytearray) else str(k)
        out.append((key, _as_bytes(v)))
    return tuple(out)


def _to_ms(value: _dt.datetime | int | None) -> int | None:
    if value is None or isinstance(value, int):
        return value
    return (value - _EPOCH) // _MS


def _to_datetime(value: _dt.datetime | int) -> _dt.datetime:
    if isinstance(value, _dt.datetime):
        return value.astimezone(_dt.UTC)
    return _EPOCH + value * _MS

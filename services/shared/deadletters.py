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

Operators inspect them and, once the cause is fixed, replay them
(:mod:`services.shared.deadletter_tools`): the *original*
bytes go back to the original topic (or another one) with a header
``ambidex.replayed-from = dlq.<service>:<offset>``, once per origin; letters whose
cause is not replayable (``erp_state``, ``needs_resnapshot``: the same record can only
fail again) only with ``force``.

Dead-letter topics have **one partition** (dead letters are rare, and one partition
makes ``offset`` a unique address for ``inspect``/``replay``); the reading functions
refuse a topic with more.
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer

from services.shared.avro import AvroCodec
from services.shared.errors import BadInput, Cause, MalformedEvent
from services.shared.kafka import Kafka

__all__ = [
    "DEAD_LETTER_SCHEMA",
    "INDEX_LIMIT",
    "REPLAYED_FROM_HEADER",
    "DeadLetter",
    "DeadLetterPublisher",
    "InMemoryDeadLetterPublisher",
    "KafkaDeadLetterPublisher",
    "LetterIndex",
    "PublishedDeadLetter",
    "dead_letter_from",
    "dead_letter_topic",
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
        # the reader is the operators' module, which builds on this one
        from services.shared.deadletter_tools import DeadLetterTopicError, read_dead_letters

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

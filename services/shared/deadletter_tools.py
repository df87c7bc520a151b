"""Reading, rendering and replaying a service's dead letters: what operators run
(`ambidex deadletters inspect|replay`) against ``dlq.<service>``.

The letters themselves, their wire format and their publishing are
:mod:`services.shared.deadletters`. A replay sends the *original* bytes back to the
original topic (or another one) with a header ``ambidex.replayed-from =
dlq.<service>:<offset>``, once per origin; letters whose cause is not replayable
(``erp_state``, ``needs_resnapshot``: the same record can only fail again) only with
``force``. Dead-letter topics have one partition, so ``offset`` is a letter's address;
the reading functions refuse a topic with more.
"""

from __future__ import annotations

import base64
import functools
import os
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from services.shared.avro import AvroCodec, SchemaCatalogue
from services.shared.deadletters import (
    REPLAYED_FROM_HEADER,
    DeadLetter,
    _to_datetime,
    dead_letter_topic,
    decode_dead_letter,
)
from services.shared.errors import BadInput
from services.shared.kafka import Kafka, client_options

__all__ = [
    "DeadLetterTopicError",
    "ReplayResult",
    "dead_letter_codec",
    "read_dead_letters",
    "render_dead_letter",
    "replay_dead_letters",
]


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
def dead_letter_codec(schema_registry_url: str | None = None) -> AvroCodec:
    """Reads letters in both wire formats: with a registry (``schema_registry_url``, else
    AMBIDEX_SCHEMA_REGISTRY_URL), registry-framed ones too
    (``services.shared.schema_registry``)."""
    from services.shared.schema_registry import codec_for
    from services.shared.settings import env_var, load_settings

    environ = dict(os.environ)
    if schema_registry_url:
        environ[env_var("schema_registry_url")] = schema_registry_url
    return codec_for(load_settings("deadletters", environ), SchemaCatalogue.load())


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
    codec = codec or dead_letter_codec()
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

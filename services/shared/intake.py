"""The front door of every service: raw Kafka records in, typed changes out.

A service's agent hands each consumed record (as raw bytes) to :class:`ChangeIntake`.
Well-formed change events come back typed; a record that is bad input goes to the
service's dead-letter topic with its reason and origin, is counted, and the caller
moves on (invariant 4: bad input never stops a service and is never silently dropped).
A domain rule that finds an event unusable after decoding calls :meth:`reject` the
same way.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from services.shared.changes import ChangeDecoder, ChangeEvent, Tombstone
from services.shared.deadletters import DeadLetterPublisher, dead_letter_from
from services.shared.errors import BadInput
from services.shared.observability import ServiceMetrics
from services.shared.transactions import TransactionMarker, decode_marker

log = logging.getLogger(__name__)


class ConsumedRecord(Protocol):
    """What a consumed Kafka record offers (aiokafka's ConsumerRecord, a test's fake)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def timestamp(self) -> float | int | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]] | None: ...


class ChangeIntake:
    def __init__(
        self,
        service: str,
        decoder: ChangeDecoder,
        dead_letters: DeadLetterPublisher,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self.service = service
        self._decoder = decoder
        self._dead_letters = dead_letters
        self._metrics = metrics

    async def change(self, record: ConsumedRecord) -> ChangeEvent | Tombstone | None:
        """The typed change of ``record``, or ``None`` when it was dead-lettered."""
        decoded = self.decode(record)
        if isinstance(decoded, BadInput):
            await self.reject(record, decoded)
            return None
        return decoded

    def decode(self, record: ConsumedRecord) -> ChangeEvent | Tombstone | BadInput:
        """The typed change of ``record``, or the reason it is bad input — which the
        caller must then :meth:`reject`. The synchronous form of :meth:`change` for hot
        loops over a batch (no coroutine per record)."""
        try:
            decoded = self._decoder.decode(
                record.topic, record.partition, record.offset, record.key, record.value
            )
        except BadInput as error:
            return error
        if self._metrics is not None and type(decoded) is ChangeEvent:
            self._metrics.source_commit_seen(decoded.database, decoded.commit_time.timestamp())
        return decoded

    async def marker(self, record: ConsumedRecord) -> TransactionMarker | None:
        """A transaction BEGIN/END marker, or ``None`` when it was dead-lettered."""
        try:
            if record.value is None:
                raise BadInput("transaction marker without a value")
            return decode_marker(record.value)
        except BadInput as error:
            await self.reject(record, error)
            return None

    async def reject(self, record: ConsumedRecord, error: BadInput) -> None:
        """Send ``record`` to the dead-letter topic with ``error``'s reason."""
        timestamp = record.timestamp
        letter = dead_letter_from(
            error,
            self.service,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key,
            value=record.value,
            headers=list(record.headers or ()),
            timestamp_ms=int(timestamp) if timestamp is not None else None,
        )
        if not await self._dead_letters.publish(letter):
            # the same origin and cause is in the topic already (a replay, a redelivery)
            log.info(
                "already dead-lettered %s:%s@%s (%s)",
                record.topic, record.partition, record.offset, error.cause.value,
            )
            return
        log.warning(
            "dead-lettered %s:%s@%s: %s",
            record.topic,
            record.partition,
            record.offset,
            error.reason,
            extra={
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "reason": error.reason,
                "error_type": type(error).__name__,
                "cause": error.cause.value,
            },
        )
        if self._metrics is not None:
            self._metrics.dead_letter(type(error).__name__)
            self._metrics.event(record.topic, "dead_lettered")

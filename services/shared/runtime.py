"""What every Ambidex service process is made of, built once from its settings.

A service is a Faust worker used as a process shell only (lifecycle, signals, logging;
no agents, no tables, no Kafka client of Faust's: docs/adr/0001-faust-as-worker-shell.md)
plus the shared pieces around it: the change decoder and dead-letter intake, an Avro
publisher for what it announces, Prometheus metrics and health endpoints, and JSON
logs. The change topics are read by :class:`~services.shared.batches.BatchSource`s
started with the worker (whole fetches, offsets committed only behind finished work: a
Faust agent delivers far fewer events a second, ``bench/faust_delivery.py``).
:func:`build_service` connects to nothing; :func:`run_service` starts the worker.

Why raw bytes: a record that turns out to be bad must reach the dead-letter topic byte
for byte. No exactly-once transactions (Faust's has a record of hangs and duplicates);
effects are idempotent instead.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
from aiokafka import AIOKafkaProducer
from faust.app.base import BootStrategy
from prometheus_client import CollectorRegistry

from services.shared.avro import AvroCodec, SchemaCatalogue
from services.shared.cdc_schemas import load_envelope_schemas
from services.shared.changes import ChangeDecoder
from services.shared.deadletters import KafkaDeadLetterPublisher
from services.shared.health import (
    HealthState,
    ObservabilityServer,
    kafka_probe,
    start_observability_server,
)
from services.shared.intake import ChangeIntake
from services.shared.kafka import client_options
from services.shared.logs import configure_logging
from services.shared.observability import EventLoopMonitor, ServiceMetrics
from services.shared.resilience import Backoff, RetryPolicy
from services.shared.schema_registry import (
    RegistryIds,
    SchemaRegistryClient,
    published_subjects,
    register_at_start,
    registry_client,
)
from services.shared.settings import ServiceSettings

log = logging.getLogger(__name__)

StartHook = Callable[["Service"], Awaitable[None]]


class WorkerShell(BootStrategy):
    """What the Faust worker starts: its lifecycle, signals and our services, nothing
    that talks to Kafka (the change topics are read by BatchSources, see
    :mod:`services.shared.batches`; the publisher and dead letters use our producer)."""

    enable_kafka = False
    enable_web = False
    enable_sensors = False


class AvroPublisher:
    """Publishes Avro events (the codec's wire format) and waits for the broker's ack."""

    def __init__(self, producer: AIOKafkaProducer, codec: AvroCodec) -> None:
        self._producer = producer
        self._codec = codec

    async def publish(
        self, topic: str, schema: str, key: bytes, record: dict[str, Any]
    ) -> None:
        value = self._codec.encode(schema, record)
        await self._producer.send_and_wait(
            topic, value=value, key=key, headers=self._codec.headers(schema)
        )

    async def publish_many(
        self, items: Sequence[tuple[str, str, bytes, dict[str, Any]]]
    ) -> None:
        """Send a batch and wait for all acks (one round trip per batch, not per event)."""
        futures = [
            await self._producer.send(
                topic,
                value=self._codec.encode(schema, record),
                key=key,
                headers=self._codec.headers(schema),
            )
            for topic, schema, key, record in items
        ]
        if futures:
            await asyncio.gather(*futures)


@dataclass
class Service:
    """One service process's parts. ``producer`` exists only while the app runs."""

    settings: ServiceSettings
    app: faust.App
    registry: CollectorRegistry
    metrics: ServiceMetrics
    health: HealthState
    codec: AvroCodec
    decoder: ChangeDecoder
    #: the one transient-error policy (classification, backoff, outage reporting)
    retry: RetryPolicy
    on_start: list[StartHook] = field(default_factory=list)
    on_stop: list[StartHook] = field(default_factory=list)
    producer: AIOKafkaProducer | None = None
    intake: ChangeIntake | None = None
    publisher: AvroPublisher | None = None
    server: ObservabilityServer | None = None
    loop_monitor: EventLoopMonitor | None = None
    #: set when AMBIDEX_SCHEMA_REGISTRY_URL is (its ids are in ``codec.ids``)
    schema_registry: SchemaRegistryClient | None = None

    @property
    def name(self) -> str:
        return self.settings.service_name

    def require_intake(self) -> ChangeIntake:
        if self.intake is None:
            raise RuntimeError(f"{self.name} is not started: no intake yet")
        return self.intake

    def require_publisher(self) -> AvroPublisher:
        if self.publisher is None:
            raise RuntimeError(f"{self.name} is not started: no publisher yet")
        return self.publisher


def build_service(settings: ServiceSettings, *, schemas_dir: Path | None = None) -> Service:
    """Assemble a service from its settings; nothing connects until it runs."""
    schemas_root = schemas_dir or settings.schemas_dir
    app = faust.App(
        f"ambidex-{settings.service_name}",
        # Faust is the worker shell only (docs/adr/0001-faust-as-worker-shell.md): no
        # Kafka client of its own, so no consumer group, no producer and no
        # ``-__assignor-__leader`` topic outside deploy/topics.yaml
        datadir=str(settings.service_state_dir),
        web_enabled=False,
    )
    app.boot_strategy = WorkerShell(app)
    registry = CollectorRegistry()
    catalogue = SchemaCatalogue.load(schemas_root)
    health = HealthState()
    metrics = ServiceMetrics(settings.service_name, registry)
    schema_registry, ids = None, None
    if settings.schema_registry_url:
        schema_registry = registry_client(settings)
        ids = RegistryIds(schema_registry.schema_text)
    return Service(
        settings=settings,
        app=app,
        registry=registry,
        metrics=metrics,
        health=health,
        codec=AvroCodec(catalogue, wire=settings.published_wire_format, ids=ids),
        schema_registry=schema_registry,
        decoder=ChangeDecoder(load_envelope_schemas(schemas_root / "cdc")),
        retry=RetryPolicy(
            health,
            Backoff(initial=min(0.1, settings.retry_max_delay_seconds),
                    maximum=settings.retry_max_delay_seconds),
            log_interval=settings.log_repeat_interval_seconds,
            on_retry=lambda kind: metrics.retried(kind.value),
        ),
    )


def attach_lifecycle(service: Service) -> None:
    """Start and stop the shared parts with the Faust app."""
    import mode

    class SharedParts(mode.Service):
        async def on_start(self) -> None:
            await _start_parts(service)

        async def on_stop(self) -> None:
            await _stop_parts(service)

    service.app.service(SharedParts)


async def _start_parts(service: Service) -> None:
    settings = service.settings
    service.health.expect("started")
    service.server = await start_observability_server(
        settings.metrics_host, settings.metrics_port, service.registry, service.health
    )
    # from the start: a restore or a first large batch that blocks the loop shows too
    service.loop_monitor = EventLoopMonitor(service.metrics)
    service.loop_monitor.start()
    if service.schema_registry is not None and service.codec.ids is not None:
        # before anything is read or published: the ids frame what is published
        await register_at_start(
            service.schema_registry, service.codec.catalogue,
            published_subjects(settings.service_name, settings.dead_letter_topic),
            service.codec.ids, service.health, service.retry,
        )
    producer = AIOKafkaProducer(
        **client_options(settings.kafka),
        acks="all",
        enable_idempotence=True,
        linger_ms=2,
        # zstd, not lz4: aiokafka compresses lz4 at level 9 (high compression), which
        # cost ~0.7 us a record (~5% of inventory-projection's replay); zstd at its
        # default level is ~6x cheaper here AND compresses changelog/JSON batches ~2x
        # smaller (bench/inventory.py, docs/benchmarks.md)
        compression_type="zstd",
        # Batches of up to 512 KiB per partition (default 16 KiB): an idempotent
        # producer has one request in flight per broker, so a replay's changelog (tens
        # of thousands of entries a batch, one partition) went out as hundreds of
        # sequential round trips; the worker waited ~0.1 s a batch on them.
        max_batch_size=512 * 1024,
        client_id=f"ambidex-{settings.service_name}",
    )
    await producer.start()
    service.producer = producer
    service.publisher = AvroPublisher(producer, service.codec)
    dead_letters = KafkaDeadLetterPublisher(producer, service.codec)
    # letters already written are not written again (a replay, a redelivery)
    await dead_letters.load_index(settings.kafka, settings.service_name)
    service.intake = ChangeIntake(
        settings.service_name, service.decoder, dead_letters, service.metrics
    )
    # asked live (briefly cached) on every /readyz: the broker answers a metadata request
    service.health.add_probe("kafka", kafka_probe(producer.client))
    for hook in service.on_start:
        await hook(service)
    relax_garbage_collector()
    service.health.set_check("started", True)
    service.health.start_watchdog()
    log.info(
        "service started",
        extra={"metrics_url": service.server.url, "settings": settings.redacted()},
    )


def relax_garbage_collector() -> None:
    """Move what start-up built out of the collector's way and collect less often.

    A batch allocates tens of thousands of short-lived objects (decoded events, rows);
    with the default thresholds the cyclic collector runs every 700 allocations and its
    passes over the old generations showed up as ~10% of a replay in py-spy. Reference
    counting frees almost all of it anyway; the collector is for rare cycles.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


async def _stop_parts(service: Service) -> None:
    service.health.set_check("started", False, "shutting down")
    for hook in service.on_stop:
        await hook(service)
    if service.producer is not None:
        await service.producer.stop()
    if service.schema_registry is not None:
        await service.schema_registry.close()
    if service.server is not None:
        await service.server.close()
    service.health.stop_watchdog()
    if service.loop_monitor is not None:
        service.loop_monitor.stop()


def run_service(service: Service) -> None:
    """Run the service's Faust worker in this process until it is stopped."""
    settings = service.settings
    settings.service_state_dir.mkdir(parents=True, exist_ok=True)
    attach_lifecycle(service)

    class Worker(faust.Worker):
        def _setup_logging(self) -> None:
            # one JSON object per line (or console lines), secrets masked: ours, not Faust's
            configure_logging(
                settings.log_format, settings.log_level, service=settings.service_name,
                repeat_interval=settings.log_repeat_interval_seconds,
            )

    Worker(service.app, loglevel=settings.log_level, redirect_stdouts=False, quiet=True,
           ).execute_from_commandline()

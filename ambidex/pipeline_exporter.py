"""The pipeline exporter: what no service and no JMX bean tells, as Prometheus metrics.

- Each capture database's logical replication slots: WAL the slot retains
  (``pg_wal_lsn_diff(current, restart_lsn)``, the disk a stalled connector costs), how far
  the confirmed position is behind, and whether a connector is attached. Read from
  ``pg_replication_slots`` (readable by any user) of the connected database only, so two
  databases on one server are not counted twice.
- Consumer-group lag per group, topic and partition, under Kafka Exporter's metric names
  (``kafka_consumergroup_lag``, ``kafka_consumergroup_current_offset``,
  ``kafka_topic_partition_current_offset``): on Kubernetes Strimzi's Kafka Exporter serves
  the same series, so the dashboards and alerts read one set of names. It is computed
  here from the committed offsets and the end offsets (the admin API), not from broker
  metrics. Unlike a service's own ``ambidex_consumer_lag_messages`` it is there when the
  service is down, which is when it matters.

Run as ``python -m ambidex.pipeline_exporter``: the local stack starts one
(``ambidex.stack.pipeline_metrics``); on Kubernetes a Deployment runs it for the slots
only (no ``AMBIDEX_KAFKA_BOOTSTRAP``: Kafka Exporter does the lag there). Settings:
``AMBIDEX_CRM_DSN``/``AMBIDEX_ERP_DSN`` (either may be absent), ``AMBIDEX_KAFKA_BOOTSTRAP``
(with ``AMBIDEX_KAFKA_SECURITY_PROTOCOL`` and the SASL settings, as a service reads them:
docker-compose's Kafka takes only logins),
``AMBIDEX_METRICS_HOST``/``AMBIDEX_METRICS_PORT`` (default 9400),
``AMBIDEX_EXPORTER_INTERVAL_S`` (default 10): values are refreshed on that interval, a
scrape reads the last ones (a slow database never holds a scrape).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ambidex.targets import kafka_from_environment
from services.shared.kafka import Kafka, client_options

log = logging.getLogger("ambidex.pipeline_exporter")

DATABASES = ("crm", "erp")

SLOTS_QUERY = """
SELECT slot_name,
       active,
       pg_wal_lsn_diff(current.lsn, restart_lsn)::bigint AS retained,
       pg_wal_lsn_diff(current.lsn, confirmed_flush_lsn)::bigint AS behind
FROM pg_replication_slots,
     LATERAL (SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn()
                          ELSE pg_current_wal_lsn() END AS lsn) AS current
WHERE slot_type = 'logical' AND database = current_database()
"""


@dataclass(frozen=True)
class ExporterSettings:
    dsns: Mapping[str, str] = field(repr=False)
    #: the brokers and how to log in (None: no consumer-group lag)
    kafka: Kafka | None = field(repr=False)
    host: str = "0.0.0.0"
    port: int = 9400
    interval_s: float = 10.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ExporterSettings:
        env = os.environ if environ is None else environ
        return cls(
            dsns={
                db: env[f"AMBIDEX_{db.upper()}_DSN"]
                for db in DATABASES
                if env.get(f"AMBIDEX_{db.upper()}_DSN")
            },
            kafka=kafka_from_environment(bootstrap, env, client="ambidex-pipeline-exporter")
            if (bootstrap := env.get("AMBIDEX_KAFKA_BOOTSTRAP"))
            else None,
            host=env.get("AMBIDEX_METRICS_HOST", "0.0.0.0"),
            port=int(env.get("AMBIDEX_METRICS_PORT", 9400)),
            interval_s=float(env.get("AMBIDEX_EXPORTER_INTERVAL_S", 10)),
        )


@dataclass(frozen=True)
class SlotReading:
    database: str
    slot: str
    active: bool
    retained_bytes: int
    behind_bytes: int


@dataclass(frozen=True)
class GroupOffset:
    group: str
    topic: str
    partition: int
    committed: int
    end: int

    @property
    def lag(self) -> int:
        return max(0, self.end - self.committed)


@dataclass
class Snapshot:
    """The last readings; a source that failed keeps ``up`` 0 and no readings."""

    slots: list[SlotReading] = field(default_factory=list)
    database_up: dict[str, bool] = field(default_factory=dict)
    groups: list[GroupOffset] = field(default_factory=list)
    ends: dict[tuple[str, int], int] = field(default_factory=dict)
    kafka_up: bool | None = None


class SnapshotCollector(Collector):
    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield from families(self.snapshot)


def families(snapshot: Snapshot) -> Iterator[GaugeMetricFamily]:
    """The metric families of one snapshot (pure: what a scrape shows)."""
    up = GaugeMetricFamily(
        "ambidex_exporter_database_up",
        "Whether the pipeline exporter's last reading of the database's slots succeeded.",
        labels=["database"],
    )
    retained = GaugeMetricFamily(
        "ambidex_replication_slot_retained_wal_bytes",
        "WAL the logical replication slot keeps on the server's disk (current LSN - "
        "restart_lsn): grows without bound while its connector is stopped.",
        labels=["database", "slot"],
    )
    behind = GaugeMetricFamily(
        "ambidex_replication_slot_confirmed_lag_bytes",
        "WAL between the current LSN and the slot's confirmed_flush_lsn (what the "
        "connector has not yet confirmed).",
        labels=["database", "slot"],
    )
    active = GaugeMetricFamily(
        "ambidex_replication_slot_active",
        "1 while a connector streams from the slot, 0 when none is attached.",
        labels=["database", "slot"],
    )
    for database, ok in sorted(snapshot.database_up.items()):
        up.add_metric([database], 1.0 if ok else 0.0)
    for reading in snapshot.slots:
        labels = [reading.database, reading.slot]
        retained.add_metric(labels, float(reading.retained_bytes))
        behind.add_metric(labels, float(reading.behind_bytes))
        active.add_metric(labels, 1.0 if reading.active else 0.0)
    yield from (up, retained, behind, active)
    if snapshot.kafka_up is None:
        return  # consumer-group lag is Kafka Exporter's here
    kafka_up = GaugeMetricFamily(
        "ambidex_exporter_kafka_up",
        "Whether the pipeline exporter's last reading of consumer-group offsets succeeded.",
    )
    kafka_up.add_metric([], 1.0 if snapshot.kafka_up else 0.0)
    lag = GaugeMetricFamily(
        "kafka_consumergroup_lag",
        "Messages between the group's committed offset and the partition's end (as Kafka "
        "Exporter names it).",
        labels=["consumergroup", "topic", "partition"],
    )
    current = GaugeMetricFamily(
        "kafka_consumergroup_current_offset",
        "The group's committed offset (as Kafka Exporter names it).",
        labels=["consumergroup", "topic", "partition"],
    )
    for offset in snapshot.groups:
        labels = [offset.group, offset.topic, str(offset.partition)]
        lag.add_metric(labels, float(offset.lag))
        current.add_metric(labels, float(offset.committed))
    ends = GaugeMetricFamily(
        "kafka_topic_partition_current_offset",
        "The partition's end offset (as Kafka Exporter names it).",
        labels=["topic", "partition"],
    )
    for (topic, partition), end in sorted(snapshot.ends.items()):
        ends.add_metric([topic, str(partition)], float(end))
    yield from (kafka_up, lag, current, ends)


async def read_slots(database: str, dsn: str) -> list[SlotReading]:
    import asyncpg

    connection = await asyncpg.connect(dsn, timeout=5)
    try:
        rows = await connection.fetch(SLOTS_QUERY, timeout=5)
    finally:
        await connection.close()
    return [
        SlotReading(
            database,
            row["slot_name"],
            bool(row["active"]),
            int(row["retained"] or 0),
            int(row["behind"] or 0),
        )
        for row in rows
    ]


async def read_group_offsets(
    kafka: Kafka,
) -> tuple[list[GroupOffset], dict[tuple[str, int], int]]:
    """Every consumer group's committed offsets with their partitions' end offsets."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**client_options(kafka), request_timeout_ms=10_000)
    await admin.start()  # a refused login fails here, before a consumer exists to leak
    consumer = AIOKafkaConsumer(**client_options(kafka), enable_auto_commit=False)
    try:
        await consumer.start()
        committed: dict[str, dict[Any, int]] = {}
        for group, protocol in await admin.list_consumer_groups():
            if protocol not in ("consumer", ""):
                continue  # Connect's worker group: no offsets of its own
            offsets = await admin.list_consumer_group_offsets(group)
            committed[group] = {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}
        partitions = {tp for offsets in committed.values() for tp in offsets}
        ends = await consumer.end_offsets(list(partitions)) if partitions else {}
    finally:
        await consumer.stop()
        await admin.close()
    readings = [
        GroupOffset(group, tp.topic, tp.partition, offset, ends[tp])
        for group, offsets in sorted(committed.items())
        for tp, offset in sorted(offsets.items())
        if tp in ends
    ]
    return readings, {(tp.topic, tp.partition): end for tp, end in ends.items()}


async def refresh(settings: ExporterSettings, snapshot: Snapshot) -> None:
    slots: list[SlotReading] = []
    for database, dsn in settings.dsns.items():
        try:
            slots.extend(await read_slots(database, dsn))
            snapshot.database_up[database] = True
        except Exception as error:  # reported as up=0, retried next round
            snapshot.database_up[database] = False
            log.warning("reading %s replication slots failed: %s", database, type(error).__name__)
    snapshot.slots = slots
    if settings.kafka is None:
        return
    try:
        snapshot.groups, snapshot.ends = await asyncio.wait_for(
            read_group_offsets(settings.kafka), timeout=30
        )
        snapshot.kafka_up = True
    except Exception as error:  # reported as up=0, retried next round
        snapshot.kafka_up = False
        snapshot.groups, snapshot.ends = [], {}
        log.warning("reading consumer-group offsets failed: %s", type(error).__name__)


async def run(settings: ExporterSettings) -> None:
    snapshot = Snapshot(kafka_up=None if settings.kafka is None else False)
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(snapshot))
    await refresh(settings, snapshot)
    start_http_server(settings.port, addr=settings.host, registry=registry)
    log.info("serving on %s:%s", settings.host, settings.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=settings.interval_s)
        except TimeoutError:
            await refresh(settings, snapshot)


def main() -> None:
    from services.shared.logs import configure_logging

    configure_logging(service="pipeline-exporter")
    asyncio.run(run(ExporterSettings.from_env()))


if __name__ == "__main__":
    main()

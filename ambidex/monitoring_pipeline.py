"""Alert rules of the pipeline around the services: capture (Debezium in Kafka Connect),
the replication slots, Kafka and the consumer groups.

The metrics come from the JMX exporter rules in ``deploy/monitoring/jmx/`` (Kafka,
Connect, Debezium) and the pipeline exporter (:mod:`ambidex.pipeline_exporter`: slots,
and consumer-group lag under Kafka Exporter's names, which Strimzi's Kafka Exporter serves
on Kubernetes). The exporters' ``absent()`` alerts name metrics, not scrape jobs: a
PodMonitor's job name is the operator's, a metric's name is ours.
"""

from __future__ import annotations

from typing import Any

from ambidex.connectors import load_connectors
from services.registry import SERVICE_MODULES

GIB = 1024**3
#: retained WAL that warrants a look (a connector stopped for a while on a busy database)
SLOT_RETAINED_WARNING_BYTES = 2 * GIB
#: retained WAL that will fill a small volume soon
SLOT_RETAINED_CRITICAL_BYTES = 10 * GIB
#: Debezium's MilliSecondsBehindSource past which capture is late
CAPTURE_BEHIND_MS = 60_000
DATABASES = ("crm", "erp")


def connector_names() -> list[str]:
    return sorted(c.name for c in load_connectors(_placeholder_values()))


def _placeholder_values() -> dict[str, str]:
    # the connector files' names do not depend on the values; these only fill them in
    return {
        "crm_db_host": "crm",
        "crm_db_port": "5432",
        "erp_db_host": "erp",
        "erp_db_port": "5432",
        "heartbeat_interval_ms": "10000",
    }


def service_groups_regex() -> str:
    """The services' consumer groups (``ambidex-<service>.<purpose>``, deploy/access.yaml)."""
    return "ambidex-(" + "|".join(SERVICE_MODULES) + r")\\..+"


def _absent(alert: str, metric: str, what: str, selector: str = "") -> dict[str, Any]:
    return {
        "alert": alert,
        "expr": f"absent({metric}{selector})",
        "for": "10m",
        "labels": {"severity": "critical"},
        "annotations": {"summary": f"no {metric}{selector} for 10 minutes: {what}"},
    }


def pipeline_rules() -> list[dict[str, Any]]:
    lag = f'kafka_consumergroup_lag{{consumergroup=~"{service_groups_regex()}"}}'
    rules: list[dict[str, Any]] = [
        {
            "alert": "AmbidexConnectorNotRunning",
            "expr": 'kafka_connect_connector_status{status!="running"} == 1',
            "for": "5m",
            "labels": {"severity": "critical"},
            "annotations": {
                "summary": "connector {{ $labels.connector }} is {{ $labels.status }}: "
                "nothing is captured from its database",
            },
        },
        {
            "alert": "AmbidexConnectorTaskFailed",
            "expr": "max by (connector) "
            "(kafka_connect_worker_connector_connector_failed_task_count) > 0",
            "for": "2m",
            "labels": {"severity": "critical"},
            "annotations": {
                "summary": "connector {{ $labels.connector }} has {{ $value }} failed task(s)",
            },
        },
        *(
            {
                **_absent(
                    "AmbidexConnectorAbsent",
                    "kafka_connect_connector_status",
                    f"connector {name} is not deployed on any Connect worker",
                    f'{{connector="{name}"}}',
                ),
                "labels": {"severity": "critical", "connector": name},
            }
            for name in connector_names()
        ),
        {
            "alert": "AmbidexCaptureDisconnected",
            "expr": "debezium_postgres_streaming_connected == 0",
            "for": "2m",
            "labels": {"severity": "critical"},
            "annotations": {
                "summary": "Debezium {{ $labels.server }} is not connected to its database",
            },
        },
        {
            "alert": "AmbidexCaptureBehindSource",
            "expr": f"debezium_postgres_streaming_millisecondsbehindsource > {CAPTURE_BEHIND_MS}",
            "for": "10m",
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "Debezium {{ $labels.server }} captures changes "
                "{{ $value }} ms after their commit",
            },
        },
        {
            "alert": "AmbidexCaptureQueueNearlyFull",
            "expr": "debezium_postgres_streaming_queueremainingcapacity "
            "/ debezium_postgres_streaming_queuetotalcapacity < 0.1",
            "for": "5m",
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "Debezium {{ $labels.server }}'s queue is over 90% full: Kafka "
                "takes its records slower than the database produces them",
            },
        },
        {
            "alert": "AmbidexReplicationSlotRetainedWalHigh",
            "expr": f"ambidex_replication_slot_retained_wal_bytes > {SLOT_RETAINED_WARNING_BYTES}",
            "for": "10m",
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "slot {{ $labels.slot }} on {{ $labels.database }} retains "
                "{{ $value | humanize1024 }}B of WAL",
            },
        },
        {
            "alert": "AmbidexReplicationSlotRetainedWalCritical",
            "expr": f"ambidex_replication_slot_retained_wal_bytes > {SLOT_RETAINED_CRITICAL_BYTES}",
            "for": "5m",
            "labels": {"severity": "critical"},
            "annotations": {
                "summary": "slot {{ $labels.slot }} on {{ $labels.database }} retains "
                "{{ $value | humanize1024 }}B of WAL: the database's disk fills",
            },
        },
        {
            "alert": "AmbidexReplicationSlotInactive",
            "expr": "ambidex_replication_slot_active == 0",
            "for": "10m",
            "labels": {"severity": "critical"},
            "annotations": {
                "summary": "no connector streams from slot {{ $labels.slot }} on "
                "{{ $labels.database }}: it retains WAL until one does",
            },
        },
        *(
            {
                **_absent(
                    "AmbidexReplicationSlotMissing",
                    "ambidex_replication_slot_active",
                    f"{database} has no logical replication slot (dropped, or the "
                    "exporter cannot read it): changes since are not captured",
                    f'{{database="{database}"}}',
                ),
                "labels": {"severity": "critical", "database": database},
            }
            for database in DATABASES
        ),
        {
            "alert": "AmbidexConsumerGroupLagGrowing",
            "expr": f"sum by (consumergroup, topic) ({lag}) > 1000 "
            f"and sum by (consumergroup, topic) (deriv({lag}[10m])) > 0",
            "for": "15m",
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "group {{ $labels.consumergroup }} falls further behind on "
                "{{ $labels.topic }} ({{ $value }} messages)",
            },
        },
        {
            "alert": "AmbidexKafkaUnderReplicatedPartitions",
            "expr": "sum(kafka_server_replicamanager_underreplicatedpartitions) > 0",
            "for": "10m",
            "labels": {"severity": "warning"},
            "annotations": {"summary": "{{ $value }} partitions are under-replicated"},
        },
        {
            "alert": "AmbidexKafkaOfflinePartitions",
            "expr": "sum(kafka_controller_kafkacontroller_offlinepartitionscount) > 0",
            "for": "2m",
            "labels": {"severity": "critical"},
            "annotations": {"summary": "{{ $value }} partitions have no leader"},
        },
        {
            "alert": "AmbidexPipelineExporterFailing",
            "expr": "ambidex_exporter_database_up == 0 or ambidex_exporter_kafka_up == 0",
            "for": "5m",
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "the pipeline exporter cannot read "
                "{{ with $labels.database }}{{ . }}{{ else }}Kafka{{ end }}",
            },
        },
        _absent(
            "AmbidexKafkaMetricsAbsent",
            "kafka_server_replicamanager_partitioncount",
            "the broker's JMX exporter is not scraped",
        ),
        _absent(
            "AmbidexConnectMetricsAbsent",
            "kafka_connect_worker_connector_count",
            "the Connect worker's JMX exporter is not scraped",
        ),
        _absent(
            "AmbidexPipelineExporterAbsent",
            "ambidex_exporter_database_up",
            "the pipeline exporter (replication slots) is not scraped",
        ),
        _absent(
            "AmbidexConsumerLagMetricsAbsent",
            "kafka_topic_partition_current_offset",
            "neither Kafka Exporter nor the pipeline exporter's lag is scraped",
        ),
    ]
    return rules

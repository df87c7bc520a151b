"""The pipeline exporter shows what it last read, under the names the dashboards and
alerts use: slots per database, consumer-group lag under Kafka Exporter's names (only
where it computes lag), and a failed source as ``up`` 0 instead of stale values; it logs
in to Kafka with the services' ``AMBIDEX_KAFKA_*`` settings (docker-compose's broker
takes only logins)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from ambidex.pipeline_exporter import (
    ExporterSettings,
    GroupOffset,
    SlotReading,
    Snapshot,
    SnapshotCollector,
)
from services.shared.kafka import KafkaConnection


def scrape(snapshot: Snapshot) -> str:
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(snapshot))
    return generate_latest(registry).decode()


def test_slots_and_group_lag_are_exported_per_database_and_group() -> None:
    text = scrape(
        Snapshot(
            slots=[SlotReading("crm", "ambidex_crm", False, 5_000_000, 4_000)],
            database_up={"crm": True, "erp": False},
            groups=[GroupOffset("order-sync", "cdc.crm.sales_order", 0, 90, 100)],
            ends={("cdc.crm.sales_order", 0): 100},
            kafka_up=True,
        )
    )
    assert (
        'ambidex_replication_slot_retained_wal_bytes{database="crm",slot="ambidex_crm"} 5e+06'
        in text
    )
    assert 'ambidex_replication_slot_active{database="crm",slot="ambidex_crm"} 0.0' in text
    assert 'ambidex_exporter_database_up{database="erp"} 0.0' in text
    assert (
        'kafka_consumergroup_lag{consumergroup="order-sync",partition="0",'
        'topic="cdc.crm.sales_order"} 10.0' in text
    )
    assert 'kafka_topic_partition_current_offset{partition="0",topic="cdc.crm.sales_order"}' in text


def test_without_kafka_no_lag_series_are_exported() -> None:
    text = scrape(Snapshot(database_up={"crm": True}, kafka_up=None))
    assert "kafka_consumergroup_lag" not in text
    assert "ambidex_exporter_kafka_up" not in text


def test_a_committed_offset_past_the_end_is_no_negative_lag() -> None:
    assert GroupOffset("g", "t", 0, committed=12, end=10).lag == 0


def test_settings_take_only_the_databases_given() -> None:
    settings = ExporterSettings.from_env(
        {"AMBIDEX_ERP_DSN": "postgresql://x@h/erp", "AMBIDEX_METRICS_PORT": "9500"}
    )
    assert list(settings.dsns) == ["erp"]
    assert settings.kafka is None
    assert settings.port == 9500
    assert "postgresql" not in repr(settings)


def test_settings_log_in_to_kafka_as_a_service_does() -> None:
    plain = ExporterSettings.from_env({"AMBIDEX_KAFKA_BOOTSTRAP": "kafka:9092"})
    assert plain.kafka == "kafka:9092"
    secured = ExporterSettings.from_env({
        "AMBIDEX_KAFKA_BOOTSTRAP": "kafka:9092",
        "AMBIDEX_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "AMBIDEX_KAFKA_SASL_MECHANISM": "PLAIN",
        "AMBIDEX_KAFKA_SASL_USERNAME": "ambidex-pipeline-exporter",
        "AMBIDEX_KAFKA_SASL_PASSWORD": "s3cret-value",
    })
    assert isinstance(secured.kafka, KafkaConnection)
    assert (secured.kafka.bootstrap, secured.kafka.sasl_username, secured.kafka.sasl_password) == (
        "kafka:9092", "ambidex-pipeline-exporter", "s3cret-value")
    assert "s3cret-value" not in repr(secured)

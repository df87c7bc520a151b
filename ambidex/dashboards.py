"""Grafana dashboards, generated: a pipeline overview and one per service.

Written to ``deploy/monitoring/dashboards/*.json`` by ``ambidex monitoring render``
(checked current by ``ambidex monitoring validate`` in ``bin/ambidex lint``) and shipped
on Kubernetes as a ConfigMap labelled ``grafana_dashboard: "1"`` for Grafana's dashboard
sidecar. Every panel reads the ``datasource`` variable (a Prometheus data source).

The metric names are the ones the live stack exports (the services' ``ambidex_*``, the
JMX exporter rules of ``deploy/monitoring/jmx/``, the pipeline exporter's); the
integration test ``tests/integration/test_pipeline_metrics.py`` scrapes them all and
fails on a name no exporter serves (:mod:`ambidex.promql_names`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ambidex.dashboard_panels import (
    RATE,
    Row,
    memory_panels,
    panel_of,
    quantile,
    service_panels,
)
from ambidex.monitoring_pipeline import service_groups_regex
from services.registry import SERVICE_MODULES

DASHBOARDS_DIR = Path(__file__).resolve().parent.parent / "deploy" / "monitoring" / "dashboards"
SCHEMA_VERSION = 39
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def pipeline_rows() -> list[Row]:
    groups = f'{{consumergroup=~"{service_groups_regex()}"}}'
    return [
        Row(
            "Capture (Debezium in Kafka Connect)",
            (
                panel_of(
                    "Connector status",
                    "kafka_connect_connector_status == 1",
                    "{{connector}} {{status}}",
                    kind="stat",
                    width=6,
                ),
                panel_of(
                    "Failed tasks",
                    "sum by (connector) "
                    "(kafka_connect_worker_connector_connector_failed_task_count)",
                    "{{connector}}",
                    kind="stat",
                    width=6,
                ),
                panel_of(
                    "Connected to the database",
                    "debezium_postgres_streaming_connected",
                    "{{server}}",
                    kind="stat",
                    width=6,
                ),
                panel_of(
                    "Capture lag (behind source)",
                    "debezium_postgres_streaming_millisecondsbehindsource",
                    "{{server}}",
                    "ms",
                    width=6,
                ),
                panel_of(
                    "Changes captured / s",
                    f"rate(debezium_postgres_streaming_totalnumberofeventsseen{RATE})",
                    "{{server}}",
                    "ops",
                ),
                panel_of(
                    "Queue fill",
                    "1 - debezium_postgres_streaming_queueremainingcapacity "
                    "/ debezium_postgres_streaming_queuetotalcapacity",
                    "{{server}}",
                    "percentunit",
                ),
            ),
        ),
        Row(
            "Replication slots",
            (
                panel_of(
                    "Retained WAL",
                    "ambidex_replication_slot_retained_wal_bytes",
                    "{{database}} {{slot}}",
                    "bytes",
                ),
                panel_of(
                    "Slot active",
                    "ambidex_replication_slot_active",
                    "{{database}} {{slot}}",
                    kind="stat",
                ),
            ),
        ),
        Row(
            "Kafka",
            (
                panel_of(
                    "CDC messages in / s",
                    "sum by (topic) (rate(kafka_server_brokertopicmetrics_"
                    f'messagesin_total{{topic=~"cdc\\\\..+"}}{RATE}))',
                    "{{topic}}",
                    "ops",
                ),
                panel_of(
                    "Under-replicated / offline partitions",
                    "sum(kafka_server_replicamanager_"
                    "underreplicatedpartitions) + sum(kafka_controller_kafkacontroller_"
                    "offlinepartitionscount)",
                    "partitions",
                    kind="stat",
                ),
                panel_of(
                    "Bytes in / out",
                    f"sum(rate(kafka_server_brokertopicmetrics_bytesin_total{RATE}))",
                    "in",
                    "Bps",
                ),
                panel_of(
                    "Log size by topic", "sum by (topic) (kafka_log_log_size)", "{{topic}}", "bytes"
                ),
            ),
        ),
        Row(
            "Services",
            (
                panel_of(
                    "Consumer-group lag",
                    f"sum by (consumergroup) (kafka_consumergroup_lag{groups})",
                    "{{consumergroup}}",
                ),
                panel_of(
                    "Events / s by outcome",
                    f"sum by (service, outcome) (rate(ambidex_events_total{RATE}))",
                    "{{service}} {{outcome}}",
                    "ops",
                ),
                panel_of(
                    "Dead letters / s",
                    f"sum by (service, reason_kind) (rate(ambidex_dead_letters_total{RATE}))",
                    "{{service}} {{reason_kind}}",
                    "ops",
                ),
                panel_of(
                    "Rejected transactions / s",
                    f"sum by (service, cause) (rate(ambidex_rejected_transactions_total{RATE}))",
                    "{{service}} {{cause}}",
                    "ops",
                ),
                panel_of(
                    "Services up",
                    'up{job=~"' + "|".join(SERVICE_MODULES) + '"}',
                    "{{job}}",
                    kind="stat",
                    width=24,
                ),
            ),
        ),
        Row(
            "Write-back and publication",
            (
                panel_of(
                    "End-to-end lag p99 (source commit to effect)",
                    quantile(0.99, "ambidex_end_to_end_lag_seconds", "service, path"),
                    "{{service}} {{path}}",
                    "s",
                ),
                panel_of(
                    "Sink transaction p99",
                    quantile(0.99, "ambidex_sink_latency_seconds", "service, sink"),
                    "{{service}} {{sink}}",
                    "s",
                ),
                panel_of(
                    "Rows written / s",
                    f"sum by (service, sink, outcome) (rate(ambidex_sink_rows_total{RATE}))",
                    "{{service}} {{sink}} {{outcome}}",
                    "ops",
                ),
                panel_of(
                    "Retries / s",
                    f"sum by (service, kind) (rate(ambidex_retries_total{RATE}))",
                    "{{service}} {{kind}}",
                    "ops",
                ),
            ),
        ),
    ]


def service_rows(service: str) -> list[Row]:
    s = f'service="{service}"'
    by = "sum by ({}) (rate({}{{" + s + "}}" + RATE + "))"
    return [
        Row(
            "Health",
            (
                panel_of("Up", f'up{{job="{service}"}}', "{{instance}}", kind="stat", width=6),
                panel_of(
                    "Event loop blocked (max, 1 min)",
                    f"ambidex_event_loop_lag_max_seconds{{{s}}}",
                    "max",
                    "s",
                    width=6,
                ),
                panel_of(
                    "Source silence",
                    f"time() - ambidex_last_source_commit_timestamp_seconds{{{s}}}",
                    "{{database}}",
                    "s",
                    width=6,
                ),
                panel_of(
                    "State restore at start",
                    f"ambidex_state_restore_seconds{{{s}}}",
                    "seconds",
                    "s",
                    kind="stat",
                    width=6,
                ),
            ),
        ),
        Row(
            "Intake",
            (
                panel_of(
                    "Events / s",
                    by.format("topic, outcome", "ambidex_events_total"),
                    "{{topic}} {{outcome}}",
                    "ops",
                ),
                panel_of(
                    "Consumer lag",
                    f"sum by (topic) (ambidex_consumer_lag_messages{{{s}}})",
                    "{{topic}}",
                ),
                panel_of("Held transactions", f"ambidex_held_transactions{{{s}}}", "{{database}}"),
                panel_of(
                    "Oldest held transaction",
                    f"ambidex_oldest_held_transaction_age_seconds{{{s}}}",
                    "{{database}}",
                    "s",
                ),
            ),
        ),
        Row(
            "Errors",
            (
                panel_of(
                    "Dead letters / s",
                    by.format("reason_kind", "ambidex_dead_letters_total"),
                    "{{reason_kind}}",
                    "ops",
                ),
                panel_of(
                    "Rejected transactions / s",
                    by.format("database, cause", "ambidex_rejected_transactions_total"),
                    "{{database}} {{cause}}",
                    "ops",
                ),
                panel_of(
                    "Retries / s", by.format("kind", "ambidex_retries_total"), "{{kind}}", "ops"
                ),
                # every service counts the TRUNCATEs it sees (services.shared.truncates)
                panel_of(
                    "Truncates",
                    f"sum by (table, answer) (ambidex_source_truncates_total{{{s}}})",
                    "{{table}} {{answer}}",
                ),
            ),
        ),
        Row(
            "Effects",
            (
                panel_of(
                    "End-to-end lag p99",
                    quantile(0.99, "ambidex_end_to_end_lag_seconds", "path", f"{{{s}}}"),
                    "p99 {{path}}",
                    "s",
                ),
                # the service's own share (from the transaction's last record in Kafka):
                # end to end minus this is Debezium's capture
                panel_of(
                    "Service's own lag p99 (Kafka to effect)",
                    quantile(0.99, "ambidex_service_lag_seconds", "path", f"{{{s}}}"),
                    "p99 {{path}}",
                    "s",
                ),
                panel_of(
                    "Sink transaction p99",
                    quantile(0.99, "ambidex_sink_latency_seconds", "sink", f"{{{s}}}"),
                    "{{sink}}",
                    "s",
                ),
                panel_of(
                    "Rows written / s",
                    by.format("sink, outcome", "ambidex_sink_rows_total"),
                    "{{sink}} {{outcome}}",
                    "ops",
                ),
                panel_of("State table keys", f"ambidex_table_rows{{{s}}}", "{{table}}"),
            ),
        ),
        Row("Memory", memory_panels(service)),
        Row(service, service_panels(service)),
    ]


def _panels(rows: list[Row]) -> Iterator[dict[str, Any]]:
    y = 0
    ids = iter(range(1, 1000))
    for row in rows:
        yield {
            "type": "row",
            "id": next(ids),
            "title": row.title,
            "collapsed": False,
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
            "panels": [],
        }
        y += 1
        x = 0
        for panel in row.panels:
            if x + panel.width > 24:
                x, y = 0, y + 8
            yield {
                "type": panel.kind,
                "id": next(ids),
                "title": panel.title,
                "description": panel.description,
                "datasource": DATASOURCE,
                "gridPos": {"h": 8, "w": panel.width, "x": x, "y": y},
                "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
                "options": {},
                "targets": [
                    {
                        "refId": chr(ord("A") + i),
                        "datasource": DATASOURCE,
                        "expr": expr,
                        "legendFormat": legend,
                    }
                    for i, (expr, legend) in enumerate(panel.targets)
                ],
            }
            x += panel.width
        y += 8


def dashboard(uid: str, title: str, rows: list[Row], tags: list[str]) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "tags": ["ambidex", *tags],
        "editable": True,
        "schemaVersion": SCHEMA_VERSION,
        "time": {"from": "now-3h", "to": "now"},
        "refresh": "30s",
        "timezone": "utc",
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                }
            ]
        },
        "annotations": {"list": []},
        "panels": list(_panels(rows)),
    }


def dashboards() -> dict[str, dict[str, Any]]:
    """File name -> dashboard model."""
    boards = {
        "pipeline.json": dashboard(
            "ambidex-pipeline",
            "Ambidex: pipeline (capture, Kafka, services, write-back)",
            pipeline_rows(),
            ["pipeline"],
        )
    }
    for service in SERVICE_MODULES:
        boards[f"service-{service}.json"] = dashboard(
            f"ambidex-{service}", f"Ambidex: {service}", service_rows(service), ["service"]
        )
    return boards


def rendered_dashboards(directory: Path = DASHBOARDS_DIR) -> dict[Path, str]:
    return {
        directory / name: json.dumps(board, indent=1) + "\n" for name, board in dashboards().items()
    }


def panel_expressions(board: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in board.get("panels", []) for t in p.get("targets", [])]


#: what Grafana needs of a dashboard model and of each panel to import and draw it
REQUIRED_DASHBOARD = ("uid", "title", "schemaVersion", "panels", "templating")
REQUIRED_PANEL = ("id", "type", "title", "gridPos")


def check_dashboard(name: str, board: Any) -> list[str]:
    """Problems of one dashboard model (empty: Grafana can import it)."""
    if not isinstance(board, dict):
        return [f"{name}: not a JSON object"]
    problems = [f"{name}: no {key}" for key in REQUIRED_DASHBOARD if key not in board]
    ids = [p.get("id") for p in board.get("panels", [])]
    if len(ids) != len(set(ids)):
        problems.append(f"{name}: panel ids repeat")
    for panel in board.get("panels", []):
        where = f"{name}: panel {panel.get('title', '?')!r}"
        problems += [f"{where}: no {key}" for key in REQUIRED_PANEL if key not in panel]
        grid = panel.get("gridPos", {})
        if not all(isinstance(grid.get(k), int) for k in ("h", "w", "x", "y")) or (
            grid.get("x", 0) + grid.get("w", 0) > 24
        ):
            problems.append(f"{where}: gridPos must be integers within 24 columns")
        if panel.get("type") != "row":
            targets = panel.get("targets") or []
            if not targets or not all(t.get("expr") and t.get("refId") for t in targets):
                problems.append(f"{where}: every target needs expr and refId")
    return problems


def check_dashboards(directory: Path = DASHBOARDS_DIR) -> list[str]:
    """Each file parses as JSON and has what Grafana needs; uids are unique."""
    problems: list[str] = []
    uids: dict[str, str] = {}
    for path in sorted(directory.glob("*.json")):
        try:
            board = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            problems.append(f"{path.name}: not JSON ({error})")
            continue
        problems += check_dashboard(path.name, board)
        uid = board.get("uid") if isinstance(board, dict) else None
        if uid in uids:
            problems.append(f"{path.name}: uid {uid} also in {uids[uid]}")
        uids[str(uid)] = path.name
    return problems

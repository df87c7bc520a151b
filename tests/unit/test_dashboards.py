"""The Grafana dashboards (ambidex/dashboards.py -> deploy/monitoring/dashboards/) and the
PromQL metric-name reader the live-stack test checks them with.

Invariants: the files are current and Grafana can import each (uid, title, panels with
ids, grid positions, targets); there is a pipeline dashboard and one per service of this
build, none for another; the name reader finds exactly the metrics an expression reads,
so a dashboard naming a metric no exporter serves is caught (see
tests/integration/test_pipeline_metrics.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ambidex.dashboards import (
    check_dashboard,
    check_dashboards,
    dashboards,
    panel_expressions,
    rendered_dashboards,
)
from ambidex.monitoring import alert_rules
from ambidex.promql_names import exposed_names, metric_names, scraped_families
from services.registry import SERVICE_MODULES


def test_the_dashboard_files_are_current_and_importable() -> None:
    for path, text in rendered_dashboards().items():
        assert path.read_text() == text, "run: ambidex monitoring render"
    assert check_dashboards() == []


def test_one_pipeline_dashboard_and_one_per_service_of_the_build() -> None:
    assert set(dashboards()) == {
        "pipeline.json",
        *(f"service-{name}.json" for name in SERVICE_MODULES),
    }


def test_a_broken_dashboard_is_reported(tmp_path: Path) -> None:
    board = dashboards()["pipeline.json"]
    del board["uid"]
    board["panels"][1]["targets"] = [{"refId": "A"}]
    board["panels"][2]["gridPos"] = {"h": 8, "w": 20, "x": 12, "y": 0}
    problems = check_dashboard("pipeline.json", board)
    assert "pipeline.json: no uid" in problems
    assert any("every target needs expr" in p for p in problems)
    assert any("within 24 columns" in p for p in problems)
    (tmp_path / "bad.json").write_text("{not json")
    assert check_dashboards(tmp_path)[0].startswith("bad.json: not JSON")


def test_every_service_metric_on_a_service_dashboard_selects_that_service() -> None:
    for service in SERVICE_MODULES:
        board = dashboards()[f"service-{service}.json"]
        for expr in panel_expressions(board):
            for match in re.finditer(r"(ambidex_\w+)(\{[^}]*\})?", expr):
                assert f'service="{service}"' in (match.group(2) or ""), (service, expr)


@pytest.mark.parametrize(
    ("expression", "names"),
    [
        ('up{job="order-sync"} == 0', {"up"}),
        (
            "histogram_quantile(0.99, sum by (service, path, le) "
            '(rate(ambidex_end_to_end_lag_seconds_bucket{service="x"}[5m]))) > 5',
            {"ambidex_end_to_end_lag_seconds_bucket"},
        ),
        (
            'sum by (consumergroup, topic) (kafka_consumergroup_lag{consumergroup=~"a|b"}) > 1000'
            " and sum by (consumergroup, topic) (deriv(kafka_consumergroup_lag[10m])) > 0",
            {"kafka_consumergroup_lag"},
        ),
        (
            "1 - debezium_postgres_streaming_queueremainingcapacity "
            "/ on (server) group_left debezium_postgres_streaming_queuetotalcapacity",
            {
                "debezium_postgres_streaming_queueremainingcapacity",
                "debezium_postgres_streaming_queuetotalcapacity",
            },
        ),
        (
            "time() - ambidex_last_source_commit_timestamp_seconds offset 5m",
            {"ambidex_last_source_commit_timestamp_seconds"},
        ),
        (
            'absent(kafka_connect_connector_status{connector="ambidex-crm"})',
            {"kafka_connect_connector_status"},
        ),
        ("rate(x_total[5m:1m]) * 1e3 > bool Inf", {"x_total"}),
    ],
)
def test_the_name_reader_finds_the_metrics_an_expression_reads(
    expression: str, names: set[str]
) -> None:
    assert metric_names(expression) == names


def test_a_wrong_metric_name_is_found_missing_from_a_scrape() -> None:
    scraped = exposed_names(
        scraped_families(
            "# HELP ambidex_events_total Events.\n# TYPE ambidex_events_total counter\n"
            "# HELP debezium_postgres_streaming_connected c\n"
            "# TYPE debezium_postgres_streaming_connected gauge\n"
            'debezium_postgres_streaming_connected{server="cdc.crm"} 1.0\n'
        )
    )
    good = metric_names("sum(rate(ambidex_events_total[5m])) * up")
    wrong = metric_names("debezium_postgres_streaming_conected == 0")  # misspelt
    assert good <= scraped
    assert wrong - scraped == {"debezium_postgres_streaming_conected"}


def test_every_alert_and_panel_expression_names_at_least_one_metric() -> None:
    expressions = [r["expr"] for g in alert_rules()["groups"] for r in g["rules"]]
    expressions += [e for b in dashboards().values() for e in panel_expressions(b)]
    for expression in expressions:
        assert metric_names(expression), expression


def test_the_dashboard_json_is_what_grafana_reads() -> None:
    board = json.loads(next(iter(rendered_dashboards().values())))
    assert board["templating"]["list"][0]["type"] == "datasource"
    assert all(p["datasource"]["uid"] == "${datasource}" for p in board["panels"] if "targets" in p)

"""The alert rules (ambidex/monitoring.py -> deploy/monitoring/alerts.yaml, and the
Kubernetes PrometheusRule).

Invariants: the rule file is current; every service of this build has a down and an
absent alert and no alert names a service that does not exist yet; every alert links a
runbook section that exists; the PrometheusRule carries the same rules. (promtool checks
and unit-tests the file in `bin/ambidex lint`.)
"""

from __future__ import annotations

import re
from pathlib import Path

from ambidex.compose import load_compose
from ambidex.manifests import prometheus_rule
from ambidex.monitoring import (
    RULES_FILE,
    alert_rules,
    render,
    rendered_files,
    rule_files,
    scrape_jobs,
)
from ambidex.monitoring_pipeline import connector_names, service_groups_regex
from services.registry import SERVICE_MODULES

RUNBOOKS = Path(__file__).resolve().parents[2] / "docs" / "runbooks.md"


def _rules() -> list[dict[str, object]]:
    return [rule for group in alert_rules()["groups"] for rule in group["rules"]]


def test_the_rule_file_is_current() -> None:
    assert RULES_FILE.read_text() == render(), "run: ambidex monitoring render"


def test_every_generated_monitoring_file_is_current() -> None:
    for path, text in rendered_files().items():
        assert path.read_text() == text, f"{path} is stale: run ambidex monitoring render"


def test_the_pipeline_alerts_name_only_this_builds_services_and_connectors() -> None:
    regex = service_groups_regex()
    assert all(name in regex for name in SERVICE_MODULES)
    assert re.fullmatch(regex.replace("\\\\", "\\"), "ambidex-order-sync.crm")
    assert not re.fullmatch(regex.replace("\\\\", "\\"), "ambidex-planned-service.x")
    absent = {
        str(rule["labels"]["connector"])  # type: ignore[index]
        for rule in _rules()
        if rule["alert"] == "AmbidexConnectorAbsent"
    }
    assert absent == set(connector_names()) == {"ambidex-crm", "ambidex-erp"}


def test_every_service_of_the_build_has_a_down_and_an_absent_alert_and_no_other() -> None:
    absent = {
        str(rule["labels"]["service"])  # type: ignore[index]
        for rule in _rules()
        if rule["alert"] == "AmbidexServiceAbsent"
    }
    assert absent == set(SERVICE_MODULES)  # none for a service this build does not have
    down = next(rule for rule in _rules() if rule["alert"] == "AmbidexServiceDown")
    assert all(name in str(down["expr"]) for name in SERVICE_MODULES)


def test_every_alert_links_a_runbook_section_that_exists() -> None:
    headings = {
        re.sub(r"[^a-z0-9-]", "", line[3:].strip().lower().replace(" ", "-"))
        for line in RUNBOOKS.read_text().splitlines()
        if line.startswith("## ")
    }
    for rule in _rules():
        url = str(rule["annotations"]["runbook_url"])  # type: ignore[index]
        path, anchor = url.split("#")
        assert path == "docs/runbooks.md" and anchor in headings, (rule["alert"], url)


def test_the_prometheusrule_carries_the_same_rules() -> None:
    assert prometheus_rule()["spec"] == alert_rules()


def test_the_compose_prometheus_scrapes_each_service_under_its_name() -> None:
    assert scrape_jobs() == {
        **{name: f"{name}:9400" for name in SERVICE_MODULES},
        "kafka": "kafka:9410",
        "kafka-connect": "connect:9411",
        "pipeline-exporter": "pipeline-exporter:9400",
    }
    assert {"alerts.yaml", "pipeline-alerts.yaml"} <= set(rule_files())
    compose = load_compose()["services"]
    assert "../monitoring:/etc/prometheus:ro" in compose["prometheus"]["volumes"]
    for name in SERVICE_MODULES:
        assert "9400" in str(compose[name]["healthcheck"]["test"])

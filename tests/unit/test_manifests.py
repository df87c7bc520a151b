"""The Kubernetes manifests are generated from the project's declarations and stay so:
the committed files equal what `ambidex manifests render` produces, every declared topic
has a KafkaTopic, every connector a KafkaConnector with the same configuration, and
every core resource validates against the Kubernetes schema; service pods probe the
health endpoints, run as non-root with memory limits, and never run two side by side."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from ambidex.connectors import load_connectors
from ambidex.manifests import (
    COMPONENTS_DIR,
    DEFAULT_OUTPUT,
    DeploymentValues,
    render,
    render_components,
)
from ambidex.topics import load_topic_declaration
from tests.unit.kubernetes_policy import pod_policy_violations

RENDERED = render()
DOCUMENTS = [
    document
    for text in RENDERED.values()
    for document in yaml.safe_load_all(text)
    if document and document.get("kind") != "Kustomization"
]
CORE_KINDS = {
    "Namespace",
    "Deployment",
    "Service",
    "PodDisruptionBudget",
    "ServiceAccount",
    "NetworkPolicy",
}
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def _kind(kind: str) -> list[dict[str, Any]]:
    return [document for document in DOCUMENTS if document["kind"] == kind]


def test_committed_manifests_are_what_the_declarations_render() -> None:
    for name, text in RENDERED.items():
        path = DEFAULT_OUTPUT / name
        assert path.exists() and path.read_text() == text, (
            f"deploy/kubernetes/base/{name} is stale: run `ambidex manifests render`"
        )
    assert {p.name for p in DEFAULT_OUTPUT.glob("*.yaml")} == set(RENDERED)


def test_committed_components_are_what_the_declarations_render() -> None:
    rendered = render_components()
    for name, text in rendered.items():
        path = COMPONENTS_DIR / name
        assert path.exists() and path.read_text() == text, (
            f"deploy/kubernetes/components/{name} is stale: run `ambidex manifests render`"
        )
    committed = {str(p.relative_to(COMPONENTS_DIR)) for p in COMPONENTS_DIR.rglob("*.yaml")}
    assert committed == set(rendered)


def test_kustomization_lists_every_file() -> None:
    kustomization = yaml.safe_load(RENDERED["kustomization.yaml"])
    assert set(kustomization["resources"]) == set(RENDERED) - {"kustomization.yaml"}


@pytest.mark.parametrize(
    "document",
    [d for d in DOCUMENTS if d["kind"] in CORE_KINDS],
    ids=lambda d: f"{d['kind']}/{d['metadata']['name']}",
)
def test_core_resources_validate_against_the_kubernetes_schema(document: dict[str, Any]) -> None:
    kubernetes_validate.validate(document, "1.30", strict=True)


def test_every_declared_topic_has_a_kafka_topic() -> None:
    topics = {t["spec"]["topicName"]: t for t in _kind("KafkaTopic")}
    for spec in load_topic_declaration():
        topic = topics[spec.name]
        assert DNS_SUBDOMAIN.match(topic["metadata"]["name"])
        assert topic["spec"]["partitions"] == spec.partitions
        assert topic["spec"]["config"] == dict(spec.config)
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == "ambidex"


def test_connectors_match_their_versioned_configuration() -> None:
    values = DeploymentValues()
    expected = {
        c.name: c
        for c in load_connectors(
            {
                "crm_db_host": values.crm_db_host,
                "crm_db_port": values.crm_db_port,
                "erp_db_host": values.erp_db_host,
                "erp_db_port": values.erp_db_port,
                "heartbeat_interval_ms": values.heartbeat_interval_ms,
            }
        )
    }
    rendered = {c["metadata"]["name"]: c for c in _kind("KafkaConnector")}
    assert set(rendered) == set(expected)
    for name, connector in rendered.items():
        config = dict(expected[name].config)
        assert connector["spec"]["class"] == config.pop("connector.class")
        assert connector["spec"]["tasksMax"] == int(config.pop("tasks.max"))
        # Kubernetes gives each connector its own database user and Kafka principal
        own = {"database.user", "database.password", "producer.override.sasl.jaas.config"}
        rendered_config = connector["spec"]["config"]
        assert {k: v for k, v in rendered_config.items() if k not in own} == {
            k: v for k, v in config.items() if k not in own
        }
        assert all(rendered_config[key].count("${env:") == 1 for key in own - {"database.user"})


def test_service_pods_are_probed_limited_and_never_doubled() -> None:
    deployments = [
        d
        for d in _kind("Deployment")
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == "service"
    ]
    assert deployments
    for deployment in deployments:
        spec = deployment["spec"]
        assert spec["strategy"]["type"] == "Recreate" and spec["replicas"] == 1
        assert pod_policy_violations(deployment) == []
        (container,) = spec["template"]["spec"]["containers"]
        secrets = [e for e in container["env"] if e["name"].endswith(("_DSN", "_PASSWORD"))]
        assert len(secrets) == 3 and all("secretKeyRef" in e["valueFrom"] for e in secrets)
    monitored = {m["metadata"]["name"] for m in _kind("ServiceMonitor")}
    ours = {  # every Deployment serving Ambidex's /metrics (not the schema registry's image)
        d["metadata"]["name"] for d in _kind("Deployment")
        if d["metadata"]["labels"]["app.kubernetes.io/component"] != "schema-registry"
    }
    assert monitored == ours and {d["metadata"]["name"] for d in deployments} <= ours


def test_alert_rules_name_metrics_the_services_expose() -> None:
    (rule,) = _kind("PrometheusRule")
    exprs = " ".join(r["expr"] for g in rule["spec"]["groups"] for r in g["rules"])
    shared = Path(__file__).parents[2] / "services/shared"
    exporter = Path(__file__).parents[2] / "ambidex/pipeline_exporter.py"
    declared = " ".join(path.read_text() for path in [*shared.glob("*.py"), exporter])
    for metric in set(re.findall(r"ambidex_[a-z_]+", exprs)):
        base = re.sub(r"_(bucket|count|sum)$", "", metric)
        assert f'"{base}"' in declared, f"alert uses unknown metric {metric}"


def test_web_ports_are_served_and_admitted_from_the_ingress_namespace_only() -> None:
    """A service's web page (customer-value's dashboard) is a port of its Service and
    reaches the pod from the ingress controller's namespace only; metrics from the
    monitoring namespace only; the production overlay's Ingress routes to that port."""
    from ambidex.manifest_values import INGRESS_NAMESPACE, MONITORING_NAMESPACE, WEB_PORTS

    policies = {p["metadata"]["name"]: p for p in _kind("NetworkPolicy")}
    services = {s["metadata"]["name"]: s for s in _kind("Service")}
    for service, (name, port, _) in WEB_PORTS.items():
        ports = services[service]["spec"]["ports"]
        assert {"name": name, "port": port, "targetPort": name} in ports
        admitted = {
            (rule["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
             rule["ports"][0]["port"])
            for rule in policies[service]["spec"]["ingress"]
        }
        assert admitted == {(MONITORING_NAMESPACE, 9400), (INGRESS_NAMESPACE, port)}
    for service, policy in policies.items():
        if service not in WEB_PORTS and service != "default-deny-ingress":
            assert len(policy["spec"]["ingress"]) == 1, service
    overlay = Path(__file__).resolve().parents[2] / "deploy/kubernetes/overlays/production"
    assert "dashboard-ingress.yaml" in yaml.safe_load(
        (overlay / "kustomization.yaml").read_text())["resources"]
    ingress = yaml.safe_load((overlay / "dashboard-ingress.yaml").read_text())
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "customer-value", "port": {"name": "dashboard"}}
    assert ingress["spec"]["tls"][0]["hosts"] == [ingress["spec"]["rules"][0]["host"]]

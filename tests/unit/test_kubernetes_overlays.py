"""Every Kubernetes overlay renders (`kustomize build`) and validates with
`kubeconform -strict` against the Kubernetes and Strimzi v1 schemas shipped in the repo,
offline; a misspelt field, a field of the wrong type and a kind without a schema fail.
Each overlay resolves every `${env:...}` its connectors use from the Connect pod's
environment, and the shipped schemas are what the generator makes from their sources.

kustomize and kubeconform are installed by .ci/run; outside CI a machine without them
skips with the reason, in CI they must be there."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from ambidex.deploycheck import (
    KUBERNETES_DIR,
    KUBERNETES_KINDS,
    SCHEMA_DIR,
    kubeconform,
    kubernetes_schema,
    overlays,
    schema_file,
)
from tests.unit.kubernetes_policy import pod_policy_violations, require_tools

TARGETS = [KUBERNETES_DIR / "base", *overlays()]


@functools.cache
def build(target: Path) -> str:
    from ambidex.deploycheck import build as kustomize_build

    return kustomize_build(target)


def test_there_is_a_dev_and_a_production_overlay() -> None:
    assert {p.name for p in overlays()} >= {"dev", "production"}


@pytest.mark.parametrize("target", TARGETS, ids=lambda p: p.name)
def test_overlay_validates_strictly_against_the_shipped_schemas(target: Path) -> None:
    require_tools()
    verdict = kubeconform(build(target), target.name)
    assert verdict.ok, verdict.output
    assert "Skipped: 0" in verdict.output and "Invalid: 0" in verdict.output


@pytest.mark.parametrize(
    ("original", "broken", "expected"),
    [
        # an unknown field in a Strimzi resource (strict: additional properties)
        ("    authorization:\n", "    authorisation:\n", "additional properties"),
        # an unknown field in a core resource
        ("  strategy:\n", "  stratgy:\n", "additional properties"),
        # a field of the wrong type
        ("  tasksMax: 1\n", "  tasksMax: one\n", "tasksMax"),
    ],
    ids=["strimzi-unknown-field", "deployment-unknown-field", "wrong-type"],
)
def test_a_broken_field_fails(original: str, broken: str, expected: str) -> None:
    require_tools()
    rendered = build(KUBERNETES_DIR / "overlays" / "production")
    assert original in rendered
    verdict = kubeconform(rendered.replace(original, broken, 1), "broken")
    assert not verdict.ok and expected in verdict.output


def test_a_kind_without_a_shipped_schema_fails() -> None:
    require_tools()
    # Secrets are referenced, never shipped: no schema for them
    secret = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: x\n"
    verdict = kubeconform(secret, "unknown-kind")
    assert not verdict.ok and "could not find schema" in verdict.output


@pytest.mark.parametrize("target", TARGETS, ids=lambda p: p.name)
def test_connect_environment_resolves_every_connector_variable(target: Path) -> None:
    require_tools()
    documents = [d for d in yaml.safe_load_all(build(target)) if d]
    (connect,) = [d for d in documents if d["kind"] == "KafkaConnect"]
    env = {e["name"] for e in connect["spec"]["template"]["connectContainer"]["env"]}
    used = {
        name
        for d in documents
        if d["kind"] == "KafkaConnector"
        for value in d["spec"]["config"].values()
        for name in re.findall(r"\$\{env:([A-Z0-9_]+)\}", str(value))
    }
    assert used and used <= env


def test_shipped_kubernetes_schemas_are_the_generated_ones() -> None:
    for kind, api_version in KUBERNETES_KINDS:
        path = SCHEMA_DIR / schema_file(kind, api_version)
        assert json.loads(path.read_text()) == kubernetes_schema(kind, api_version), path.name


def test_every_kind_in_the_manifests_has_a_shipped_schema() -> None:
    from ambidex.manifests import rendered_files

    for text in rendered_files().values():
        for document in yaml.safe_load_all(text):
            # a component's patch file is a list of operations, no resource
            if isinstance(document, dict) and document["kind"] not in {
                "Kustomization", "Component"
            }:
                name = schema_file(document["kind"], document["apiVersion"])
                assert (SCHEMA_DIR / name).exists(), name


@pytest.mark.parametrize("target", TARGETS, ids=lambda p: p.name)
def test_replicas_and_disruption_budgets_tell_one_story(target: Path) -> None:
    """One replica: Recreate (two workers never overlap) and evictions allowed; more:
    standbys kept through voluntary disruptions, rolled one pod at a time. A Deployment
    an autoscaler scales sets no count (an apply would reset it), rolls one pod at a
    time and lets one eviction through at a time, whatever the count."""
    require_tools()
    documents = [d for d in yaml.safe_load_all(build(target)) if d]
    budgets = {
        d["metadata"]["name"]: d["spec"] for d in documents if d["kind"] == "PodDisruptionBudget"
    }
    autoscaled = {
        d["spec"]["scaleTargetRef"]["name"]: d["spec"]
        for d in documents
        if d["kind"] == "HorizontalPodAutoscaler"
    }
    for deployment in (d for d in documents if d["kind"] == "Deployment"):
        spec, budget = deployment["spec"], budgets[deployment["metadata"]["name"]]
        if deployment["metadata"]["name"] in autoscaled:
            assert "replicas" not in spec
            assert autoscaled[deployment["metadata"]["name"]]["minReplicas"] >= 2
            assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
            assert budget == {"maxUnavailable": 1, "selector": budget["selector"]}
        elif spec["replicas"] == 1:
            assert spec["strategy"]["type"] == "Recreate" and budget == {
                "maxUnavailable": 1,
                "selector": budget["selector"],
            }
        else:
            assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
            assert budget["minAvailable"] == spec["replicas"] - 1 and "maxUnavailable" not in budget
    if target.name == "production":
        replicas = {
            d["metadata"]["name"]: d["spec"]["replicas"]
            for d in documents
            if d["kind"] == "Deployment"
        }
        assert replicas["order-sync"] == 2


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


@pytest.mark.parametrize("target", TARGETS, ids=lambda p: p.name)
def test_service_pods_keep_the_policy_in_every_overlay(target: Path) -> None:
    """What an overlay adds or patches keeps the base's pod policy (probes on the
    health endpoints, requests and limits, non-root, read-only root, no token, secrets
    from Secrets only), and each service's pods are selected by exactly one budget,
    one network policy and one scraped Service: two budgets over one pod make every
    eviction fail, a pod no policy selects takes any traffic, one no Service selects
    is not scraped."""
    require_tools()
    documents = [d for d in yaml.safe_load_all(build(target)) if d]

    def of_kind(kind: str) -> list[dict[str, Any]]:
        return [d for d in documents if d["kind"] == kind]

    monitored = {
        m["metadata"]["name"]
        for m in of_kind("ServiceMonitor")
        for s in of_kind("Service")
        if _selects(m["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
    }
    services = [
        d for d in of_kind("Deployment")
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == "service"
    ]
    assert services
    for deployment in services:
        assert pod_policy_violations(deployment) == []
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        budgets = [b for b in of_kind("PodDisruptionBudget")
                   if _selects(b["spec"]["selector"]["matchLabels"], labels)]
        policies = [p for p in of_kind("NetworkPolicy")
                    if p["spec"]["podSelector"]
                    and _selects(p["spec"]["podSelector"]["matchLabels"], labels)]
        scraped = [s for s in of_kind("Service")
                   if _selects(s["spec"]["selector"], labels)
                   and s["metadata"]["name"] in monitored]
        name = deployment["metadata"]["name"]
        assert (len(budgets), len(policies), len(scraped)) == (1, 1, 1), name


#: config keys Strimzi 1.0 manages itself and rejects in spec.config (KafkaClusterSpec
#: and KafkaConnectSpec FORBIDDEN_PREFIXES; the schemas cannot say so)
FORBIDDEN_CONFIG = {
    "Kafka": (
        "listeners",
        "advertised.",
        "broker.",
        "listener.",
        "host.name",
        "port",
        "inter.broker.listener.name",
        "sasl.",
        "ssl.",
        "security.",
        "password.",
        "log.dir",
        "authorizer.",
        "super.user",
        "node.id",
        "process.roles",
        "controller.",
        "metadata.log.dir",
        "prometheus.metrics.reporter.",
    ),
    "KafkaConnect": (
        "group.id",
        "config.storage.topic",
        "offset.storage.topic",
        "status.storage.topic",
        "ssl.",
        "sasl.",
        "security.",
        "listeners",
        "plugin.path",
        "rest.",
        "bootstrap.servers",
        "consumer.interceptor.classes",
        "producer.interceptor.classes",
        "prometheus.metrics.reporter.",
    ),
}


@pytest.mark.parametrize("target", TARGETS, ids=lambda p: p.name)
def test_no_config_key_strimzi_manages_itself(target: Path) -> None:
    require_tools()
    for document in yaml.safe_load_all(build(target)):
        if document and document["kind"] in FORBIDDEN_CONFIG:
            spec = document["spec"]
            config = spec["kafka"]["config"] if document["kind"] == "Kafka" else spec["config"]
            bad = [k for k in config if k.startswith(FORBIDDEN_CONFIG[document["kind"]])]
            assert not bad, f"{document['kind']}: {bad}"

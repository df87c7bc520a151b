"""order-sync scaled out on Kubernetes (overlays/order-sync-scaled, the generated
components/order-sync-scaled): exactly one router and autoscaled workers replace the
single process there and nowhere else; the router's and the workers' containers are
the same but for the role (what the parent overlay sets on order-sync reaches both);
every consumer group and topic the process of each Deployment would use (built from
the Deployment's own environment) is a KafkaTopic of the overlay, declared in
deploy/topics.yaml, and granted to the principal the pod logs in as, as
deploy/access.yaml declares; the workers never outnumber the route topic's
partitions; their metrics carry the single process's job and service names.

kustomize and kubeconform are needed (skipped without them outside CI, as in
tests/unit/test_kubernetes_overlays.py)."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from ambidex.access import load_access
from ambidex.deploycheck import KUBERNETES_DIR, build, overlays
from ambidex.manifest_scale_out import (
    COMPONENT,
    ROLE_SETTING,
    SERVICE,
    WORKER_MAX_REPLICAS,
    WORKER_NAME,
)
from ambidex.topics import load_topic_declaration
from services.order_sync.app import OrderSync
from services.order_sync.scale_out import ROUTE_TOPIC, ROUTER, ROUTER_STATE_TOPIC, WORKER
from services.shared.runtime import build_service
from services.shared.settings import load_settings
from tests.unit.kubernetes_policy import require_tools

SCALED = KUBERNETES_DIR / "overlays" / COMPONENT


@functools.cache
def _documents(target: Path) -> tuple[dict[str, Any], ...]:
    require_tools()
    return tuple(d for d in yaml.safe_load_all(build(target)) if d)


def _kind(target: Path, kind: str) -> list[dict[str, Any]]:
    return [d for d in _documents(target) if d["kind"] == kind]


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


def _order_sync_roles(target: Path) -> dict[str, dict[str, Any]]:
    """Role -> the Deployment whose pods run order-sync in it (no role: single)."""
    roles: dict[str, dict[str, Any]] = {}
    for deployment in _kind(target, "Deployment"):
        container = _container(deployment)
        if container.get("args") != ["run", SERVICE]:
            continue
        env = {e["name"]: e.get("value") for e in container["env"]}
        role = env.get(ROLE_SETTING) or "single"
        assert role not in roles, f"two Deployments run order-sync as {role}"
        roles[role] = deployment
    return roles


def test_the_scaled_overlay_is_one_of_the_validated_overlays() -> None:
    # test_kubernetes_overlays validates, budgets and polices every overlay it finds
    assert SCALED in overlays()
    kustomization = yaml.safe_load((SCALED / "kustomization.yaml").read_text())
    assert f"../../components/{COMPONENT}" in kustomization["components"]


@pytest.mark.parametrize("target", [KUBERNETES_DIR / "base", *overlays()],
                         ids=lambda p: p.name)
def test_one_router_and_workers_replace_the_single_process_in_the_scaled_overlay_only(
    target: Path,
) -> None:
    roles = _order_sync_roles(target)
    if target != SCALED:
        assert set(roles) == {"single"}
        return
    assert set(roles) == {ROUTER, WORKER}
    router, workers = roles[ROUTER], roles[WORKER]
    # the router keeps the single process's name (its Service, policy, monitor stay)
    assert router["metadata"]["name"] == SERVICE and workers["metadata"]["name"] == WORKER_NAME
    assert router["spec"]["replicas"] == 1 and router["spec"]["strategy"] == {"type": "Recreate"}
    (autoscaler,) = _kind(target, "HorizontalPodAutoscaler")
    assert autoscaler["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": WORKER_NAME}


def test_the_component_composes_onto_another_overlay(tmp_path: Path) -> None:
    """What the runbook says: an overlay listing the component after its resources
    (dev here) runs one router and the workers, and validates strictly."""
    from ambidex.deploycheck import kubeconform

    # kustomize takes relative paths only
    root = os.path.relpath(KUBERNETES_DIR, tmp_path)
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [f"{root}/overlays/dev"],
        "components": [f"{root}/components/{COMPONENT}"],
    }))
    assert set(_order_sync_roles(tmp_path)) == {ROUTER, WORKER}
    verdict = kubeconform(build(tmp_path), "dev+component")
    assert verdict.ok, verdict.output


def test_the_router_and_the_workers_run_the_same_container_but_for_the_role() -> None:
    """Production's image and database Secret are set on the workers by the overlay
    again (they come after production's patches): a drift fails here."""
    roles = _order_sync_roles(SCALED)
    router, worker = _container(roles[ROUTER]), _container(roles[WORKER])
    router_env = [e for e in router.pop("env") if e["name"] != ROLE_SETTING]
    worker_env = [e for e in worker.pop("env") if e["name"] != ROLE_SETTING]
    assert router_env == worker_env
    assert router == worker
    # the production values, not the base's
    assert router["image"].startswith("registry.example.com/")
    secrets = {e["valueFrom"]["secretKeyRef"]["name"] for e in router_env if "valueFrom" in e}
    assert "ambidex-production-databases" in secrets


def _process(deployment: dict[str, Any]) -> OrderSync:
    """The order-sync process this Deployment's environment configures (a value from a
    Secret stands in as a placeholder of its form)."""
    environ = {
        e["name"]: e["value"] if "value" in e
        else "postgresql://placeholder/db" if e["name"].endswith("_DSN") else "placeholder"
        for e in _container(deployment)["env"]
    }
    return OrderSync(build_service(load_settings(SERVICE, environ)))


def _acls(user: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    return {
        (rule["resource"]["type"], rule["resource"]["name"]): set(rule["operations"])
        for rule in user["spec"]["authorization"]["acls"]
    }


@pytest.mark.parametrize("role", [ROUTER, WORKER])
def test_each_role_s_groups_and_topics_are_declared_and_granted(role: str) -> None:
    deployment = _order_sync_roles(SCALED)[role]
    process = _process(deployment)
    assert process.service.settings.order_sync_role == role
    sources = process.sources()
    groups = {source.group_id for source in sources}
    reads = {topic for source in sources for topic in source.topics}
    writes: set[str] = set()
    if role == ROUTER:
        assert process.router is not None
        reads.add(process.router.checkpoint.changelog.topic)
        writes |= {ROUTE_TOPIC, process.router.checkpoint.changelog.topic}
        assert ROUTER_STATE_TOPIC in reads
    else:
        assert reads == {ROUTE_TOPIC}
    # the principal the pod logs in as, and its KafkaUser in the overlay
    env = {e["name"]: e for e in _container(deployment)["env"]}
    principal = env["AMBIDEX_KAFKA_SASL_USERNAME"]["value"]
    assert env["AMBIDEX_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == principal
    (user,) = [u for u in _kind(SCALED, "KafkaUser") if u["metadata"]["name"] == principal]
    acls = _acls(user)
    declared = load_access().services[SERVICE]
    assert declared.user == principal
    for group in groups:
        assert group in declared.groups and acls[("group", group)] == {"Read"}, group
    for topic in reads:
        assert topic in declared.reads and {"Read", "Describe"} <= acls[("topic", topic)], topic
    for topic in writes:
        assert topic in declared.writes and "Write" in acls[("topic", topic)], topic
    # every topic is declared and a KafkaTopic of the overlay with the declared shape
    topics = {t["spec"]["topicName"]: t["spec"] for t in _kind(SCALED, "KafkaTopic")}
    specs = {spec.name: spec for spec in load_topic_declaration()}
    for topic in reads | writes:
        assert topics[topic]["partitions"] == specs[topic].partitions, topic
        assert topics[topic]["config"] == dict(specs[topic].config), topic


def test_workers_never_outnumber_the_route_topic_s_partitions() -> None:
    """A member beyond the partition count owns nothing: the autoscaler stops there."""
    (route,) = [spec for spec in load_topic_declaration() if spec.name == ROUTE_TOPIC]
    (autoscaler,) = _kind(SCALED, "HorizontalPodAutoscaler")
    assert autoscaler["spec"]["maxReplicas"] == route.partitions == WORKER_MAX_REPLICAS
    assert 2 <= autoscaler["spec"]["minReplicas"] < autoscaler["spec"]["maxReplicas"]


def test_router_and_workers_are_scraped_as_order_sync_with_their_role() -> None:
    """The alerts (``up{job=~"order-sync|..."}``) and the dashboard (``service=
    "order-sync"``) select the single process's names: both roles keep them."""
    monitors = {m["metadata"]["name"]: m for m in _kind(SCALED, "ServiceMonitor")}
    for name, role in ((SERVICE, ROUTER), (WORKER_NAME, WORKER)):
        (endpoint,) = monitors[name]["spec"]["endpoints"]
        labels = {r["targetLabel"]: r["replacement"] for r in endpoint["relabelings"]}
        assert labels == {"job": SERVICE, "service": SERVICE, "role": role}
        assert endpoint["port"] == "metrics"

"""order-sync scaled out on Kubernetes (issue 16, ADR 0003 step 3): a kustomize
Component, ``deploy/kubernetes/components/order-sync-scaled/``, generated like the base.

An overlay that lists it runs order-sync as one router and N workers instead of one
``single`` process (``AMBIDEX_ORDER_SYNC_ROLE``, :mod:`services.order_sync.scale_out`):

* the **router** is the base's ``order-sync`` Deployment, patched: role ``router``, one
  replica, ``Recreate``, a budget that lets an eviction through. It keeps the name, so
  whatever the parent overlay patched on it (image, Secrets, resources) stays, its
  Service, NetworkPolicy, ServiceAccount and ServiceMonitor stay, and switching is an
  ``apply`` that rolls the one pod. It needs what the single process needs: its state
  (the router's holders, ``state.order-sync.router``) is restored from that changelog
  into the pod's ``emptyDir`` when the pod moves, as the single service's. One replica:
  a standby next to that state is not tested (as for inventory-projection).
* the **workers**, ``order-sync-worker``: the same pod as the base's (derived here from
  :func:`~ambidex.manifest_services.service_resources`, so probes, security context,
  resources, env and Secrets cannot differ), role ``worker``, with their own Service,
  ServiceAccount, NetworkPolicy, PodDisruptionBudget, ServiceMonitor and a
  HorizontalPodAutoscaler. They keep no state (their folds are in the ERP,
  ``scale_out``'s "stale never wins"): ``/state`` is only the Faust worker's scratch
  ``datadir``, an ``emptyDir``. The autoscaler owns the replica count (the Deployment
  sets none, so an ``apply`` does not reset it), between 2 and the partition count of
  ``route.order-sync`` (a member beyond it owns no partition).

Both authenticate as order-sync's KafkaUser (``deploy/access.yaml`` grants it the
groups ``ambidex-order-sync.router`` and ``.worker`` and the route and router-state
topics, which the base already declares). Their metrics are scraped under
``job="order-sync"`` and ``service="order-sync"`` like the single process (the
alerts and dashboards select those), with a ``role`` label saying which.
"""

from __future__ import annotations

import copy
from typing import Any

from ambidex.manifest_services import service_resources
from ambidex.manifest_values import DeploymentValues
from services.order_sync.scale_out import ROUTER, WORKER

SERVICE = "order-sync"
WORKER_NAME = f"{SERVICE}-{WORKER}"
ROLE_SETTING = "AMBIDEX_ORDER_SYNC_ROLE"
COMPONENT = "order-sync-scaled"
#: the autoscaler's bounds; the upper one is the partition count of route.order-sync in
#: deploy/topics.yaml (a unit test holds them together)
WORKER_MIN_REPLICAS = 2
WORKER_MAX_REPLICAS = 12
#: average CPU use of the requested CPU the autoscaler aims at; a worker's CPU per order
#: is flat with the worker count (docs/benchmarks.md, bench/scale_out.py), so CPU
#: follows the order rate
WORKER_CPU_UTILIZATION = 70


def _role_labels(role: str) -> list[dict[str, Any]]:
    """Scrape relabelings: the single process's job and service names, and the role."""
    return [
        {"targetLabel": "job", "replacement": SERVICE, "action": "replace"},
        {"targetLabel": "service", "replacement": SERVICE, "action": "replace"},
        {"targetLabel": "role", "replacement": role, "action": "replace"},
    ]


def _rename(document: dict[str, Any]) -> dict[str, Any]:
    """One of the base's order-sync resources as the workers': every ``order-sync``
    name and ``app.kubernetes.io/name`` label becomes ``order-sync-worker`` (the router
    keeps the base's, so no selector matches both)."""

    def walk(node: Any, key: str | None = None) -> Any:
        if isinstance(node, dict):
            return {k: walk(v, k) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, key) for v in node]
        if node == SERVICE and key in {"name", "app.kubernetes.io/name", "serviceAccountName"}:
            return WORKER_NAME
        return node

    renamed: dict[str, Any] = walk(copy.deepcopy(document))
    return renamed


def worker_resources(values: DeploymentValues) -> list[dict[str, Any]]:
    """The workers' resources (see the module)."""
    documents = [_rename(d) for d in service_resources(SERVICE, values)]
    by_kind = {d["kind"]: d for d in documents}
    deployment = by_kind["Deployment"]
    spec = deployment["spec"]
    # the autoscaler sets the count; rolled one pod at a time (each change of members
    # is a rebalance of the route topic's partitions, sticky, so few move)
    del spec["replicas"]
    spec["strategy"] = {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
    }
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    container["env"].append({"name": ROLE_SETTING, "value": WORKER})
    # the container keeps the name order-sync: logs and dashboards per container
    container["name"] = SERVICE
    pod["topologySpreadConstraints"] = [
        {
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": {"app.kubernetes.io/name": WORKER_NAME}},
        }
    ]
    monitor = by_kind["ServiceMonitor"]
    monitor["spec"]["endpoints"][0]["relabelings"] = _role_labels(WORKER)
    labels = deployment["metadata"]["labels"]
    autoscaler = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": WORKER_NAME, "labels": labels},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                               "name": WORKER_NAME},
            "minReplicas": WORKER_MIN_REPLICAS,
            "maxReplicas": WORKER_MAX_REPLICAS,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": WORKER_CPU_UTILIZATION,
                        },
                    },
                }
            ],
            # every change of the member count is a rebalance: grow by one pod a
            # minute, shrink by one every five after ten quiet minutes
            "behavior": {
                "scaleUp": {
                    "stabilizationWindowSeconds": 60,
                    "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
                },
                "scaleDown": {
                    "stabilizationWindowSeconds": 600,
                    "policies": [{"type": "Pods", "value": 1, "periodSeconds": 300}],
                },
            },
        },
    }
    return [*documents, autoscaler]


def router_patches() -> dict[str, list[dict[str, Any]]]:
    """JSON patches (file name -> operations) turning the base's order-sync into the
    router, whatever the parent overlay made of it (production's hot standby too)."""
    selector = {"matchLabels": {"app.kubernetes.io/name": SERVICE}}
    return {
        "router-deployment.yaml": [
            {"op": "add", "path": "/spec/template/spec/containers/0/env/-",
             "value": {"name": ROLE_SETTING, "value": ROUTER}},
            {"op": "replace", "path": "/spec/replicas", "value": 1},
            {"op": "replace", "path": "/spec/strategy", "value": {"type": "Recreate"}},
        ],
        # one replica: an eviction may proceed (a drain must not block on it)
        "router-budget.yaml": [
            {"op": "replace", "path": "/spec",
             "value": {"maxUnavailable": 1, "selector": selector}},
        ],
        "router-monitor.yaml": [
            {"op": "add", "path": "/spec/endpoints/0/relabelings",
             "value": _role_labels(ROUTER)},
        ],
    }


#: which base resource each router patch applies to
_PATCH_TARGETS = {
    "router-deployment.yaml": "Deployment",
    "router-budget.yaml": "PodDisruptionBudget",
    "router-monitor.yaml": "ServiceMonitor",
}


def component(values: DeploymentValues) -> dict[str, list[Any]]:
    """File name -> YAML documents of the component (its kustomization included; a
    patch file is one document, the list of its operations)."""
    files: dict[str, list[Any]] = {
        f"{WORKER_NAME}.yaml": worker_resources(values),
        **{name: [ops] for name, ops in router_patches().items()},
    }
    files["kustomization.yaml"] = [
        {
            "apiVersion": "kustomize.config.k8s.io/v1alpha1",
            "kind": "Component",
            "resources": [f"{WORKER_NAME}.yaml"],
            "patches": [
                {"path": name, "target": {"kind": kind, "name": SERVICE}}
                for name, kind in _PATCH_TARGETS.items()
            ],
        }
    ]
    return files

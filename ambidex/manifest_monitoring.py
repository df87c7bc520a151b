"""The pipeline's monitoring on Kubernetes (``monitoring.yaml`` of the base).

- Strimzi's ``metricsConfig`` (the JMX exporter) on the Kafka and KafkaConnect resources
  reads its rules from ConfigMaps made here from ``deploy/monitoring/jmx/*.yaml``, the
  same files the local stack's agents load: one source of rules, one set of names.
- Kafka Exporter (``kafkaExporter`` on the Kafka resource) serves consumer-group lag
  for the services' groups, under the names the local pipeline exporter uses.
- A PodMonitor scrapes Strimzi's pods (Kafka, Connect, Kafka Exporter) on their
  ``tcp-prometheus`` port (Strimzi opens it in its own NetworkPolicies).
- The pipeline exporter (``python -m ambidex.pipeline_exporter``, the services' image) as
  a Deployment for the replication slots, with the services' database Secret; no Kafka
  settings, so it leaves the lag to Kafka Exporter.
- The Grafana dashboards as ConfigMaps labelled for Grafana's dashboard sidecar.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ambidex.dashboards import rendered_dashboards
from ambidex.manifest_kafka import secret_env
from ambidex.manifest_values import (
    METRICS_PORT,
    MONITORING_NAMESPACE,
    RUNTIME_DEFAULT_SECCOMP,
    DeploymentValues,
    component_labels,
    disruption_budget,
    service_account,
    single_pod_deployment,
)
from ambidex.monitoring_pipeline import service_groups_regex

JMX_RULES_DIR = Path(__file__).resolve().parent.parent / "deploy" / "monitoring" / "jmx"
EXPORTER = "pipeline-exporter"
#: Grafana's dashboard sidecar picks up ConfigMaps with this label (kube-prometheus-stack
#: and the Grafana chart's default)
DASHBOARD_LABEL = {"grafana_dashboard": "1"}


def _metrics_configmap_name(component: str) -> str:
    return f"ambidex-{component}-metrics"


def metrics_config(component: str) -> dict[str, Any]:
    """Strimzi's ``metricsConfig`` for ``kafka`` or ``connect``."""
    return {
        "type": "jmxPrometheusExporter",
        "valueFrom": {
            "configMapKeyRef": {
                "name": _metrics_configmap_name(component),
                "key": f"{component}-metrics.yaml",
            }
        },
    }


def kafka_exporter() -> dict[str, Any]:
    """Strimzi's ``kafkaExporter``: lag of the services' groups on every topic."""
    return {
        "groupRegex": service_groups_regex().replace("\\\\", "\\"),
        "topicRegex": ".*",
        "resources": {
            "requests": {"cpu": "50m", "memory": "64Mi"},
            "limits": {"memory": "128Mi"},
        },
    }


def _configmap(name: str, data: dict[str, str], labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": labels},
        "data": data,
    }


def monitoring_resources(values: DeploymentValues) -> list[dict[str, Any]]:
    labels = component_labels("monitoring")
    rules = [
        _configmap(
            _metrics_configmap_name(component),
            {f"{component}-metrics.yaml": (JMX_RULES_DIR / f"{component}.yaml").read_text()},
            labels,
        )
        for component in ("kafka", "connect")
    ]
    # one ConfigMap per dashboard: each stays far below the 256 KiB an annotation of a
    # client-side `kubectl apply` may hold
    boards = [
        _configmap(
            f"ambidex-dashboard-{path.stem}",
            {path.name: text},
            {**labels, **DASHBOARD_LABEL},
        )
        for path, text in rendered_dashboards().items()
    ]
    pod_monitor = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": {"name": "ambidex-kafka-resources", "labels": labels},
        "spec": {
            "selector": {
                "matchExpressions": [
                    {
                        "key": "strimzi.io/kind",
                        "operator": "In",
                        "values": ["Kafka", "KafkaConnect"],
                    }
                ]
            },
            "podMetricsEndpoints": [
                {"port": "tcp-prometheus", "path": "/metrics", "interval": "30s"}
            ],
        },
    }
    return [*rules, *boards, pod_monitor, *pipeline_exporter(values)]


def pipeline_exporter(values: DeploymentValues) -> list[dict[str, Any]]:
    labels = {"app.kubernetes.io/name": EXPORTER, **component_labels("monitoring")}
    selector = {"app.kubernetes.io/name": EXPORTER}
    container = {
        "name": EXPORTER,
        "image": values.image,
        "command": ["python", "-m", "ambidex.pipeline_exporter"],
        "env": [
            {"name": "AMBIDEX_METRICS_PORT", "value": str(METRICS_PORT)},
            {"name": "AMBIDEX_EXPORTER_INTERVAL_S", "value": "15"},
            secret_env("AMBIDEX_CRM_DSN", "ambidex-databases", "crm-dsn"),
            secret_env("AMBIDEX_ERP_DSN", "ambidex-databases", "erp-dsn"),
        ],
        "ports": [{"name": "metrics", "containerPort": METRICS_PORT}],
        "readinessProbe": {"tcpSocket": {"port": "metrics"}, "periodSeconds": 10},
        "resources": {
            "requests": {"cpu": "20m", "memory": "64Mi"},
            "limits": {"memory": "128Mi"},
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    security = {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        **RUNTIME_DEFAULT_SECCOMP,
    }
    return [
        service_account(EXPORTER, labels),
        single_pod_deployment(EXPORTER, labels, selector, security, [container]),
        disruption_budget(EXPORTER, labels, selector),
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": EXPORTER, "labels": labels},
            "spec": {
                "selector": selector,
                "ports": [{"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics"}],
            },
        },
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "ServiceMonitor",
            "metadata": {"name": EXPORTER, "labels": labels},
            "spec": {
                "selector": {"matchLabels": selector},
                "endpoints": [{"port": "metrics", "interval": "30s"}],
            },
        },
        {
            # in: the monitoring namespace's scrapes; out: DNS and PostgreSQL only
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": EXPORTER, "labels": labels},
            "spec": {
                "podSelector": {"matchLabels": selector},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [
                    {
                        "from": [
                            {
                                "namespaceSelector": {
                                    "matchLabels": {
                                        "kubernetes.io/metadata.name": MONITORING_NAMESPACE
                                    }
                                }
                            }
                        ],
                        "ports": [{"protocol": "TCP", "port": METRICS_PORT}],
                    }
                ],
                "egress": [
                    {
                        "to": [
                            {
                                "namespaceSelector": {},
                                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                            }
                        ],
                        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
                    },
                    {"ports": [{"protocol": "TCP", "port": 5432}]},
                ],
            },
        },
    ]

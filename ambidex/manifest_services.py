"""The services' side of the manifests: one Deployment (+ Service, PodDisruptionBudget,
config) per service of ``services.registry``, network policies and the alert rules.
See :mod:`ambidex.manifests`."""

from __future__ import annotations

from typing import Any

from ambidex.access import (
    Access,
)
from ambidex.manifest_kafka import secret_env
from ambidex.manifest_registry import URL as REGISTRY_URL
from ambidex.manifest_registry import registry_egress
from ambidex.manifest_values import (
    BOOTSTRAP,
    CA_DIR,
    CLUSTER,
    CLUSTER_CA_SECRET,
    CONNECT,
    CONNECT_API_PORT,
    DEFAULT_SERVICE_MEMORY,
    INGRESS_NAMESPACE,
    KAFKA_PORT,
    METRICS_PORT,
    MONITORING_NAMESPACE,
    RUNTIME_DEFAULT_SECCOMP,
    SERVICE_MEMORY,
    WEB_PORTS,
    DeploymentValues,
    component_labels,
)
from ambidex.monitoring import alert_rules


def service_resources(service: str, values: DeploymentValues) -> list[dict[str, Any]]:
    labels = {"app.kubernetes.io/name": service, **component_labels("service")}
    selector = {"app.kubernetes.io/name": service}
    principal = Access(service).user
    env = [
        {"name": "AMBIDEX_KAFKA_BOOTSTRAP", "value": BOOTSTRAP},
        # the service's own principal over TLS (its KafkaUser's Secret, the cluster CA)
        {"name": "AMBIDEX_KAFKA_SECURITY_PROTOCOL", "value": "SASL_SSL"},
        {"name": "AMBIDEX_KAFKA_SASL_MECHANISM", "value": "SCRAM-SHA-512"},
        {"name": "AMBIDEX_KAFKA_SASL_USERNAME", "value": principal},
        secret_env("AMBIDEX_KAFKA_SASL_PASSWORD", principal, "password"),
        {"name": "AMBIDEX_KAFKA_SSL_CAFILE", "value": f"{CA_DIR}/ca.crt"},
        {
            "name": "AMBIDEX_CONNECT_URL",
            "value": f"http://{CONNECT}-connect-api:{CONNECT_API_PORT}",
        },
        {"name": "AMBIDEX_METRICS_PORT", "value": str(METRICS_PORT)},
        {"name": "AMBIDEX_TABLE_STATE_DIR", "value": "/state"},
        {"name": "AMBIDEX_SCHEMAS_DIR", "value": "/app/schemas"},
        {"name": "AMBIDEX_LOG_FORMAT", "value": "json"},
        {"name": "AMBIDEX_SCHEMA_REGISTRY_URL", "value": REGISTRY_URL},
        secret_env("AMBIDEX_CRM_DSN", "ambidex-databases", "crm-dsn"),
        secret_env("AMBIDEX_ERP_DSN", "ambidex-databases", "erp-dsn"),
    ]
    ports = [{"name": "metrics", "containerPort": METRICS_PORT}]
    service_ports = [{"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics"}]
    if service in WEB_PORTS:
        web_name, web_port, setting = WEB_PORTS[service]
        env.append({"name": setting, "value": str(web_port)})
        ports.append({"name": web_name, "containerPort": web_port})
        service_ports.append({"name": web_name, "port": web_port, "targetPort": web_name})
    probe = {"port": "metrics"}
    memory_request, memory_limit = SERVICE_MEMORY.get(service, DEFAULT_SERVICE_MEMORY)
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": service, "labels": labels},
        "spec": {
            "replicas": 1,
            # one worker per service here: Recreate never runs two side by side (the
            # production overlay runs a hot standby instead, see its kustomization)
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "serviceAccountName": service,
                    # the services never call the Kubernetes API
                    "automountServiceAccountToken": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 10001,
                        "runAsGroup": 10001,
                        "fsGroup": 10001,
                        **RUNTIME_DEFAULT_SECCOMP,
                    },
                    "terminationGracePeriodSeconds": 60,
                    "containers": [
                        {
                            "name": service,
                            "image": values.image,
                            "args": ["run", service],
                            "env": env,
                            "ports": ports,
                            "livenessProbe": {
                                "httpGet": {"path": "/healthz", **probe},
                                "periodSeconds": 10,
                                "failureThreshold": 6,
                            },
                            "readinessProbe": {
                                "httpGet": {"path": "/readyz", **probe},
                                "periodSeconds": 5,
                            },
                            "startupProbe": {
                                "httpGet": {"path": "/healthz", **probe},
                                "periodSeconds": 5,
                                "failureThreshold": 120,
                            },
                            "resources": {
                                "requests": {"cpu": "250m", "memory": memory_request},
                                "limits": {"memory": memory_limit},
                            },
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "volumeMounts": [
                                {"name": "state", "mountPath": "/state"},
                                {"name": "tmp", "mountPath": "/tmp"},
                                {"name": "kafka-ca", "mountPath": CA_DIR, "readOnly": True},
                            ],
                        }
                    ],
                    # table state is rebuilt from its changelog when the pod moves
                    "volumes": [
                        {"name": "state", "emptyDir": {}},
                        {"name": "tmp", "emptyDir": {}},
                        {
                            "name": "kafka-ca",
                            "secret": {
                                "secretName": CLUSTER_CA_SECRET,
                                "items": [{"key": "ca.crt", "path": "ca.crt"}],
                            },
                        },
                    ],
                },
            },
        },
    }
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": service, "labels": labels},
            "automountServiceAccountToken": False,
        },
        deployment,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": service, "labels": labels},
            "spec": {
                "selector": selector,
                "ports": service_ports,
            },
        },
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": service, "labels": labels},
            # a singleton: voluntary evictions may proceed (there is no standby to keep;
            # the production overlay keeps one of its two replicas)
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector}},
        },
        service_network_policy(service, selector, labels),
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "ServiceMonitor",
            "metadata": {"name": service, "labels": labels},
            "spec": {
                "selector": {"matchLabels": selector},
                "endpoints": [{"port": "metrics", "interval": "15s"}],
            },
        },
    ]


def _tcp(port: int | str) -> dict[str, Any]:
    return {"protocol": "TCP", "port": port}


def _from_namespace(namespace: str, port: int) -> dict[str, Any]:
    """An ingress rule: ``port`` from any pod of ``namespace``."""
    return {
        "from": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}
        ],
        "ports": [_tcp(port)],
    }


def service_network_policy(
    service: str, selector: dict[str, str], labels: dict[str, str]
) -> dict[str, Any]:
    """In: metrics from the monitoring namespace, a web page (``WEB_PORTS``) from the
    ingress controller's namespace. Out: DNS, Kafka's TLS listener, the Connect REST
    API, and PostgreSQL (the CRM and ERP hosts vary by cluster)."""
    ingress: list[dict[str, Any]] = [_from_namespace(MONITORING_NAMESPACE, METRICS_PORT)]
    if service in WEB_PORTS:
        ingress.append(_from_namespace(INGRESS_NAMESPACE, WEB_PORTS[service][1]))
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": service, "labels": labels},
        "spec": {
            "podSelector": {"matchLabels": selector},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": ingress,
            "egress": [
                {
                    "to": [
                        {
                            "namespaceSelector": {},
                            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                        }
                    ],
                    "ports": [{"protocol": "UDP", "port": 53}, _tcp(53)],
                },
                {
                    "to": [
                        {
                            "podSelector": {
                                "matchLabels": {
                                    "strimzi.io/cluster": CLUSTER,
                                    "strimzi.io/kind": "Kafka",
                                }
                            }
                        }
                    ],
                    "ports": [_tcp(KAFKA_PORT)],
                },
                {
                    "to": [{"podSelector": {"matchLabels": {"strimzi.io/cluster": CONNECT}}}],
                    "ports": [_tcp(CONNECT_API_PORT)],
                },
                registry_egress(),
                {"ports": [_tcp(5432)]},
            ],
        },
    }


def default_deny_ingress() -> dict[str, Any]:
    """Nothing reaches a pod in the namespace unless a policy allows it (Strimzi adds
    its own for Kafka and Connect; each service has one above)."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "default-deny-ingress", "labels": component_labels("network")},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    }


def prometheus_rule() -> dict[str, Any]:
    """The alert rules of :mod:`ambidex.monitoring` as a prometheus-operator resource."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "ambidex", "labels": component_labels("alerts")},
        "spec": alert_rules(),
    }

"""The schema registry's manifests: Apicurio Registry's official image, its Confluent
API (``/apis/ccompat/v7``) for the services (docs/adr/0002-schema-registry.md).

Storage is PostgreSQL (ids must outlive a restart: published values carry them); the
JDBC URL, user and password come from the Secret ``ambidex-schema-registry-db`` (keys
``url``, ``username``, ``password``), which the operator creates. Only Ambidex pods
reach it; it reaches DNS and PostgreSQL only. See :mod:`ambidex.manifests`.
"""

from __future__ import annotations

from typing import Any

from ambidex.manifest_kafka import secret_env
from ambidex.manifest_values import (
    RUNTIME_DEFAULT_SECCOMP,
    component_labels,
    disruption_budget,
    service_account,
    single_pod_deployment,
)

NAME = "schema-registry"
IMAGE = "apicurio/apicurio-registry:3.3.3"
PORT = 8080
DB_SECRET = "ambidex-schema-registry-db"
URL = f"http://{NAME}:{PORT}/apis/ccompat/v7"
"""What the services get as ``AMBIDEX_SCHEMA_REGISTRY_URL``."""


def registry_egress() -> dict[str, Any]:
    """The egress rule a service needs to reach the registry."""
    return {
        "to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": NAME}}}],
        "ports": [{"protocol": "TCP", "port": PORT}],
    }


def schema_registry_resources() -> list[dict[str, Any]]:
    labels = {"app.kubernetes.io/name": NAME, **component_labels("schema-registry")}
    selector = {"app.kubernetes.io/name": NAME}
    probe = {"port": "http"}
    # one replica (its storage is the database): evictions allowed
    container = {
        "name": NAME,
        "image": IMAGE,
        "env": [
            {"name": "APICURIO_STORAGE_KIND", "value": "sql"},
            {"name": "APICURIO_STORAGE_SQL_KIND", "value": "postgresql"},
            secret_env("APICURIO_DATASOURCE_URL", DB_SECRET, "url"),
            secret_env("APICURIO_DATASOURCE_USERNAME", DB_SECRET, "username"),
            secret_env("APICURIO_DATASOURCE_PASSWORD", DB_SECRET, "password"),
        ],
        "ports": [{"name": "http", "containerPort": PORT}],
        "readinessProbe": {
            "httpGet": {"path": "/health/ready", **probe},
            "periodSeconds": 5,
        },
        "livenessProbe": {
            "httpGet": {"path": "/health/live", **probe},
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        "startupProbe": {
            "httpGet": {"path": "/health/live", **probe},
            "periodSeconds": 5,
            "failureThreshold": 60,
        },
        "resources": {
            "requests": {"cpu": "100m", "memory": "384Mi"},
            "limits": {"memory": "768Mi"},
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    return [
        service_account(NAME, labels),
        single_pod_deployment(
            NAME, labels, selector, {"runAsNonRoot": True, **RUNTIME_DEFAULT_SECCOMP},
            [container],
        ),
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": NAME, "labels": labels},
            "spec": {
                "selector": selector,
                "ports": [{"name": "http", "port": PORT, "targetPort": "http"}],
            },
        },
        disruption_budget(NAME, labels, selector),
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": NAME, "labels": labels},
            "spec": {
                "podSelector": {"matchLabels": selector},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [{
                    "from": [{"podSelector": {
                        "matchLabels": {"app.kubernetes.io/part-of": "ambidex"}
                    }}],
                    "ports": [{"protocol": "TCP", "port": PORT}],
                }],
                "egress": [
                    {
                        "to": [{"namespaceSelector": {},
                                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
                        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
                    },
                    {"ports": [{"protocol": "TCP", "port": 5432}]},
                ],
            },
        },
    ]

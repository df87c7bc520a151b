"""The Strimzi side of the manifests: the Kafka cluster (KRaft, TLS + SCRAM, the
``simple`` authorizer), its topics, users with their ACLs, and Kafka Connect with the
capture connectors. See :mod:`ambidex.manifests`."""

from __future__ import annotations

import re
from typing import Any

from ambidex.access import (
    CONNECT_USER,
    acl_rules,
    connect_worker_acls,
    load_access,
)
from ambidex.connectors import connect_worker_config, load_connectors
from ambidex.manifest_values import (
    BOOTSTRAP,
    CLUSTER,
    CLUSTER_CA_SECRET,
    CONNECT,
    KAFKA_PORT,
    STRIMZI,
    DeploymentValues,
    component_labels,
    pod_template,
    resource_name,
)
from ambidex.topics import load_topic_declaration


def metrics_config(component: str) -> dict[str, Any]:
    from ambidex.manifest_monitoring import metrics_config as config

    return config(component)


def kafka_exporter() -> dict[str, Any]:
    from ambidex.manifest_monitoring import kafka_exporter as exporter

    return exporter()


def kafka_cluster(values: DeploymentValues) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": STRIMZI,
            "kind": "KafkaNodePool",
            "metadata": {"name": "dual-role", "labels": {"strimzi.io/cluster": CLUSTER}},
            "spec": {
                "replicas": values.kafka_replicas,
                "roles": ["controller", "broker"],
                "storage": {
                    "type": "jbod",
                    "volumes": [
                        {
                            "id": 0,
                            "type": "persistent-claim",
                            "size": "100Gi",
                            "deleteClaim": False,
                            "kraftMetadata": "shared",
                        }
                    ],
                },
                "resources": {
                    "requests": {"cpu": "1", "memory": "4Gi"},
                    "limits": {"memory": "4Gi"},
                },
                "template": pod_template(),
            },
        },
        {
            "apiVersion": STRIMZI,
            "kind": "Kafka",
            # v1: KRaft and node pools are the only mode, no annotations enable them
            "metadata": {"name": CLUSTER},
            "spec": {
                "kafka": {
                    "version": values.kafka_version,
                    "listeners": [
                        {
                            "name": "tls",
                            "port": KAFKA_PORT,
                            "type": "internal",
                            "tls": True,
                            "authentication": {"type": "scram-sha-512"},
                            # reachable only from Ambidex's own pods and Connect
                            "networkPolicyPeers": [
                                {
                                    "podSelector": {
                                        "matchLabels": {"app.kubernetes.io/part-of": "ambidex"}
                                    }
                                },
                                {"podSelector": {"matchLabels": {"strimzi.io/cluster": CONNECT}}},
                            ],
                        },
                    ],
                    # every principal gets only the ACLs of deploy/access.yaml
                    "authorization": {"type": "simple"},
                    "config": {
                        "auto.create.topics.enable": False,
                        "default.replication.factor": 3,
                        "min.insync.replicas": 2,
                        "offsets.topic.replication.factor": 3,
                        "transaction.state.log.replication.factor": 3,
                        "transaction.state.log.min.isr": 2,
                    },
                    # JMX exporter rules: deploy/monitoring/jmx/kafka.yaml (monitoring.yaml)
                    "metricsConfig": metrics_config("kafka"),
                },
                "kafkaExporter": kafka_exporter(),
                "entityOperator": {
                    "topicOperator": {},
                    "userOperator": {},
                    "template": pod_template(),
                },
            },
        },
    ]


def kafka_users() -> list[dict[str, Any]]:
    """A KafkaUser per service and per capture connector, and the Connect worker's.

    The User Operator creates a Secret of the user's name (key ``password``); the pods
    reference it, nothing here holds a password."""
    access = load_access()

    def user(name: str, component: str, acls: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "apiVersion": STRIMZI,
            "kind": "KafkaUser",
            "metadata": {
                "name": name,
                "labels": {"strimzi.io/cluster": CLUSTER, **component_labels(component)},
            },
            "spec": {
                "authentication": {"type": "scram-sha-512"},
                "authorization": {"type": "simple", "acls": acls},
            },
        }

    worker = connect_worker_config(replication=3)
    return [
        *(user(a.user, "service", acl_rules(a)) for a in access.services.values()),
        *(user(a.user, "connector", acl_rules(a)) for a in access.connectors.values()),
        user(
            CONNECT_USER,
            "connect",
            connect_worker_acls(
                worker["group.id"], [worker[f] for f in sorted(WORKER_FIELDS - {"group.id"})]
            ),
        ),
    ]


def kafka_topics() -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": STRIMZI,
            "kind": "KafkaTopic",
            "metadata": {
                "name": resource_name(spec.name),
                "labels": {
                    "strimzi.io/cluster": CLUSTER, **component_labels(f"topic-{spec.group}")
                },
            },
            "spec": {
                "topicName": spec.name,
                "partitions": spec.partitions,
                "replicas": spec.replication_factor,
                "config": dict(spec.config),
            },
        }
        for spec in load_topic_declaration()
    ]


WORKER_FIELDS = frozenset(
    {"group.id", "config.storage.topic", "offset.storage.topic", "status.storage.topic"}
)


def _capture_env(connector: str) -> str:
    """Env-var stem of a capture connector's secrets: ``ambidex-crm`` -> ``AMBIDEX_CRM``."""
    return re.sub(r"[^A-Z0-9]", "_", connector.upper())


def secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def capture_db_secret(connector: str) -> str:
    """The Secret (keys ``username``, ``password``) of a connector's own database user."""
    return f"{connector}-db"


def kafka_connect(values: DeploymentValues) -> list[dict[str, Any]]:
    worker = connect_worker_config(replication=3)
    values_map = {
        "crm_db_host": values.crm_db_host,
        "crm_db_port": values.crm_db_port,
        "erp_db_host": values.erp_db_host,
        "erp_db_port": values.erp_db_port,
        "heartbeat_interval_ms": values.heartbeat_interval_ms,
    }
    access = load_access().connectors
    definitions = load_connectors(values_map)
    env: list[dict[str, Any]] = []
    connectors = []
    for connector in definitions:
        stem = _capture_env(connector.name)
        principal = access[connector.name].user
        # each connector reads its database as its own user and produces to Kafka as
        # its own principal; the worker resolves ${env:...} from these variables
        env += [
            secret_env(f"{stem}_DB_USER", capture_db_secret(connector.name), "username"),
            secret_env(f"{stem}_DB_PASSWORD", capture_db_secret(connector.name), "password"),
            secret_env(f"{stem}_KAFKA_PASSWORD", principal, "password"),
        ]
        config = dict(connector.config)
        connector_class = config.pop("connector.class")
        tasks = int(config.pop("tasks.max", "1"))
        config["database.user"] = f"${{env:{stem}_DB_USER}}"
        config["database.password"] = f"${{env:{stem}_DB_PASSWORD}}"
        config["producer.override.sasl.jaas.config"] = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{principal}" password="${{env:{stem}_KAFKA_PASSWORD}}";'
        )
        connectors.append(
            {
                "apiVersion": STRIMZI,
                "kind": "KafkaConnector",
                "metadata": {
                    "name": connector.name,
                    "labels": {"strimzi.io/cluster": CONNECT},
                    "annotations": {"ambidex.io/connector-version": str(connector.version)},
                },
                "spec": {"class": connector_class, "tasksMax": tasks, "config": config},
            }
        )
    connect = {
        "apiVersion": STRIMZI,
        "kind": "KafkaConnect",
        "metadata": {
            "name": CONNECT,
            "annotations": {"strimzi.io/use-connector-resources": "true"},
        },
        "spec": {
            "version": values.kafka_version,
            "replicas": 1,
            "bootstrapServers": BOOTSTRAP,
            "tls": {
                "trustedCertificates": [{"secretName": CLUSTER_CA_SECRET, "certificate": "ca.crt"}]
            },
            "authentication": {
                "type": "scram-sha-512",
                "username": CONNECT_USER,
                "passwordSecret": {"secretName": CONNECT_USER, "password": "password"},
            },
            # v1 names the group and the storage topics as fields, not in config
            "groupId": worker["group.id"],
            "configStorageTopic": worker["config.storage.topic"],
            "offsetStorageTopic": worker["offset.storage.topic"],
            "statusStorageTopic": worker["status.storage.topic"],
            "config": {
                **{k: v for k, v in worker.items() if k not in WORKER_FIELDS},
                # a connector may replace its principal (sasl.jaas.config) and nothing
                # else (Kafka 4.2's Allowlist policy; Principal is deprecated there)
                "connector.client.config.override.policy": "Allowlist",
                "connector.client.config.override.allowlist": "sasl.jaas.config",
            },
            "build": {
                "output": {"type": "docker", "image": values.connect_image},
                "plugins": [
                    {
                        "name": "debezium-connector-postgres",
                        "artifacts": [
                            {
                                "type": "maven",
                                "group": "io.debezium",
                                "artifact": "debezium-connector-postgres",
                                "version": "3.6.1.Final",
                            },
                        ],
                    }
                ],
            },
            "template": {**pod_template(), "connectContainer": {"env": env}},
            # JMX exporter rules: deploy/monitoring/jmx/connect.yaml (monitoring.yaml)
            "metricsConfig": metrics_config("connect"),
            "resources": {
                "requests": {"cpu": "500m", "memory": "1Gi"},
                "limits": {"memory": "1Gi"},
            },
        },
    }
    return [connect, *connectors]

"""Kafka access is least privilege and declared once (`deploy/access.yaml`): each service's
principal reads exactly the topics its code consumes and writes exactly the topics it
produces, uses only its own consumer groups, and every name is a declared topic; every
service and capture connector has its own KafkaUser; the cluster authenticates every
client over TLS and authorizes with ACLs; and no secret is written in a manifest."""

from __future__ import annotations

from typing import Any

import yaml

from ambidex.access import Access, acl_rules, load_access
from ambidex.connectors import load_connectors
from ambidex.manifests import render
from ambidex.topics import load_topic_declaration
from services.customer_value import app as customer_value
from services.customer_value import effects as customer_value_effects
from services.demand_signals.emit import SURGE_TOPIC
from services.inventory_projection import app as inventory
from services.order_sync import app as order_sync
from services.order_sync import codec as order_codec
from services.order_sync import scale_out as order_scale_out
from services.production_status import app as production
from services.production_status import effects as production_effects
from services.receivables import app as receivables
from services.receivables import emit as receivables_emit
from services.registry import SERVICE_MODULES
from services.shared.deadletters import dead_letter_topic

ACCESS = load_access()
DOCUMENTS = [
    document
    for name, text in render().items()
    if name != "kustomization.yaml"
    for document in yaml.safe_load_all(text)
]
#: what each service's code consumes and produces (besides its dead-letter topic)
CODE = {
    "order-sync": (
        {*order_sync.CRM_TOPICS, *order_sync.ERP_TOPICS, order_scale_out.ROUTE_TOPIC,
         order_scale_out.ROUTER_STATE_TOPIC},
        {order_codec.IDENTITY_TOPIC, order_codec.STATUS_TOPIC, order_codec.CONFLICT_TOPIC,
         order_scale_out.ROUTE_TOPIC, order_scale_out.ROUTER_STATE_TOPIC},
        {"ambidex-order-sync.crm", "ambidex-order-sync.erp",
         f"ambidex-order-sync.{order_scale_out.ROUTER}",
         f"ambidex-order-sync.{order_scale_out.WORKER}"},
    ),
    "inventory-projection": (
        {
            *inventory.CHANGE_TOPICS,
            *inventory.SOURCES.topics,
            inventory.STATE_TOPIC,
        },
        {inventory.AVAILABILITY_TOPIC, inventory.SHORTAGE_TOPIC, inventory.STATE_TOPIC,
         SURGE_TOPIC},
        {"ambidex-inventory-projection.changes"},
    ),
    "receivables": (
        {*receivables.CHANGE_TOPICS, *receivables.SOURCES.topics, receivables.STATE_TOPIC},
        {receivables_emit.POSITION_TOPIC, receivables_emit.DISCREPANCY_TOPIC,
         receivables.STATE_TOPIC},
        {"ambidex-receivables.changes"},
    ),
    "production-status": (
        {*production.CHANGE_TOPICS, *production.SOURCES.topics, production.STATE_TOPIC},
        {
            production_effects.STATUS_TOPIC,
            production_effects.RISK_TOPIC,
            production_effects.TRIAGE_TOPIC,
            production.STATE_TOPIC,
        },
        {"ambidex-production-status.changes"},
    ),
    "customer-value": (
        {*customer_value.CHANGE_TOPICS, *customer_value.SOURCES.topics,
         customer_value.STATE_TOPIC},
        {customer_value_effects.VALUE_TOPIC, customer_value.STATE_TOPIC},
        {"ambidex-customer-value.changes"},
    ),
}


def _kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in DOCUMENTS if d["kind"] == kind]


def test_each_service_reads_and_writes_exactly_what_its_code_does() -> None:
    assert set(ACCESS.services) == set(SERVICE_MODULES) == set(CODE)
    for service, (reads, writes, groups) in CODE.items():
        access = ACCESS.services[service]
        dlq = dead_letter_topic(service)
        assert set(access.reads) == reads | {dlq}, service
        assert set(access.writes) == writes | {dlq}, service
        assert set(access.groups) == groups, service


def test_every_name_in_the_declaration_is_a_declared_topic() -> None:
    declared = {spec.name for spec in load_topic_declaration()}
    principals = [*ACCESS.services.values(), *ACCESS.connectors.values()]
    for access in principals:
        for topic in (*access.reads, *access.writes):
            if topic.endswith("*"):
                assert any(name.startswith(topic[:-1]) for name in declared), topic
            else:
                assert topic in declared, f"{access.name}: {topic} is not in deploy/topics.yaml"


def test_a_connector_writes_only_its_own_database_topics() -> None:
    values = dict.fromkeys(
        ("crm_db_host", "crm_db_port", "erp_db_host", "erp_db_port", "heartbeat_interval_ms"),
        "x",
    )
    connectors = {c.name: c.config["topic.prefix"] for c in load_connectors(values)}
    assert set(ACCESS.connectors) == set(connectors)
    for name, prefix in connectors.items():
        access = ACCESS.connectors[name]
        assert not access.reads and not access.groups
        assert set(access.writes) == {f"{prefix}.*", f"heartbeat.{prefix}"}


def test_acl_rules_grant_nothing_beyond_the_declaration() -> None:
    rules = acl_rules(Access("x", reads=("a", "b"), writes=("b", "c.*"), groups=("g",)))
    granted = {
        (r["resource"]["type"], r["resource"]["name"], r["resource"]["patternType"], op)
        for r in rules
        for op in r["operations"]
    }
    assert granted == {
        ("topic", "a", "literal", "Read"),
        ("topic", "a", "literal", "Describe"),
        ("topic", "b", "literal", "Read"),
        ("topic", "b", "literal", "Write"),
        ("topic", "b", "literal", "Describe"),
        ("topic", "c.", "prefix", "Write"),
        ("topic", "c.", "prefix", "Describe"),
        ("group", "g", "literal", "Read"),
    }


def test_every_service_and_connector_has_its_own_kafka_user() -> None:
    users = {u["metadata"]["name"]: u for u in _kind("KafkaUser")}
    expected = {a.user for a in (*ACCESS.services.values(), *ACCESS.connectors.values())}
    assert expected | {"ambidex-connect"} == set(users)
    for user in users.values():
        assert user["spec"]["authentication"]["type"] == "scram-sha-512"
        for rule in user["spec"]["authorization"]["acls"]:
            assert rule["resource"]["type"] in {"topic", "group"}
            assert "All" not in rule["operations"]
            assert rule["resource"]["name"] not in {"*", ""}
    services = [
        d for d in _kind("Deployment")
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == "service"
    ]
    assert {d["metadata"]["name"] for d in services} == set(ACCESS.services)
    for deployment in services:  # (the schema registry and exporters use no Kafka user)
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e for e in container["env"]}
        username = env["AMBIDEX_KAFKA_SASL_USERNAME"]["value"]
        assert username == Access(deployment["metadata"]["name"]).user
        password = env["AMBIDEX_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert password["name"] == username


def test_each_connector_has_its_own_database_user_and_principal() -> None:
    (connect,) = _kind("KafkaConnect")
    env = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in connect["spec"]["template"]["connectContainer"]["env"]
    }
    seen_secrets: set[str] = set()
    for connector in _kind("KafkaConnector"):
        config = connector["spec"]["config"]
        user_var = config["database.user"].removeprefix("${env:").removesuffix("}")
        password_var = config["database.password"].removeprefix("${env:").removesuffix("}")
        secret = env[user_var]["name"]
        assert env[password_var]["name"] == secret and secret not in seen_secrets
        seen_secrets.add(secret)
        principal = ACCESS.connectors[connector["metadata"]["name"]].user
        assert f'username="{principal}"' in config["producer.override.sasl.jaas.config"]
    worker = connect["spec"]["config"]
    assert worker["connector.client.config.override.policy"] == "Allowlist"
    assert worker["connector.client.config.override.allowlist"] == "sasl.jaas.config"


def test_kafka_authenticates_every_client_over_tls_and_authorizes_with_acls() -> None:
    (kafka,) = _kind("Kafka")
    listeners = kafka["spec"]["kafka"]["listeners"]
    assert listeners and all(
        listener["tls"] and listener["authentication"]["type"] == "scram-sha-512"
        for listener in listeners
    )
    assert kafka["spec"]["kafka"]["authorization"]["type"] == "simple"
    (connect,) = _kind("KafkaConnect")
    assert connect["spec"]["authentication"]["type"] == "scram-sha-512"
    assert connect["spec"]["tls"]["trustedCertificates"]


def test_no_secret_value_is_written_in_a_manifest() -> None:
    def walk(node: Any) -> None:
        if isinstance(node, dict):
            name = str(node.get("name", ""))
            if name.endswith(("_PASSWORD", "_DSN", "_USER")) and "value" in node:
                raise AssertionError(f"{name} is inline")
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    assert not _kind("Secret")
    for document in DOCUMENTS:
        walk(document)


def test_every_service_pod_has_a_network_policy_and_no_token() -> None:
    policies = {p["metadata"]["name"]: p for p in _kind("NetworkPolicy")}
    assert policies["default-deny-ingress"]["spec"]["podSelector"] == {}
    accounts = {a["metadata"]["name"]: a for a in _kind("ServiceAccount")}
    for deployment in _kind("Deployment"):
        name = deployment["metadata"]["name"]
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert policies[name]["spec"]["podSelector"]["matchLabels"] == selector
        assert set(policies[name]["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        assert accounts[name]["automountServiceAccountToken"] is False
        assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == name

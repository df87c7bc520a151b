"""The secured local stack's broker settings and ACL set (ambidex/stack/kafka_access.py).

Invariants: the default broker is unchanged (one plain listener, no authorizer); the
secured one adds a SCRAM-SHA-512 listener and the standard authorizer with no ACL
meaning denied; the ACLs applied are exactly those deploy/access.yaml gives the
Kubernetes KafkaUsers, as Kafka's Admin API names them; passwords are generated once,
kept private, and never part of a repr.
"""

from __future__ import annotations

import stat
from pathlib import Path

from ambidex.access import acl_rules, load_access
from ambidex.stack.config import StackConfig
from ambidex.stack.kafka_access import (
    AclEntry,
    access_request,
    acl_entries,
    connect_worker_security,
    connector_overrides,
    load_or_create_passwords,
    password_variable,
    sasl_client_environment,
    users_file,
)
from ambidex.stack.processes import STANDARD_AUTHORIZER, broker_properties


def _config(tmp_path: Path, **changes: object) -> StackConfig:
    return StackConfig.from_env({"AMBIDEX_STATE_DIR": str(tmp_path)}).ephemeral(tmp_path, **changes)  # type: ignore[arg-type]


def test_the_default_broker_has_one_plain_listener_and_no_authorizer(tmp_path: Path) -> None:
    config = _config(tmp_path)
    properties = broker_properties(config, tmp_path)
    assert config.kafka_sasl_port is None
    assert properties["advertised.listeners"] == f"PLAINTEXT://127.0.0.1:{config.kafka_port}"
    assert "authorizer.class.name" not in properties
    assert not [key for key in properties if "sasl" in key]


def test_the_secured_broker_adds_a_scram_listener_and_the_standard_authorizer(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path, secured=True)
    properties = broker_properties(config, tmp_path)
    assert config.kafka_sasl_port is not None
    assert f"SASL_PLAINTEXT://127.0.0.1:{config.kafka_sasl_port}" in properties["listeners"]
    assert "SASL_PLAINTEXT:SASL_PLAINTEXT" in properties["listener.security.protocol.map"]
    assert properties["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert properties["authorizer.class.name"] == STANDARD_AUTHORIZER
    assert properties["allow.everyone.if.no.acl.found"] == "false"
    assert properties["super.users"] == "User:ANONYMOUS"  # the plain loopback listener only
    # the setting survives the environment round trip (services started by the stack)
    assert StackConfig.from_env(config.environment()).kafka_sasl_port == config.kafka_sasl_port


def test_the_acl_entries_are_the_kafkausers_rules_in_admin_api_names() -> None:
    declaration = load_access()
    entries = acl_entries(declaration)
    expected = sum(
        len(rule["operations"])
        for access in [*declaration.services.values(), *declaration.connectors.values()]
        for rule in acl_rules(access)
    )
    worker = [e for e in entries if e.principal == "User:ambidex-connect"]
    assert len(entries) - len(worker) == len(set(entries)) - len(worker) == expected
    # the Connect worker: its group and its three storage topics, as its KafkaUser
    assert {e.name for e in worker} == {
        "ambidex-connect",
        "_ambidex-connect-configs",
        "_ambidex-connect-offsets",
        "_ambidex-connect-status",
    }
    assert (
        AclEntry("User:ambidex-order-sync", "TOPIC", "cdc.crm.sales_order", "LITERAL", "READ")
        in entries
    )
    assert AclEntry("User:ambidex-crm", "TOPIC", "cdc.crm.", "PREFIXED", "WRITE") in entries
    assert (
        AclEntry(
            "User:ambidex-inventory-projection",
            "GROUP",
            "ambidex-inventory-projection.changes",
            "LITERAL",
            "READ",
        )
        in entries
    )
    # nothing beyond read/write/describe of topics and read of groups (the worker also
    # creates and checks its storage topics)
    assert {e.operation for e in entries if e not in worker} == {"READ", "WRITE", "DESCRIBE"}
    assert not [
        e
        for e in entries
        if e.principal == "User:ambidex-order-sync" and e.name == "state.inventory-projection"
    ]


def test_passwords_are_made_once_kept_private_and_sent_only_on_stdin(tmp_path: Path) -> None:
    first = load_or_create_passwords(tmp_path, ["ambidex-a"])
    again = load_or_create_passwords(tmp_path, ["ambidex-a", "ambidex-b"])
    assert again["ambidex-a"] == first["ambidex-a"] != again["ambidex-b"]
    assert stat.S_IMODE(users_file(tmp_path).stat().st_mode) == 0o600
    request = access_request("127.0.0.1:1", again, [])
    assert request["mechanism"] == "SCRAM_SHA_512"
    assert request["users"] == [
        {"name": "ambidex-a", "password": again["ambidex-a"]},
        {"name": "ambidex-b", "password": again["ambidex-b"]},
    ]


def test_a_client_environment_names_the_sasl_listener_and_its_user(tmp_path: Path) -> None:
    config = _config(tmp_path, secured=True)
    passwords = load_or_create_passwords(tmp_path, ["ambidex-order-sync"])
    env = sasl_client_environment(config, "ambidex-order-sync")
    assert env == {
        "AMBIDEX_KAFKA_BOOTSTRAP": f"127.0.0.1:{config.kafka_sasl_port}",
        "AMBIDEX_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "AMBIDEX_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "AMBIDEX_KAFKA_SASL_USERNAME": "ambidex-order-sync",
        "AMBIDEX_KAFKA_SASL_PASSWORD": passwords["ambidex-order-sync"],
    }


def test_connect_and_its_connectors_authenticate_with_passwords_from_the_environment(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path, secured=True)
    passwords = load_or_create_passwords(tmp_path, ["ambidex-connect", "ambidex-crm"])
    properties, environment = connect_worker_security(config)
    assert properties["bootstrap.servers"] == config.kafka_sasl_bootstrap
    for client in ("", "producer.", "consumer.", "admin."):
        assert properties[f"{client}security.protocol"] == "SASL_PLAINTEXT"
        assert 'username="ambidex-connect"' in properties[f"{client}sasl.jaas.config"]
    assert properties["connector.client.config.override.policy"] == "Principal"
    # passwords only in the worker's environment, referenced as ${env:...}
    assert not [p for p in passwords.values() if p in str(properties)]
    assert environment[password_variable("ambidex-crm")] == passwords["ambidex-crm"]
    override = connector_overrides(load_access(), "ambidex-crm")
    assert override == {
        "producer.override.sasl.jaas.config": (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            'username="ambidex-crm" password="${env:AMBIDEX_KAFKA_PASSWORD_AMBIDEX_CRM}";'
        )
    }


def test_a_connector_logs_in_with_the_workers_mechanism() -> None:
    """docker-compose's broker takes PLAIN: the override the setup job writes must use
    PLAIN's login module, or the connector's producer cannot log in there."""
    override = connector_overrides(load_access(), "ambidex-erp", "PLAIN")
    assert override == {
        "producer.override.sasl.jaas.config": (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            'username="ambidex-erp" password="${env:AMBIDEX_KAFKA_PASSWORD_AMBIDEX_ERP}";'
        )
    }

"""The secured local stack's Kafka users and ACLs, applied from ``deploy/access.yaml``.

With ``AMBIDEX_STACK_KAFKA_SASL_PORT`` the broker has a SASL_PLAINTEXT (SCRAM-SHA-512)
listener and the standard authorizer (:func:`ambidex.stack.processes.broker_properties`).
Each service and capture connector of the declaration gets its own SCRAM user (the
Kubernetes KafkaUser's name) with a password generated once and kept, mode 0600, in
``<state dir>/kafka-users.json``, and exactly the ACLs the Kubernetes KafkaUsers get
(:func:`ambidex.access.acl_rules`: one source for both). They are applied through Kafka's
own Admin API by ``java/ApplyKafkaAccess.java`` (a single-file Java program run with the
stack's Kafka jars; the passwords go in on its stdin, never on a command line).
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ambidex.access import (
    CONNECT_USER,
    Access,
    AccessDeclaration,
    acl_rules,
    connect_worker_acls,
    load_access,
)
from ambidex.connectors import connect_worker_config
from ambidex.stack.config import StackConfig
from ambidex.stack.jars import JarLayout
from ambidex.stack.processes import SASL_MECHANISM, StackError, _java

PROGRAM = Path(__file__).resolve().parent / "java" / "ApplyKafkaAccess.java"
#: SCRAM iterations (Kafka's minimum is 4096; Strimzi uses 4096 too)
ITERATIONS = 8192


@dataclass(frozen=True)
class AclEntry:
    """One ALLOW ACL binding as Kafka's Admin API takes it (enum names)."""

    principal: str
    resource_type: str
    name: str
    pattern_type: str
    operation: str


def _enum_name(operation: str) -> str:
    """Strimzi's ``DescribeConfigs`` -> Kafka's ``AclOperation.DESCRIBE_CONFIGS``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", operation).upper()


def principals(declaration: AccessDeclaration) -> list[Access]:
    """Every principal of the declaration: the services, then the connectors, then the
    Connect worker (its group and storage topics, as on Kubernetes)."""
    return [
        *declaration.services.values(),
        *declaration.connectors.values(),
        Access(CONNECT_USER),
    ]


def _rules(access: Access) -> list[dict[str, Any]]:
    if access.user != CONNECT_USER:
        return acl_rules(access)
    worker = connect_worker_config(replication=1)
    storage = [worker[f"{kind}.storage.topic"] for kind in ("config", "offset", "status")]
    return connect_worker_acls(worker["group.id"], storage)


def acl_entries(declaration: AccessDeclaration) -> list[AclEntry]:
    """The declaration's ACLs, one entry per (principal, resource, operation)."""
    entries = []
    for access in principals(declaration):
        for rule in _rules(access):
            resource = rule["resource"]
            for operation in rule["operations"]:
                entries.append(
                    AclEntry(
                        principal=f"User:{access.user}",
                        resource_type=resource["type"].upper(),
                        name=resource["name"],
                        pattern_type="PREFIXED"
                        if resource["patternType"] == "prefix"
                        else "LITERAL",
                        operation=_enum_name(operation),
                    )
                )
    return entries


def users_file(state_dir: Path) -> Path:
    return state_dir / "kafka-users.json"


def load_or_create_passwords(state_dir: Path, users: list[str]) -> dict[str, str]:
    """Each user's password: the one kept in the state directory, else a new one (kept)."""
    path = users_file(state_dir)
    kept: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    missing = [user for user in users if user not in kept]
    if missing:
        kept |= {user: secrets.token_urlsafe(18) for user in missing}
        state_dir.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(json.dumps(kept, indent=2))
    return {user: kept[user] for user in users}


def access_request(
    bootstrap: str, passwords: dict[str, str], entries: list[AclEntry]
) -> dict[str, object]:
    """The JSON document ApplyKafkaAccess reads on stdin."""
    return {
        "bootstrap": bootstrap,
        "mechanism": SASL_MECHANISM.replace("-", "_"),
        "iterations": ITERATIONS,
        "users": [{"name": user, "password": password} for user, password in passwords.items()],
        "acls": [
            {
                "principal": e.principal,
                "resourceType": e.resource_type,
                "name": e.name,
                "patternType": e.pattern_type,
                "operation": e.operation,
            }
            for e in entries
        ],
    }


async def apply_kafka_access(
    config: StackConfig, jars: JarLayout, declaration: AccessDeclaration | None = None
) -> str:
    """Create or update every declared user and make its ACLs exactly the declared ones,
    through the plain listener (the operator's door); returns the program's summary."""
    import asyncio

    declaration = declaration or load_access()
    passwords = load_or_create_passwords(
        config.state_dir, [access.user for access in principals(declaration)]
    )
    request = access_request(config.kafka_bootstrap, passwords, acl_entries(declaration))
    process = await asyncio.create_subprocess_exec(
        *_java(config),
        "-XX:TieredStopAtLevel=1",
        "-cp",
        jars.kafka_classpath,
        str(PROGRAM),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate(json.dumps(request).encode())
    text = output.decode(errors="replace").strip()
    if process.returncode != 0:
        raise StackError(f"applying Kafka users and ACLs failed ({process.returncode}):\n{text}")
    return text.splitlines()[-1] if text else ""


def sasl_client_environment(config: StackConfig, user: str) -> dict[str, str]:
    """``AMBIDEX_KAFKA_*`` settings that connect a client to the SASL listener as ``user``."""
    if config.kafka_sasl_bootstrap is None:
        raise StackError("the stack has no SASL listener (set AMBIDEX_STACK_KAFKA_SASL_PORT)")
    path = users_file(config.state_dir)
    known: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    if user not in known:
        raise StackError(f"no Kafka user {user} in {path}: is it declared in deploy/access.yaml?")
    return {
        "AMBIDEX_KAFKA_BOOTSTRAP": config.kafka_sasl_bootstrap,
        "AMBIDEX_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "AMBIDEX_KAFKA_SASL_MECHANISM": SASL_MECHANISM,
        "AMBIDEX_KAFKA_SASL_USERNAME": user,
        "AMBIDEX_KAFKA_SASL_PASSWORD": known[user],
    }


def password_variable(user: str) -> str:
    """The environment variable the Connect worker reads ``user``'s password from."""
    return "AMBIDEX_KAFKA_PASSWORD_" + user.upper().replace("-", "_")


#: the JAAS login module of each SASL mechanism a Kafka client may use
LOGIN_MODULES = {
    "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule",
    "SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
    "PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
}


def jaas(user: str, mechanism: str = SASL_MECHANISM) -> str:
    """A ``mechanism`` login for ``user`` whose password the worker resolves from its
    environment (``${env:...}``: never in a properties file or the REST API)."""
    return (
        f"{LOGIN_MODULES[mechanism]} required "
        f'username="{user}" password="${{env:{password_variable(user)}}}";'
    )


def connect_worker_security(config: StackConfig) -> tuple[dict[str, str], dict[str, str]]:
    """Worker properties and environment that put the Connect worker on the SASL
    listener as ``ambidex-connect`` (its own clients and, by default, its connectors'),
    letting a connector replace only its principal (``Principal`` override policy, as
    Kafka 4.1 names it; the Kubernetes manifests use 4.2's ``Allowlist``)."""
    if config.kafka_sasl_bootstrap is None:
        raise StackError("the stack has no SASL listener (set AMBIDEX_STACK_KAFKA_SASL_PORT)")
    security = {
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": SASL_MECHANISM,
        "sasl.jaas.config": jaas(CONNECT_USER),
    }
    properties = {
        "bootstrap.servers": config.kafka_sasl_bootstrap,
        **security,
        **{
            f"{client}.{key}": value
            for client in ("producer", "consumer", "admin")
            for key, value in security.items()
        },
        "connector.client.config.override.policy": "Principal",
    }
    path = users_file(config.state_dir)
    known: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    environment = {password_variable(user): password for user, password in known.items()}
    return properties, environment


def connector_overrides(
    declaration: AccessDeclaration, connector: str, mechanism: str = SASL_MECHANISM
) -> dict[str, str]:
    """Config that makes ``connector``'s producer authenticate as its own principal
    (``mechanism``: the worker's; docker-compose's broker takes PLAIN)."""
    user = declaration.connectors[connector].user
    return {"producer.override.sasl.jaas.config": jaas(user, mechanism)}

"""Kafka security of ``deploy/compose/compose.yaml``, checked without Docker (part of
``ambidex compose validate``, :mod:`ambidex.compose`).

1. No plaintext door: every broker listener another container or the host can reach
   (bound to anything but the container's loopback) takes SASL; the broker's own
   controller and inter-broker listeners may stay plaintext on ``localhost``.
2. The broker's user list (the PLAIN JAAS of each SASL listener) gives every user a
   ``${VARIABLE}`` password, never an inline one.
3. Every Kafka client logs in: each compose service with ``AMBIDEX_KAFKA_BOOTSTRAP``
   (the services, the setup job, the pipeline exporter) and the Connect worker's own,
   producer, consumer and admin clients use a SASL protocol and a mechanism the broker
   enables, reach an advertised SASL listener, and log in as a user the broker lists
   with the same password variable. A service of ``deploy/access.yaml`` logs in as its
   declared principal; with ``--connector-principals`` each capture connector's
   password reaches the Connect worker.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ambidex.access import AccessDeclaration, load_access
from ambidex.stack.kafka_access import password_variable

_LOOPBACK = re.compile(r"^(localhost|127\.\d+\.\d+\.\d+|\[::1\])$")
_LISTENER = re.compile(r"^(?P<name>[A-Za-z0-9_]+)://(?P<host>[^:]*|\[[^\]]*\]):(?P<port>\d+)$")
#: ``user_<name>="<password>"`` in a broker's PLAIN JAAS
_BROKER_USER = re.compile(r'user_(?P<user>[^=\s"]+)="(?P<password>[^"]*)"')
_LOGIN = re.compile(r'username="(?P<user>[^"]*)"\s+password="(?P<password>[^"]*)"')
#: a compose ``${VARIABLE}`` (with an optional ``:?message`` or ``:-default``)
_VARIABLE = re.compile(r"^\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(:?[-?][^}]*)?\}$")
#: a Connect worker's ``${env:VARIABLE}`` (written ``$${env:...}`` in a compose file)
_ENV_PROVIDER = re.compile(r"^\$?\$\{env:(?P<name>[A-Za-z_][A-Za-z0-9_]*)\}$")
_CONNECT_CLIENTS = ("CONNECT_", "CONNECT_PRODUCER_", "CONNECT_CONSUMER_", "CONNECT_ADMIN_")


@dataclass(frozen=True)
class Listener:
    name: str
    host: str
    port: int
    protocol: str

    @property
    def reachable(self) -> bool:
        """Other containers and the host can connect (not bound to the loopback)."""
        return not _LOOPBACK.match(self.host)


def _listeners(value: str, protocols: Mapping[str, str]) -> list[Listener]:
    found = []
    for item in filter(None, (part.strip() for part in value.split(","))):
        match = _LISTENER.match(item)
        if match is None:
            continue
        name = match["name"].upper()
        protocol = protocols.get(name, name)  # a listener named after its protocol
        found.append(Listener(name, match["host"], int(match["port"]), protocol))
    return found


def _protocol_map(value: str) -> dict[str, str]:
    pairs = (part.split(":", 1) for part in value.split(",") if ":" in part)
    return {name.strip().upper(): protocol.strip().upper() for name, protocol in pairs}


@dataclass(frozen=True)
class Broker:
    listeners: list[Listener]
    advertised: dict[str, Listener]  # "host:port" -> the listener it names
    mechanisms: set[str]
    #: user -> the variable holding its password (None: inline, or unreadable)
    users: dict[str, str | None]


def read_broker(kafka: Mapping[str, str]) -> Broker:
    protocols = _protocol_map(kafka.get("KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", ""))
    listeners = _listeners(kafka.get("KAFKA_LISTENERS", ""), protocols)
    by_name = {listener.name: listener for listener in listeners}
    advertised = {
        f"{a.host}:{a.port}": by_name.get(a.name, a)
        for a in _listeners(kafka.get("KAFKA_ADVERTISED_LISTENERS", ""), protocols)
    }
    mechanisms = {
        m.strip().upper()
        for m in kafka.get("KAFKA_SASL_ENABLED_MECHANISMS", "GSSAPI").split(",")
        if m.strip()
    }
    users: dict[str, str | None] = {}
    for variable, value in kafka.items():
        if variable.startswith("KAFKA_LISTENER_NAME_") and variable.endswith("_SASL_JAAS_CONFIG"):
            for match in _BROKER_USER.finditer(value):
                reference = _VARIABLE.match(match["password"])
                users[match["user"]] = reference["name"] if reference else None
    return Broker(listeners, advertised, mechanisms, users)


def _jaas_of(kafka: Mapping[str, str], listener: Listener, mechanism: str) -> str | None:
    # the apache/kafka image's naming: "." -> "_", "-" -> "___", upper case
    key = f"listener.name.{listener.name}.{mechanism}.sasl.jaas.config".lower()
    return kafka.get("KAFKA_" + key.replace("-", "___").replace(".", "_").upper())


def broker_problems(kafka: Mapping[str, str], broker: Broker) -> Iterator[str]:
    if not broker.listeners:
        yield "kafka: no KAFKA_LISTENERS"
    for listener in broker.listeners:
        if not listener.reachable:
            continue
        if not listener.protocol.startswith("SASL_"):
            yield (
                f"kafka: listener {listener.name} ({listener.protocol}) on "
                f"{listener.host or 'every address'}:{listener.port} is reachable without a "
                "login; make it SASL_* or bind it to localhost"
            )
        elif "PLAIN" in broker.mechanisms and not _jaas_of(kafka, listener, "plain"):
            yield f"kafka: SASL listener {listener.name} has no PLAIN user list (JAAS)"
    for user, variable in sorted(broker.users.items()):
        if variable is None:
            yield f"kafka: user {user}'s password is inline; reference it as ${{VARIABLE}}"


def _login_problems(
    owner: str, broker: Broker, protocol: str, mechanism: str, user: str, variable: str | None
) -> Iterator[str]:
    if not protocol.upper().startswith("SASL_"):
        shown = protocol or "PLAINTEXT (unset)"
        yield f"{owner}: Kafka security protocol {shown}; it must log in (SASL_*)"
        return
    if mechanism.upper() not in broker.mechanisms:
        yield f"{owner}: SASL mechanism {mechanism or '(unset)'} is not one the broker enables"
    if not user:
        yield f"{owner}: no Kafka user name"
    elif user not in broker.users:
        yield f"{owner}: Kafka user {user} is not one the broker knows"
    if variable is None:
        yield f"{owner}: the Kafka password is not a ${{VARIABLE}} reference"
    elif user in broker.users and broker.users[user] != variable:
        yield (
            f"{owner}: logs in as {user} with ${{{variable}}}, the broker checks it "
            f"against ${{{broker.users[user]}}}"
        )


def _reaches_sasl(owner: str, broker: Broker, bootstrap: str) -> Iterator[str]:
    for address in filter(None, (part.strip() for part in bootstrap.split(","))):
        listener = broker.advertised.get(address)
        if listener is None:
            yield f"{owner}: bootstrap {address} is no listener the broker advertises"
        elif not listener.protocol.startswith("SASL_"):
            yield f"{owner}: bootstrap {address} is the {listener.protocol} listener"


def client_problems(
    name: str, environment: Mapping[str, str], broker: Broker, access: AccessDeclaration
) -> Iterator[str]:
    """A compose service that reads ``AMBIDEX_KAFKA_*`` settings."""
    yield from _reaches_sasl(name, broker, environment["AMBIDEX_KAFKA_BOOTSTRAP"])
    user = environment.get("AMBIDEX_KAFKA_SASL_USERNAME", "")
    reference = _VARIABLE.match(environment.get("AMBIDEX_KAFKA_SASL_PASSWORD", ""))
    yield from _login_problems(
        name,
        broker,
        environment.get("AMBIDEX_KAFKA_SECURITY_PROTOCOL", ""),
        environment.get("AMBIDEX_KAFKA_SASL_MECHANISM", ""),
        user,
        reference["name"] if reference else None,
    )
    declared = access.services.get(name)
    if declared is not None and user and user != declared.user:
        yield f"{name}: logs in as {user}, deploy/access.yaml declares {declared.user}"


def connect_problems(
    name: str, environment: Mapping[str, str], broker: Broker, connector_principals: bool,
    access: AccessDeclaration,
) -> Iterator[str]:
    """The Connect worker (Debezium image: ``CONNECT_*`` settings, ``BOOTSTRAP_SERVERS``)."""
    bootstrap = environment.get("BOOTSTRAP_SERVERS") or environment.get("CONNECT_BOOTSTRAP_SERVERS")
    yield from _reaches_sasl(name, broker, bootstrap or "")

    def resolved(variable: str | None) -> str | None:
        """The compose variable behind the worker's ``${env:variable}``."""
        reference = _VARIABLE.match(environment.get(variable or "", ""))
        return reference["name"] if reference else None

    for prefix in _CONNECT_CLIENTS:
        login = _LOGIN.search(environment.get(f"{prefix}SASL_JAAS_CONFIG", ""))
        provider = _ENV_PROVIDER.match(login["password"]) if login else None
        yield from _login_problems(
            f"{name} ({prefix.lower().rstrip('_')})",
            broker,
            environment.get(f"{prefix}SECURITY_PROTOCOL", ""),
            environment.get(f"{prefix}SASL_MECHANISM", ""),
            login["user"] if login else "",
            resolved(provider["name"]) if provider else None,
        )
    if connector_principals:
        for connector in access.connectors.values():
            yield from _login_problems(
                f"{name} (connector {connector.name})",
                broker,
                environment.get("CONNECT_SECURITY_PROTOCOL", ""),
                environment.get("CONNECT_SASL_MECHANISM", ""),
                connector.user,
                resolved(password_variable(connector.user)),
            )


def kafka_security_problems(
    services: Mapping[str, Any],
    environments: Mapping[str, Mapping[str, str]],
    access: AccessDeclaration | None = None,
) -> list[str]:
    """Every problem of the file's Kafka security (``environments``: each service's
    environment as a mapping)."""
    access = access or load_access()
    kafka = environments.get("kafka", {})
    broker = read_broker(kafka)
    problems = list(broker_problems(kafka, broker))
    connector_principals = any(
        "--connector-principals" in (service.get("command") or []) for service in services.values()
    )
    if access.connectors and not connector_principals:
        problems.append(
            "setup: no --connector-principals: the capture connectors would produce as the "
            "Connect worker's user, not their own (deploy/access.yaml)"
        )
    for name, environment in environments.items():
        if "AMBIDEX_KAFKA_BOOTSTRAP" in environment:
            problems.extend(client_problems(name, environment, broker, access))
        elif any(key.startswith("CONNECT_") for key in environment):
            problems.extend(
                connect_problems(name, environment, broker, connector_principals, access)
            )
    return problems

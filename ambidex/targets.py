"""What an operator command talks to: the same ``AMBIDEX_*`` settings the services read.

``ambidex deadletters …`` and ``ambidex reconcile …`` run against a deployed Ambidex as
often as against the local stack. An address comes from, in this order: the command's
own option (``--bootstrap``, ``--crm-dsn``, ``--erp-dsn``), the service setting in the
environment (``AMBIDEX_KAFKA_BOOTSTRAP``, ``AMBIDEX_CRM_DSN``, ``AMBIDEX_ERP_DSN``: the
variables of ``docs/configuration.md``), and only then the local stack of this checkout.
A target that cannot be reached is one clear line naming it (password masked) and the
setting to change, never a traceback (:func:`unreachable`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from services.shared.kafka import Kafka, KafkaConnection, client_options
from services.shared.settings import env_var, redact_dsn


@dataclass(frozen=True)
class Targets:
    """Where an operator command reads and writes; DSNs hold passwords (never printed)."""

    kafka_bootstrap: str
    crm_dsn: str = field(repr=False)
    erp_dsn: str = field(repr=False)
    #: where each address came from: "option", the variable's name, or "local stack"
    origins: Mapping[str, str] = field(default_factory=dict)
    #: how to connect to ``kafka_bootstrap`` (AMBIDEX_KAFKA_SECURITY_PROTOCOL and the
    #: SASL/SSL settings, as the services read them); None: plain
    kafka_security: KafkaConnection | None = field(default=None, repr=False)
    #: where registry-framed values' schemas are read (AMBIDEX_SCHEMA_REGISTRY_URL, else
    #: the local stack's registry when Kafka is the local stack's); None: none
    schema_registry_url: str | None = None

    @property
    def kafka(self) -> Kafka:
        """What every Kafka client of the command connects with."""
        return self.kafka_security or self.kafka_bootstrap

    def describe(self, name: str) -> str:
        """``name`` (``kafka_bootstrap``/``crm_dsn``/``erp_dsn``) as safe to print."""
        value = getattr(self, name)
        shown = redact_dsn(value) if name.endswith("_dsn") else value
        return f"{shown} (from {self.origins.get(name, 'local stack')})"


def resolve_targets(
    *,
    kafka_bootstrap: str | None = None,
    crm_dsn: str | None = None,
    erp_dsn: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Targets:
    """Options first, then ``AMBIDEX_*`` service settings, then the local stack.

    The local stack is only consulted for what neither gives (reading its addresses
    reads its state directory; nothing is started).
    """
    env = os.environ if environ is None else environ
    given = {"kafka_bootstrap": kafka_bootstrap, "crm_dsn": crm_dsn, "erp_dsn": erp_dsn}
    values: dict[str, str] = {}
    origins: dict[str, str] = {}
    for name, option in given.items():
        variable = env_var(name)
        if option:
            values[name], origins[name] = option, "option"
        elif env.get(variable):
            values[name], origins[name] = env[variable], variable
    registry = env.get(env_var("schema_registry_url")) or None
    missing = [name for name in given if name not in values]
    if missing:
        from ambidex.stack.config import StackConfig
        from ambidex.stack.local import LocalStack
        from ambidex.stack.schema_registry import registry_url

        stack = LocalStack(StackConfig.from_env())
        local = {
            "kafka_bootstrap": stack.config.kafka_bootstrap,
            # the admin user: reconcile reads every table, and the local stack is ours
            "crm_dsn": stack.addresses.crm_admin_dsn,
            "erp_dsn": stack.addresses.erp_admin_dsn,
        }
        for name in missing:
            values[name], origins[name] = local[name], "local stack"
        if registry is None and "kafka_bootstrap" in missing:
            # the stack's services publish registry-framed letters: read them the same way
            registry = registry_url(stack.config)
    kafka = kafka_from_environment(values["kafka_bootstrap"], env)
    security = None if isinstance(kafka, str) else kafka
    return Targets(origins=origins, kafka_security=security,
                   schema_registry_url=registry, **values)


def kafka_from_environment(
    bootstrap: str, environ: Mapping[str, str] | None = None, client: str = "ambidex-cli"
) -> Kafka:
    """``bootstrap`` with the services' ``AMBIDEX_KAFKA_SECURITY_PROTOCOL`` and SASL/SSL
    settings from ``environ`` (a plain string when the protocol is PLAINTEXT), checked
    the way a service checks them (a SASL protocol without a user fails here)."""
    env = os.environ if environ is None else environ
    if env.get(env_var("kafka_security_protocol"), "PLAINTEXT").upper() == "PLAINTEXT":
        return bootstrap
    from services.shared.settings import load_settings

    return load_settings(client, {**env, env_var("kafka_bootstrap"): bootstrap}).kafka


def unreachable(targets: Targets, name: str, error: BaseException) -> str:
    """One line for a person: what could not be reached, from where, and what to set."""
    setting = {
        "kafka_bootstrap": "--bootstrap or AMBIDEX_KAFKA_BOOTSTRAP",
        "crm_dsn": "--crm-dsn or AMBIDEX_CRM_DSN",
        "erp_dsn": "--erp-dsn or AMBIDEX_ERP_DSN",
    }[name]
    reason = redact_dsn(str(error)) or type(error).__name__
    return (
        f"cannot reach {targets.describe(name)}: {reason}. "
        f"Set {setting}, or start the local stack (ambidex up)."
    )


class Unreachable(Exception):
    """A target did not answer; the message is :func:`unreachable`'s line."""


async def check_databases(targets: Targets, *names: str) -> None:
    """Connect to each named DSN once (5 s), so a wrong address fails before any work."""
    import asyncpg

    for name in names:
        try:
            connection = await asyncpg.connect(getattr(targets, name), timeout=5)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            raise Unreachable(unreachable(targets, name, error)) from None
        await connection.close()


async def check_kafka(targets: Targets) -> None:
    """Bootstrap against the brokers once, so a wrong address fails before any work."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError

    producer = AIOKafkaProducer(**client_options(targets.kafka), request_timeout_ms=5000)
    try:
        await producer.start()
    except (OSError, KafkaError) as error:
        await producer.stop()
        raise Unreachable(unreachable(targets, "kafka_bootstrap", error)) from None
    await producer.stop()


def database_targets(crm_dsn: str | None, erp_dsn: str | None) -> tuple[str, str]:
    """The CRM and ERP DSNs a reconcile command uses, both checked reachable; an
    unreachable one is a :class:`click.ClickException` (one line, no traceback)."""
    import asyncio

    import click

    targets = resolve_targets(crm_dsn=crm_dsn, erp_dsn=erp_dsn)
    try:
        asyncio.run(check_databases(targets, "crm_dsn", "erp_dsn"))
    except Unreachable as error:
        raise click.ClickException(str(error)) from None
    return targets.crm_dsn, targets.erp_dsn

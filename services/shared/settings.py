"""Service settings: read once from ``AMBIDEX_*`` environment variables, then passed in.

Every service calls :func:`load_settings` exactly once at start-up and hands the
frozen :class:`ServiceSettings` to whatever needs it; nothing reads the environment
later. Database DSNs carry passwords, so they are :class:`pydantic.SecretStr`: they
never show in ``repr``/``str`` of the settings, and :meth:`ServiceSettings.redacted`
gives a loggable view with the password masked.

The table in ``docs/configuration.md`` is generated from this model by
:func:`configuration_reference_markdown` (a unit test fails if it is stale).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from services.shared.kafka import KafkaConnection, SaslMechanism, SecurityProtocol

ENV_PREFIX = "AMBIDEX_"

#: Fields that are not read from the environment (they are given by the service code).
CODE_ONLY_FIELDS = frozenset({"service_name"})

LogFormat = Literal["json", "console"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]

_SERVICE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_DSN_PASSWORD = re.compile(r"^(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@?#]*:)(?P<pw>[^@]*)(?P<at>@)")


class SettingsError(ValueError):
    """The environment does not describe a valid configuration; names the variable(s)."""


class ServiceSettings(BaseSettings):
    """Configuration shared by every Ambidex service (frozen; see ``docs/configuration.md``)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        frozen=True,
        extra="ignore",
        case_sensitive=False,
        validate_default=True,
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # load_settings reads the environment it is given (os.environ by default) and
        # passes the values in: no other source (os.environ itself, .env files) may add
        # to them, or a test's settings would depend on the process's environment
        return (init_settings,)

    service_name: str = Field(
        default="ambidex",
        description=(
            "Name of the service (metrics label, log field, consumer group, dead-letter "
            "topic). Given by the service's code to `load_settings`, not read from the "
            "environment."
        ),
    )
    kafka_bootstrap: str = Field(
        default="localhost:9092",
        description="Kafka bootstrap servers, comma-separated `host:port` list.",
    )
    kafka_security_protocol: SecurityProtocol = Field(
        default="PLAINTEXT",
        description=(
            "How every Kafka client of the service connects: `PLAINTEXT`, `SSL`, "
            "`SASL_PLAINTEXT` or `SASL_SSL` (Strimzi's TLS + SCRAM listener)."
        ),
    )
    kafka_sasl_mechanism: SaslMechanism | None = Field(
        default=None,
        description="`SCRAM-SHA-512`, `SCRAM-SHA-256` or `PLAIN` (required with SASL_*).",
    )
    kafka_sasl_username: str | None = Field(
        default=None, description="The service's Kafka user (required with SASL_*)."
    )
    kafka_sasl_password: SecretStr | None = Field(
        default=None,
        description="That user's password (required with SASL_*). Secret: never logged.",
    )
    kafka_ssl_cafile: Path | None = Field(
        default=None,
        description=(
            "CA bundle (PEM) the brokers' certificates are checked against with SSL or "
            "SASL_SSL (Strimzi: the cluster CA's `ca.crt`); unset: the system's CAs."
        ),
    )
    crm_dsn: SecretStr = Field(
        default=SecretStr("postgresql://ambidex_app@localhost:5433/crm"),
        description=(
            "asyncpg DSN of the CRM database (write-back user). Secret: never logged. "
            "Without a password in it, `PGPASSWORD` or `~/.pgpass` is used."
        ),
    )
    erp_dsn: SecretStr = Field(
        default=SecretStr("postgresql://ambidex_app@localhost:5434/erp"),
        description=(
            "asyncpg DSN of the ERP database (write-back user). Secret: never logged. "
            "Without a password in it, `PGPASSWORD` or `~/.pgpass` is used."
        ),
    )
    connect_url: str = Field(
        default="http://localhost:8083",
        description="Kafka Connect REST URL (connector status for readiness and tooling).",
    )
    metrics_host: str = Field(
        default="0.0.0.0",
        description="Address the `/metrics`, `/healthz`, `/readyz` server binds to.",
    )
    metrics_port: int = Field(
        default=9400,
        ge=0,
        le=65535,
        description="Port of the observability server (0 = any free port).",
    )
    customer_value_dashboard_port: int = Field(
        default=9410,
        ge=0,
        le=65535,
        description=(
            "Port of customer-value's read-only dashboard (HTML and JSON, bound to the "
            "`AMBIDEX_METRICS_HOST` address; 0 = any free port). Other services ignore it."
        ),
    )
    order_sync_role: Literal["single", "router", "worker"] = Field(
        default="single",
        description=(
            "order-sync's scale-out, opt-in (ADR 0003): `single` (one process does "
            "everything), `router` (CRM transactions to `route.order-sync`, plus the ERP "
            "-> CRM direction; run one) or `worker` (applies the routed CRM changes to the "
            "ERP; run any number). Other services ignore it."
        ),
    )
    log_format: LogFormat = Field(
        default="json",
        description="`json` (one object per line, for collectors) or `console` (humans).",
    )
    log_level: LogLevel = Field(
        default="INFO",
        description="Root log level: DEBUG, INFO, WARNING, ERROR or CRITICAL.",
    )
    schemas_dir: Path = Field(
        default=Path("schemas"),
        description="Directory holding the Avro schemas (`schemas/` of the project).",
    )
    table_state_dir: Path = Field(
        default=Path("state"),
        description=(
            "Directory for the services' local state (inventory-projection's RocksDB store "
            "in `<service>/state`); each service uses the sub-directory named after it. "
            "Rebuilt from changelog topics if lost (inventory-projection: "
            "`state.inventory-projection`)."
        ),
    )
    table_store: Literal["rocksdb", "memory"] = Field(
        default="rocksdb",
        description=(
            "Where a service keeps its state between restarts: `rocksdb` (production: on disk, "
            "restored from the changelog only when lost) or `memory` (tests, small tools: "
            "restored from the changelog at every start)."
        ),
    )
    state_cache_mb: int = Field(
        default=32,
        ge=1,
        le=65_536,
        description=(
            "RocksDB block cache of a service's local state, in MiB. It holds the table "
            "files' data, index and filter blocks, so with the two 16 MiB memtables it "
            "bounds what the state store takes of the worker's memory whatever the "
            "state's size (`ambidex_state_store_memory_bytes` shows each part)."
        ),
    )
    sink_batch_max_rows: int = Field(
        default=1000,
        ge=1,
        le=100_000,
        description=(
            "Most rows one sink transaction writes; whole source transactions are never split."
        ),
    )
    max_hold_seconds: float = Field(
        default=300.0,
        gt=0,
        le=86_400,
        description=(
            "Longest a service holds a source transaction waiting for the rest of its "
            "records, in source time (commit times seen, heartbeats included, so a replay "
            "decides the same), once it has read the topics of the missing records to their "
            "end; then the transaction is rejected whole to the dead letters (order-sync "
            "also marks its CRM orders rejected)."
        ),
    )
    demand_surge_factor: Decimal = Field(
        default=Decimal("2"),
        ge=1,
        allow_inf_nan=False,
        description=(
            "inventory-projection's demand signals: a product's 7-day demand rate above "
            "its 28-day baseline by this factor is a surge (docs/demand-signals.md)."
        ),
    )
    demand_surge_min_rate: Decimal = Field(
        default=Decimal("1"),
        ge=0,
        allow_inf_nan=False,
        description=(
            "Floor of that baseline, units a day, so a first quote on a new product is "
            "no surge."
        ),
    )
    receivables_grace_days: int = Field(
        default=5,
        ge=0,
        le=365,
        description=(
            "receivables: days past its due date an installment may stay without an ERP "
            "invoice, and a posted invoice partly paid, before it is a discrepancy "
            "(`ambidex reconcile receivables` reads the same variable). A change applies "
            "to what changes or ages next; rebuild the state to judge everything again."
        ),
    )
    retry_max_delay_seconds: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description=(
            "Longest wait between two retries of work that failed because a database or "
            "the broker was unavailable (exponential backoff with jitter up to this)."
        ),
    )
    log_repeat_interval_seconds: float = Field(
        default=10.0,
        ge=0,
        le=3600,
        description=(
            "A repeated warning or error (e.g. Kafka client connection errors during an "
            "outage) is logged once per this interval, with the count of repeats."
        ),
    )
    dead_letter_topic_prefix: str = Field(
        default="dlq.",
        min_length=1,
        description="Prefix of the dead-letter topic; the topic is `<prefix><service_name>`.",
    )
    schema_registry_url: str | None = Field(
        default=None,
        description=(
            "Confluent-compatible schema registry (e.g. `http://registry:8080/apis/ccompat/v7` "
            "for Apicurio). Set, the service registers the schemas of the topics it "
            "publishes (subject `<topic>-value`, compatibility FULL) at start-up and reads "
            "registry-framed values; credentials go in the two variables below, not here."
        ),
    )
    schema_registry_username: str | None = Field(
        default=None, description="Basic-auth user of the schema registry (optional)."
    )
    schema_registry_password: SecretStr | None = Field(
        default=None,
        description="That user's password. Secret: never logged.",
    )
    wire_format: Literal["registry", "single-object"] | None = Field(
        default=None,
        description=(
            "How published values are framed (docs/wire-format.md): `registry` (magic byte "
            "0, 4-byte schema id, Avro body: what Connect, ksqlDB, Flink and Kafka UIs read; "
            "needs `AMBIDEX_SCHEMA_REGISTRY_URL`) or `single-object` (Avro single-object "
            "encoding, no registry). Unset: `registry` when a registry URL is set. Both "
            "are always read."
        ),
    )

    @field_validator("service_name")
    @classmethod
    def _check_service_name(cls, value: str) -> str:
        if not _SERVICE_NAME.match(value):
            raise ValueError(
                "must be lower-case letters, digits, '-' or '_', starting with a letter"
            )
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower_format(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("crm_dsn", "erp_dsn")
    @classmethod
    def _check_dsn(cls, value: SecretStr) -> SecretStr:
        text = value.get_secret_value()
        if not text.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL")
        return value

    @field_validator("schema_registry_url")
    @classmethod
    def _check_registry_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL")
        if parts.username is not None or parts.password is not None:
            raise ValueError(
                "must not carry credentials: use AMBIDEX_SCHEMA_REGISTRY_USERNAME and "
                "AMBIDEX_SCHEMA_REGISTRY_PASSWORD"
            )
        return value.strip().rstrip("/")

    @field_validator("kafka_bootstrap")
    @classmethod
    def _check_bootstrap(cls, value: str) -> str:
        for part in value.split(","):
            host, sep, port = part.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError("must be a comma-separated list of host:port")
        return value

    @model_validator(mode="after")
    def _check_kafka_security(self) -> ServiceSettings:
        try:
            self.kafka  # noqa: B018 -- SASL without its mechanism, user or password
        except ValueError as error:
            raise ValueError(
                f"{env_var('kafka_security_protocol')}: {error} "
                f"({env_var('kafka_sasl_mechanism')}, {env_var('kafka_sasl_username')}, "
                f"{env_var('kafka_sasl_password')})"
            ) from None
        if self.wire_format == "registry" and not self.schema_registry_url:
            raise ValueError(
                f"{env_var('wire_format')}=registry needs {env_var('schema_registry_url')}"
            )
        return self

    # -- derived values --------------------------------------------------------------

    @property
    def kafka(self) -> KafkaConnection:
        """How every Kafka client of this service connects (:mod:`services.shared.kafka`)."""
        password = self.kafka_sasl_password
        return KafkaConnection(
            bootstrap=self.kafka_bootstrap,
            security_protocol=self.kafka_security_protocol,
            sasl_mechanism=self.kafka_sasl_mechanism,
            sasl_username=self.kafka_sasl_username,
            sasl_password=password.get_secret_value() if password is not None else None,
            ssl_cafile=self.kafka_ssl_cafile,
        )

    @property
    def published_wire_format(self) -> Literal["registry", "single-object"]:
        """The wire format this service publishes in (``wire_format``, else by URL)."""
        if self.wire_format is not None:
            return self.wire_format
        return "registry" if self.schema_registry_url else "single-object"

    @property
    def dead_letter_topic(self) -> str:
        return f"{self.dead_letter_topic_prefix}{self.service_name}"

    @property
    def service_state_dir(self) -> Path:
        """This service's own directory (its local state; the Faust worker's ``datadir``)."""
        return self.table_state_dir / self.service_name

    def redacted(self) -> dict[str, Any]:
        """Every setting as plain JSON-able values, passwords masked: safe to log."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                secret = value.get_secret_value()
                out[name] = redact_dsn(secret) if name.endswith("_dsn") else "***"
            elif isinstance(value, Path):
                out[name] = str(value)
            else:
                out[name] = value
        return out


def redact_dsn(dsn: str) -> str:
    """``postgresql://u:pw@h/db`` -> ``postgresql://u:***@h/db``; ``password=`` too."""
    masked = _DSN_PASSWORD.sub(r"\g<head>***\g<at>", dsn)
    return re.sub(r"(?i)(password=)[^&\s]*", r"\1***", masked)


def env_var(field_name: str) -> str:
    return f"{ENV_PREFIX}{field_name.upper()}"


def load_settings(service_name: str, environ: Mapping[str, str] | None = None) -> ServiceSettings:
    """Read the settings of ``service_name`` from ``environ`` (default ``os.environ``).

    Only ``AMBIDEX_<FIELD>`` variables (any case) are read; other ``AMBIDEX_*``
    variables belong to other tools (the local stack) and are ignored. Raises
    :class:`SettingsError` with one message naming every bad variable; secret values
    are never echoed in it.
    """
    env = os.environ if environ is None else environ
    by_upper = {key.upper(): value for key, value in env.items()}
    values: dict[str, Any] = {"service_name": service_name}
    for name in ServiceSettings.model_fields:
        if name in CODE_ONLY_FIELDS:
            continue
        raw = by_upper.get(env_var(name))
        if raw is not None:
            values[name] = raw
    try:
        # ``environ`` is the only input (ServiceSettings reads no source of its own)
        return ServiceSettings(**values)
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False):
        if not error["loc"]:  # a rule over several settings: it names them itself
            problems.append(str(error["msg"]).removeprefix("Value error, "))
            continue
        field = str(error["loc"][0])
        info = ServiceSettings.model_fields.get(field)
        where = "service name (argument)" if field in CODE_ONLY_FIELDS else env_var(field)
        message = str(error["msg"]).removeprefix("Value error, ")
        secret = info is not None and "SecretStr" in str(info.annotation)
        if not secret and "input" in error:
            message += f" (got {error['input']!r})"
        problems.append(f"{where}: {message}")
    return "invalid configuration: " + "; ".join(problems)


def configuration_reference_markdown() -> str:
    """The variables table of ``docs/configuration.md``, generated from the model."""
    lines = [
        "| variable | default | meaning |",
        "| --- | --- | --- |",
    ]
    for name, info in ServiceSettings.model_fields.items():
        default = info.default
        if isinstance(default, SecretStr):
            default = default.get_secret_value()
        variable = "(code)" if name in CODE_ONLY_FIELDS else f"`{env_var(name)}`"
        description = info.description or ""
        lines.append(f"| {variable} | `{default}` | {description} |")
    return "\n".join(lines) + "\n"

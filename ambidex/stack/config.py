"""Where the local stack lives and how it is reached, read once from the environment."""

from __future__ import annotations

import json
import os
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class StackSecrets:
    """Passwords generated on first start and kept (mode 0600) in the state directory."""

    postgres_password: str = field(repr=False)
    cdc_password: str = field(repr=False)
    app_password: str = field(repr=False)

    @classmethod
    def load_or_create(cls, state_dir: Path) -> StackSecrets:
        path = state_dir / "secrets.json"
        if path.exists():
            return cls(**json.loads(path.read_text()))
        created = cls(*(secrets.token_urlsafe(18) for _ in range(3)))
        state_dir.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(json.dumps(created.__dict__))
        return created


@dataclass(frozen=True)
class StackConfig:
    """Ports, directories and sizes of one local stack.

    Every field has an ``AMBIDEX_STACK_*`` environment variable (see ``from_env``);
    tests use :meth:`ephemeral` to get a private stack on free ports.
    """

    state_dir: Path
    cache_dir: Path
    host: str = "127.0.0.1"
    kafka_port: int = 9092
    controller_port: int = 9093
    connect_port: int = 8083
    crm_port: int = 5433
    erp_port: int = 5434
    kafka_heap: str = "768m"
    connect_heap: str = "768m"
    heartbeat_interval_ms: int = 2000
    java_home: str | None = None
    #: AMBIDEX_METRICS_PORT: None = registry defaults where free, 0 = any free ports,
    #: N = the services on N, N+1, ... (see ambidex.stack.ports)
    metrics_port: int | None = None
    restart_backoff_s: float = 1.0
    restart_backoff_max_s: float = 60.0
    #: AMBIDEX_STACK_KAFKA_SASL_PORT: a SASL_PLAINTEXT (SCRAM-SHA-512) listener beside the
    #: plain one, with the standard authorizer and the users and ACLs of deploy/access.yaml
    #: (see ambidex.stack.kafka_access); None = the plain listener only, no authorizer
    kafka_sasl_port: int | None = None
    #: AMBIDEX_STACK_{KAFKA,CONNECT}_METRICS_PORT: the JMX exporter agents' /metrics in the
    #: broker's and the worker's JVM; AMBIDEX_STACK_EXPORTER_PORT: the pipeline exporter's
    #: (replication slots, consumer-group lag; ambidex.pipeline_exporter)
    kafka_metrics_port: int = 9410
    connect_metrics_port: int = 9411
    exporter_port: int = 9412
    #: AMBIDEX_STACK_CONNECT_PLUGINS: optional Connect plugins beside Debezium's PostgreSQL
    #: connector, comma-separated (``ambidex.stack.jars.OPTIONAL_PLUGINS``, e.g. ``jdbc-sink``)
    connect_plugins: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> StackConfig:
        env = os.environ if environ is None else environ
        default_state = REPO_ROOT / ".state"
        default_cache = Path(env.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ambidex"

        def port(name: str, default: int) -> int:
            return int(env.get(f"AMBIDEX_STACK_{name}_PORT", default))

        return cls(
            state_dir=Path(env.get("AMBIDEX_STATE_DIR", default_state)),
            cache_dir=Path(env.get("AMBIDEX_CACHE_DIR", default_cache)),
            kafka_port=port("KAFKA", 9092),
            controller_port=port("CONTROLLER", 9093),
            connect_port=port("CONNECT", 8083),
            crm_port=port("CRM", 5433),
            erp_port=port("ERP", 5434),
            kafka_heap=env.get("AMBIDEX_STACK_KAFKA_HEAP", "768m"),
            connect_heap=env.get("AMBIDEX_STACK_CONNECT_HEAP", "768m"),
            heartbeat_interval_ms=int(env.get("AMBIDEX_STACK_HEARTBEAT_MS", 2000)),
            java_home=env.get("AMBIDEX_JAVA_HOME") or None,
            metrics_port=int(env["AMBIDEX_METRICS_PORT"])
            if env.get("AMBIDEX_METRICS_PORT")
            else None,
            restart_backoff_s=float(env.get("AMBIDEX_STACK_RESTART_BACKOFF_S", 1.0)),
            restart_backoff_max_s=float(env.get("AMBIDEX_STACK_RESTART_BACKOFF_MAX_S", 60.0)),
            kafka_sasl_port=int(env["AMBIDEX_STACK_KAFKA_SASL_PORT"])
            if env.get("AMBIDEX_STACK_KAFKA_SASL_PORT")
            else None,
            kafka_metrics_port=port("KAFKA_METRICS", 9410),
            connect_metrics_port=port("CONNECT_METRICS", 9411),
            exporter_port=port("EXPORTER", 9412),
            connect_plugins=tuple(
                p.strip() for p in env.get("AMBIDEX_STACK_CONNECT_PLUGINS", "").split(",")
                if p.strip()
            ),
        )

    def ephemeral(self, state_dir: Path, *, secured: bool = False) -> StackConfig:
        """The same stack on free ports in another state directory (for tests);
        ``secured`` adds the SASL/SCRAM listener (on a free port too)."""
        ports = _free_ports(6)
        metrics = _free_ports(3)
        return replace(
            self,
            state_dir=state_dir,
            kafka_port=ports[0],
            controller_port=ports[1],
            connect_port=ports[2],
            crm_port=ports[3],
            erp_port=ports[4],
            heartbeat_interval_ms=1000,
            metrics_port=0,
            kafka_sasl_port=ports[5] if secured else None,
            kafka_metrics_port=metrics[0],
            connect_metrics_port=metrics[1],
            exporter_port=metrics[2],
        )

    def environment(self) -> dict[str, str]:
        """Environment variables under which ``from_env`` gives back this configuration."""
        env = {
            "AMBIDEX_STATE_DIR": str(self.state_dir),
            "AMBIDEX_CACHE_DIR": str(self.cache_dir),
            "AMBIDEX_STACK_KAFKA_PORT": str(self.kafka_port),
            "AMBIDEX_STACK_CONTROLLER_PORT": str(self.controller_port),
            "AMBIDEX_STACK_CONNECT_PORT": str(self.connect_port),
            "AMBIDEX_STACK_CRM_PORT": str(self.crm_port),
            "AMBIDEX_STACK_ERP_PORT": str(self.erp_port),
            "AMBIDEX_STACK_KAFKA_HEAP": self.kafka_heap,
            "AMBIDEX_STACK_CONNECT_HEAP": self.connect_heap,
            "AMBIDEX_STACK_HEARTBEAT_MS": str(self.heartbeat_interval_ms),
            "AMBIDEX_STACK_RESTART_BACKOFF_S": str(self.restart_backoff_s),
            "AMBIDEX_STACK_RESTART_BACKOFF_MAX_S": str(self.restart_backoff_max_s),
            "AMBIDEX_STACK_KAFKA_METRICS_PORT": str(self.kafka_metrics_port),
            "AMBIDEX_STACK_CONNECT_METRICS_PORT": str(self.connect_metrics_port),
            "AMBIDEX_STACK_EXPORTER_PORT": str(self.exporter_port),
        }
        if self.metrics_port is not None:
            env["AMBIDEX_METRICS_PORT"] = str(self.metrics_port)
        if self.java_home:
            env["AMBIDEX_JAVA_HOME"] = self.java_home
        if self.kafka_sasl_port is not None:
            env["AMBIDEX_STACK_KAFKA_SASL_PORT"] = str(self.kafka_sasl_port)
        if self.connect_plugins:
            env["AMBIDEX_STACK_CONNECT_PLUGINS"] = ",".join(self.connect_plugins)
        return env

    @property
    def kafka_bootstrap(self) -> str:
        return f"{self.host}:{self.kafka_port}"

    @property
    def kafka_sasl_bootstrap(self) -> str | None:
        """The SASL_PLAINTEXT listener's address, when the stack has one."""
        if self.kafka_sasl_port is None:
            return None
        return f"{self.host}:{self.kafka_sasl_port}"

    @property
    def connect_url(self) -> str:
        return f"http://{self.host}:{self.connect_port}"

    def database_port(self, database: str) -> int:
        return {"crm": self.crm_port, "erp": self.erp_port}[database]

    def dsn(self, database: str, user: str, password: str) -> str:
        return (
            f"postgresql://{user}:{password}@{self.host}:{self.database_port(database)}/{database}"
        )

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def jars_dir(self) -> Path:
        return self.cache_dir / "jars"


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()

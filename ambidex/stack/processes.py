"""The local stack's server processes: two PostgreSQL clusters, a Kafka broker, Connect.

Each process is started detached (its own session, output to ``logs/<name>.log``,
pid in ``run/<name>.pid``), so the stack outlives the command that started it and any
later command can find and stop it.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from ambidex.connectors import connect_worker_config
from ambidex.stack.config import StackConfig, StackSecrets
from ambidex.stack.jars import JarLayout

PG_BIN_CANDIDATES = (
    "/usr/lib/postgresql/17/bin",
    "/usr/lib/postgresql/16/bin",
    "/usr/lib/postgresql/15/bin",
)


class StackError(RuntimeError):
    pass


def port_open(host: str, port: int, timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def port_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now (as asyncio's would: SO_REUSEADDR)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours still answers kill(0); ask /proc
    try:
        return "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
    except (OSError, IndexError):
        return True


async def wait_for(
    description: str, check: object, *, timeout: float, log: Path | None = None
) -> None:
    """Poll ``check()`` (sync or async) until true, or fail with the log's tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check() if callable(check) else check
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.25)
    tail = ""
    if log is not None and log.exists():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
    raise StackError(f"{description} not ready after {timeout:.0f}s\n{tail}")


@dataclass
class DetachedProcess:
    """A server process started in its own session, tracked by a pid file."""

    name: str
    config: StackConfig

    @property
    def pid_file(self) -> Path:
        return self.config.state_dir / "run" / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.config.logs_dir / f"{self.name}.log"

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def spawn(self, command: list[str], env: dict[str, str] | None = None) -> int:
        """Start ``command`` detached (its own session), output to its log, in the state
        directory. A Python command runs with ``-P``: the state directory holds the
        services' state under ``services/``, which Python would otherwise import as the
        ``services`` package (the editable install is a finder, not a path entry), and the
        process would die at import."""
        if command and command[0] == sys.executable and command[1:2] != ["-P"]:
            command = [command[0], "-P", *command[1:]]
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, **(env or {})},
                cwd=self.config.state_dir,
            )
        self.pid_file.write_text(f"{process.pid}\n")
        return process.pid

    async def terminate(self, timeout: float = 30.0) -> bool:
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        if pid_alive(pid):
            os.killpg(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return True


def _postgres_bin(tool: str) -> str:
    for directory in PG_BIN_CANDIDATES:
        candidate = Path(directory) / tool
        if candidate.exists():
            return str(candidate)
    found = shutil.which(tool)
    if found is None:
        raise StackError(
            f"{tool} not found: install Debian's postgresql package (bin/ambidex does)"
        )
    return found


class PostgresCluster:
    """One PostgreSQL cluster (initdb/pg_ctl) with logical decoding on."""

    def __init__(self, database: str, config: StackConfig, secrets: StackSecrets) -> None:
        self.database = database
        self.config = config
        self.secrets = secrets
        self.data_dir = config.state_dir / "postgres" / database
        self.log_file = config.logs_dir / f"postgres-{database}.log"
        self.port = config.database_port(database)

    @property
    def name(self) -> str:
        return f"postgres-{self.database}"

    def _as_owner(self, command: list[str]) -> list[str]:
        # PostgreSQL refuses to run as root; CI and containers often are root.
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *command]
        return command

    def _prepare_dirs(self) -> None:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.config.logs_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            for directory in (self.config.state_dir, *self.config.state_dir.parents):
                # the server user must be able to traverse to its data directory
                mode = directory.stat().st_mode
                if not mode & 0o001:
                    directory.chmod(mode | 0o001)
            for path in (self.data_dir.parent, self.log_file.parent):
                os.chown(path, owner.pw_uid, owner.pw_gid)
            if self.log_file.exists():
                os.chown(self.log_file, owner.pw_uid, owner.pw_gid)

    def running(self) -> bool:
        return (self.data_dir / "postmaster.pid").exists() and port_open(
            self.config.host, self.port
        )

    async def start(self) -> None:
        self._prepare_dirs()
        if not (self.data_dir / "PG_VERSION").exists():
            await self._initdb()
        if self.running():
            return
        await _run(
            self._as_owner(
                [
                    _postgres_bin("pg_ctl"),
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self.log_file),
                    "-w",
                    "-t",
                    "60",
                    "start",
                ]
            ),
            f"start {self.name}",
        )
        await wait_for(
            self.name,
            lambda: port_open(self.config.host, self.port),
            timeout=30,
            log=self.log_file,
        )

    async def _initdb(self) -> None:
        password_file = self.config.state_dir / "postgres" / f".{self.database}.pw"
        password_file.write_text(self.secrets.postgres_password + "\n")
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(password_file, owner.pw_uid, owner.pw_gid)
        try:
            await _run(
                self._as_owner(
                    [
                        _postgres_bin("initdb"),
                        "-D",
                        str(self.data_dir),
                        "-U",
                        "postgres",
                        "--auth-local=trust",
                        "--auth-host=scram-sha-256",
                        f"--pwfile={password_file}",
                        "-E",
                        "UTF8",
                        "--locale=C.UTF-8",
                    ]
                ),
                f"initdb {self.name}",
            )
        finally:
            password_file.unlink(missing_ok=True)
        settings = {
            "port": str(self.port),
            "listen_addresses": f"'{self.config.host}'",
            "unix_socket_directories": f"'{self.data_dir}'",
            "wal_level": "logical",
            "max_wal_senders": "10",
            "max_replication_slots": "10",
            "shared_buffers": "256MB",
            "max_connections": "200",
            "wal_sender_timeout": "60s",
            "log_min_messages": "warning",
            "log_line_prefix": "'%m [%p] %q%u@%d '",
        }
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# Ambidex local stack\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

    async def stop(self) -> bool:
        if not (self.data_dir / "postmaster.pid").exists():
            return False
        await _run(
            self._as_owner(
                [_postgres_bin("pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"]
            ),
            f"stop {self.name}",
            check=False,
        )
        return True

    def admin_dsn(self, database: str = "postgres") -> str:
        return (
            f"postgresql://postgres:{self.secrets.postgres_password}@{self.config.host}:"
            f"{self.port}/{database}"
        )


#: the standard (KRaft) authorizer; ACLs live in the cluster metadata
STANDARD_AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
SASL_MECHANISM = "SCRAM-SHA-512"


def broker_properties(c: StackConfig, data_dir: Path) -> dict[str, str]:
    """server.properties of the single-node broker; with ``kafka_sasl_port`` also a
    SASL_PLAINTEXT/SCRAM listener and the standard authorizer.

    On a secured stack the plain listener stays for the operator's tools, Connect and
    the broker's own controller traffic, all bound to the stack's loopback host: its
    principal ``ANONYMOUS`` is a super user, so everything the unsecured stack does works
    unchanged, while a client on the SASL listener is its SCRAM user and gets exactly the
    ACLs deploy/access.yaml grants it (no ACL = denied).
    """
    listeners = [f"PLAINTEXT://{c.host}:{c.kafka_port}"]
    protocols = ["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT"]
    if c.kafka_sasl_port is not None:
        listeners.append(f"SASL_PLAINTEXT://{c.host}:{c.kafka_sasl_port}")
        protocols.append("SASL_PLAINTEXT:SASL_PLAINTEXT")
    properties = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{c.host}:{c.controller_port}",
        "listeners": ",".join([*listeners, f"CONTROLLER://{c.host}:{c.controller_port}"]),
        "advertised.listeners": ",".join(listeners),
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": ",".join(protocols),
        "log.dirs": str(data_dir),
        "num.partitions": "1",
        "auto.create.topics.enable": "false",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "10",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "log.retention.check.interval.ms": "60000",
    }
    if c.kafka_sasl_port is not None:
        properties |= {
            "inter.broker.listener.name": "PLAINTEXT",
            "sasl.enabled.mechanisms": SASL_MECHANISM,
            "listener.name.sasl_plaintext.sasl.enabled.mechanisms": SASL_MECHANISM,
            "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config": (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            ),
            "authorizer.class.name": STANDARD_AUTHORIZER,
            "super.users": "User:ANONYMOUS",
            "allow.everyone.if.no.acl.found": "false",
        }
    return properties


class KafkaBroker(DetachedProcess):
    """A single-node Kafka in KRaft mode (broker and controller in one process)."""

    def __init__(
        self, config: StackConfig, jars: JarLayout, jvm_options: list[str] | None = None
    ) -> None:
        super().__init__("kafka", config)
        self.jars = jars
        #: extra JVM options (the JMX exporter agent, ambidex.stack.pipeline_metrics)
        self.jvm_options = jvm_options or []
        self.data_dir = config.state_dir / "kafka" / "data"
        self.properties = config.state_dir / "kafka" / "server.properties"

    def running(self) -> bool:
        return self.pid() is not None and port_open(self.config.host, self.config.kafka_port)

    def _write_properties(self) -> None:
        _write_properties(self.properties, broker_properties(self.config, self.data_dir))

    async def start(self) -> None:
        if self.running():
            return
        self._write_properties()
        if not (self.data_dir / "meta.properties").exists():
            cluster_id = _kafka_cluster_id()
            await _run(
                [
                    *_java(self.config),
                    "-cp",
                    self.jars.kafka_classpath,
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    cluster_id,
                    "-c",
                    str(self.properties),
                    "--ignore-formatted",
                ],
                "format Kafka storage",
            )
        self.spawn(
            [
                *_java(self.config),
                "-Xms256m",
                f"-Xmx{self.config.kafka_heap}",
                *self.jvm_options,
                *_log4j(self.config, self.name),
                "-cp",
                self.jars.kafka_classpath,
                "kafka.Kafka",
                str(self.properties),
            ]
        )
        await wait_for(
            "Kafka broker",
            lambda: port_open(self.config.host, self.config.kafka_port),
            timeout=180,  # a loaded machine (2 cores, several stacks) needed 45 s
            log=self.log_file,
        )


class ConnectWorker(DetachedProcess):
    """A Kafka Connect worker in distributed mode with the Debezium plugin."""

    def __init__(
        self,
        config: StackConfig,
        jars: JarLayout,
        secrets: StackSecrets,
        security: tuple[dict[str, str], dict[str, str]] | None = None,
        jvm_options: list[str] | None = None,
        extra_plugin_paths: list[Path] | None = None,
    ) -> None:
        super().__init__("connect", config)
        #: directories of optional plugins (``ambidex.stack.jars.ensure_optional_plugin``)
        self.extra_plugin_paths = extra_plugin_paths or []
        #: extra JVM options (the JMX exporter agent, ambidex.stack.pipeline_metrics)
        self.jvm_options = jvm_options or []
        self.jars = jars
        self.secrets = secrets
        #: on a secured stack: worker properties and environment for the SASL listener
        self.security = security
        self.properties = config.state_dir / "connect" / "worker.properties"

    def running(self) -> bool:
        return self.pid() is not None and port_open(self.config.host, self.config.connect_port)

    def _write_properties(self) -> None:
        c = self.config
        properties = {
            **connect_worker_config(replication=1),
            "bootstrap.servers": c.kafka_bootstrap,
            "offset.storage.partitions": "5",
            "listeners": f"http://{c.host}:{c.connect_port}",
            "rest.advertised.host.name": c.host,
            "rest.advertised.port": str(c.connect_port),
            "plugin.path": ",".join(
                str(p) for p in (self.jars.plugin_path, *self.extra_plugin_paths)
            ),
            "plugin.discovery": "hybrid_warn",
            "scheduled.rebalance.max.delay.ms": "0",
            **(self.security[0] if self.security else {}),
        }
        _write_properties(self.properties, properties)

    async def start(self) -> None:
        if self.running():
            return
        self._write_properties()
        self.spawn(
            [
                *_java(self.config),
                "-Xms256m",
                f"-Xmx{self.config.connect_heap}",
                *self.jvm_options,
                *_log4j(self.config, self.name),
                "-cp",
                self.jars.kafka_classpath,
                "org.apache.kafka.connect.cli.ConnectDistributed",
                str(self.properties),
            ],
            env={
                "AMBIDEX_CDC_PASSWORD": self.secrets.cdc_password,
                **(self.security[1] if self.security else {}),
            },
        )
        await wait_for(
            "Kafka Connect REST",
            lambda: port_open(self.config.host, self.config.connect_port),
            timeout=300,  # plugin scanning alone took over 120 s under load
            log=self.log_file,
        )


def _write_properties(path: Path, properties: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{key}={value}\n" for key, value in properties.items()))


def _kafka_cluster_id() -> str:
    """A random cluster id as Kafka makes them (``Uuid.randomUuid``): URL-safe base64 of
    16 random bytes, never starting with ``-`` (the storage tool would take it for an
    option: "argument --cluster-id/-t: expected one argument", one start in 64)."""
    import base64

    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _java(config: StackConfig) -> list[str]:
    java = str(Path(config.java_home) / "bin" / "java") if config.java_home else "java"
    return [java, "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true"]


def _log4j(config: StackConfig, name: str) -> list[str]:
    """Log4j2 configuration: INFO for our view of the world, WARN for Kafka internals."""
    path = config.state_dir / name / "log4j2.properties"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "status = warn\n"
        "appender.out.type = Console\n"
        "appender.out.name = out\n"
        "appender.out.layout.type = PatternLayout\n"
        "appender.out.layout.pattern = [%d] %p %m (%c)%n\n"
        "rootLogger.level = INFO\n"
        "rootLogger.appenderRef.out.ref = out\n"
        "logger.kafka.name = kafka\nlogger.kafka.level = WARN\n"
        "logger.ak.name = org.apache.kafka\nlogger.ak.level = WARN\n"
        "logger.reflections.name = org.reflections\nlogger.reflections.level = ERROR\n"
        "logger.debezium.name = io.debezium\nlogger.debezium.level = INFO\n"
    )
    return [f"-Dlog4j2.configurationFile={path}"]


async def _run(command: list[str], description: str, *, check: bool = True) -> str:
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await process.communicate()
    text = output.decode(errors="replace")
    if check and process.returncode != 0:
        raise StackError(f"{description} failed ({process.returncode}):\n{text[-3000:]}")
    return text

"""The whole local stack, up and down: the one place that knows the start order."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import asyncpg

from ambidex.access import Access, load_access
from ambidex.connectors import ConnectClient, ConnectorDefinition, load_connectors
from ambidex.stack.config import REPO_ROOT, StackConfig, StackSecrets, _free_ports
from ambidex.stack.jars import JarLayout, ensure_jars, ensure_optional_plugin
from ambidex.stack.kafka_access import (
    apply_kafka_access,
    connect_worker_security,
    connector_overrides,
    sasl_client_environment,
)
from ambidex.stack.pipeline_metrics import (
    EXPORTER,
    jmx_agent_options,
    start_pipeline_exporter,
)
from ambidex.stack.ports import choose_service_ports, record_ports, recorded_ports
from ambidex.stack.processes import (
    ConnectWorker,
    DetachedProcess,
    KafkaBroker,
    PostgresCluster,
    StackError,
    port_free,
)
from ambidex.stack.schema_registry import (
    registry_environment,
    start_schema_registry,
    stop_schema_registry,
)
from ambidex.topics import apply_topics, load_topic_declaration

Progress = Callable[[str], None]
DATABASES = ("crm", "erp")


@dataclass(frozen=True)
class StackAddresses:
    """Everything a script needs to reach the stack. The DSNs carry the local stack's
    generated passwords, so they are kept out of ``repr`` (and so out of logs)."""

    kafka_bootstrap: str
    connect_url: str
    crm_dsn: str = field(repr=False)
    erp_dsn: str = field(repr=False)
    crm_admin_dsn: str = field(repr=False)
    erp_admin_dsn: str = field(repr=False)

    def dsn(self, database: str) -> str:
        return {"crm": self.crm_dsn, "erp": self.erp_dsn}[database]

    def admin_dsn(self, database: str) -> str:
        return {"crm": self.crm_admin_dsn, "erp": self.erp_admin_dsn}[database]


class LocalStack:
    def __init__(self, config: StackConfig, progress: Progress = lambda _: None) -> None:
        self.config = config
        self.progress = progress
        self.secrets = StackSecrets.load_or_create(config.state_dir)
        self.postgres = {db: PostgresCluster(db, config, self.secrets) for db in DATABASES}
        self._jars: JarLayout | None = None

    @property
    def jars(self) -> JarLayout:
        if self._jars is None:
            self._jars = ensure_jars(self.config.jars_dir, self.progress)
        return self._jars

    @property
    def kafka(self) -> KafkaBroker:
        return KafkaBroker(self.config, self.jars, jmx_agent_options(self.config, "kafka"))

    @property
    def connect(self) -> ConnectWorker:
        security = None
        if self.config.kafka_sasl_port is not None:
            security = connect_worker_security(self.config)
        return ConnectWorker(
            self.config,
            self.jars,
            self.secrets,
            security,
            jvm_options=jmx_agent_options(self.config, "connect"),
            extra_plugin_paths=[
                ensure_optional_plugin(self.config.jars_dir, name, self.progress)
                for name in self.config.connect_plugins
            ],
        )

    def connectors(self) -> list[ConnectorDefinition]:
        """The connector files with this stack's values; on a secured stack each
        connector produces as its own principal."""
        connectors = load_connectors(self.connector_values())
        if self.config.kafka_sasl_port is None:
            return connectors
        declaration = load_access()
        return [
            replace(c, config={**c.config, **connector_overrides(declaration, c.name)})
            for c in connectors
        ]

    @property
    def addresses(self) -> StackAddresses:
        c = self.config
        return StackAddresses(
            kafka_bootstrap=c.kafka_bootstrap,
            connect_url=c.connect_url,
            crm_dsn=c.dsn("crm", "ambidex_app", self.secrets.app_password),
            erp_dsn=c.dsn("erp", "ambidex_app", self.secrets.app_password),
            crm_admin_dsn=self.postgres["crm"].admin_dsn("crm"),
            erp_admin_dsn=self.postgres["erp"].admin_dsn("erp"),
        )

    def connector_values(self) -> dict[str, str]:
        return {
            "crm_db_host": self.config.host,
            "crm_db_port": str(self.config.crm_port),
            "erp_db_host": self.config.host,
            "erp_db_port": str(self.config.erp_port),
            "heartbeat_interval_ms": str(self.config.heartbeat_interval_ms),
        }

    def service_environment(
        self, service: str, metrics_port: int | None = None, *, secured: bool | None = None
    ) -> dict[str, str]:
        """The ``AMBIDEX_*`` settings a service process gets in the local stack (its
        metrics port: the given one, else the one this stack recorded, else any free).

        ``secured`` (default: whether the stack has a SASL listener) connects it to the
        SASL listener as its own Kafka user (``ambidex.stack.kafka_access``)."""
        addresses = self.addresses
        if metrics_port is None:
            metrics_port = recorded_ports(self.config.state_dir).get(service, 0)
        if secured is None:
            secured = self.config.kafka_sasl_port is not None
        kafka = (
            sasl_client_environment(self.config, Access(service).user)
            if secured
            else {"AMBIDEX_KAFKA_BOOTSTRAP": addresses.kafka_bootstrap}
        )
        return {
            **kafka,
            "AMBIDEX_CRM_DSN": addresses.crm_dsn,
            "AMBIDEX_ERP_DSN": addresses.erp_dsn,
            "AMBIDEX_CONNECT_URL": addresses.connect_url,
            "AMBIDEX_METRICS_HOST": self.config.host,
            "AMBIDEX_METRICS_PORT": str(metrics_port),
            "AMBIDEX_TABLE_STATE_DIR": str(self.config.state_dir / "services"),
            "AMBIDEX_SCHEMAS_DIR": str(REPO_ROOT / "schemas"),
            "AMBIDEX_LOG_FORMAT": "json",
            **registry_environment(self.config),
        }

    def choose_service_ports(self, names: list[str]) -> dict[str, int]:
        """Each service's metrics port (``ambidex.stack.ports``), recorded in services.json."""
        from services.registry import METRICS_PORTS

        config = self.config
        recorded = recorded_ports(config.state_dir)
        ports = choose_service_ports(
            names,
            order=[*METRICS_PORTS, *(n for n in names if n not in METRICS_PORTS)],
            requested=config.metrics_port,
            recorded=recorded,
            running=frozenset(n for n in names if DetachedProcess(n, config).pid() is not None),
            defaults=METRICS_PORTS,
            port_free=lambda port: port_free(config.host, port),
            any_free_port=lambda: _free_ports(1)[0],
        )
        record_ports(config.state_dir, {**recorded, **ports})
        return ports

    def start_services(self, names: list[str]) -> dict[str, int]:
        """Start each service under its own supervisor (restarted on exit, with backoff);
        a service whose supervisor runs is left alone. Returns the supervisors' pids."""
        ports = self.choose_service_ports(names)
        started = {}
        for name in names:
            process = DetachedProcess(name, self.config)
            if (pid := process.pid()) is not None:
                self.progress(f"{name}: running (pid {pid}), left alone")
                continue
            c = self.config
            started[name] = process.spawn(
                [
                    sys.executable,
                    "-m",
                    "ambidex.cli",
                    "stack",
                    "supervise",
                    name,
                    f"--backoff={c.restart_backoff_s:g}",
                    f"--backoff-max={c.restart_backoff_max_s:g}",
                    "--",
                    sys.executable,
                    "-P",  # not the cwd (the state directory, see DetachedProcess.spawn)
                    "-m",
                    "ambidex.cli",
                    "run",
                    name,
                ],
                env={**c.environment(), **self.service_environment(name, ports[name])},
            )
            self.progress(
                f"{name}: started under a supervisor (pid {started[name]}), metrics on port "
                f"{ports[name]}, log {process.log_file}"
            )
        return started

    async def up(self, *, seed: bool = True) -> StackAddresses:
        """Bring every component up; each step is a no-op when already done."""
        self.progress("jars: checking the cache")
        await asyncio.to_thread(lambda: self.jars)
        for name in self.config.connect_plugins:  # fetched once, off the event loop
            await asyncio.to_thread(
                ensure_optional_plugin, self.config.jars_dir, name, self.progress
            )
        self.progress("postgres: starting the CRM and ERP clusters")
        await asyncio.gather(*(cluster.start() for cluster in self.postgres.values()))
        await self._prepare_databases(seed=seed)
        self.progress("kafka: starting the broker (KRaft)")
        await self.kafka.start()
        await self.wait_kafka()
        self.progress("kafka: applying the topic declaration")
        report = await apply_topics(
            self.config.kafka_bootstrap, load_topic_declaration(), max_replication=1
        )
        self.progress(
            f"kafka: {len(report.created)} topics created, {len(report.existing)} present"
        )
        for line in report.drift:
            self.progress(f"kafka: drift {line}")
        if self.config.kafka_sasl_port is not None:
            self.progress("kafka: applying the users and ACLs of deploy/access.yaml")
            summary = await apply_kafka_access(self.config, self.jars)
            self.progress(f"kafka: {summary}; SASL/SCRAM on {self.config.kafka_sasl_bootstrap}")
        self.progress(f"schema registry: {await start_schema_registry(self.config)}")
        self.progress("connect: starting the worker with the Debezium plugin")
        await self.connect.start()
        await self.apply_connectors()
        self.progress("metrics: starting the pipeline exporter (replication slots, group lag)")
        addresses = self.addresses
        await start_pipeline_exporter(
            self.config,
            {
                "AMBIDEX_CRM_DSN": addresses.crm_dsn,
                "AMBIDEX_ERP_DSN": addresses.erp_dsn,
                "AMBIDEX_KAFKA_BOOTSTRAP": addresses.kafka_bootstrap,
            },
        )
        return addresses

    async def wait_kafka(self) -> None:
        """Return once the broker answers a metadata request (60 s at most)."""
        from aiokafka.admin import AIOKafkaAdminClient

        deadline = asyncio.get_running_loop().time() + 60
        while True:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.config.kafka_bootstrap)
            try:
                await admin.start()
                await admin.list_topics()
                return
            except Exception as error:
                if asyncio.get_running_loop().time() > deadline:
                    raise StackError(f"Kafka not answering: {error}") from error
                await asyncio.sleep(0.5)
            finally:
                await admin.close()

    async def _prepare_databases(self, *, seed: bool) -> None:
        """Create the databases, apply pending migrations, seed once: on a stack that is
        up to date this reads a few rows and changes nothing (no DDL on live tables)."""
        from ambidex.referencedb import apply_reference_schema, seed_once

        for database, cluster in self.postgres.items():
            connection = await asyncpg.connect(cluster.admin_dsn("postgres"))
            try:
                exists = await connection.fetchval(
                    "SELECT 1 FROM pg_database WHERE datname = $1", database
                )
                if not exists:
                    await connection.execute(f'CREATE DATABASE "{database}"')
            finally:
                await connection.close()
            report = await apply_reference_schema(
                cluster.admin_dsn(database),
                database,  # type: ignore[arg-type]
                cdc_password=self.secrets.cdc_password,
                app_password=self.secrets.app_password,
                progress=lambda line: self.progress(f"postgres: {line}"),
            )
            self.progress(
                f"postgres: {database.upper()} schema up to date "
                f"({len(report.applied)} migrations applied now, {report.already} before)"
            )
        if seed:
            summary = await seed_once(self.addresses.crm_admin_dsn, self.addresses.erp_admin_dsn)
            self.progress(
                "postgres: reference data already seeded"
                if summary is None
                else f"postgres: reference data seeded ({summary.total} rows)"
            )

    async def apply_connectors(self, *, timeout: float = 180.0) -> None:
        async with ConnectClient(self.config.connect_url) as client:
            await _wait_connect_ready(client, timeout=timeout)
            for connector in self.connectors():
                if await client.apply(connector):
                    self.progress(f"connect: applied {connector.name} ({connector.source.name})")
                    continue
                status = await client.status(connector.name)
                if status is not None and (
                    status.state == "FAILED" or any(t[1] == "FAILED" for t in status.tasks)
                ):
                    self.progress(f"connect: {connector.name} FAILED, restarting it")
                    await client.restart_failed(connector.name)
                else:
                    self.progress(f"connect: {connector.name} unchanged, left running")
            for connector in self.connectors():
                await client.wait_running(connector.name, timeout=timeout)
                self.progress(f"connect: {connector.name} RUNNING")

    async def down(self) -> list[str]:
        """Stop everything that runs; data stays in the state directory."""
        stopped = []
        from services.registry import METRICS_PORTS

        services = dict.fromkeys([*METRICS_PORTS, *recorded_ports(self.config.state_dir)])
        for name in ("workload", EXPORTER, *services):
            if await DetachedProcess(name, self.config).terminate():
                stopped.append(name)
        if self._jars is not None or (self.config.state_dir / "run").exists():
            for process in (
                DetachedProcess("connect", self.config),
                DetachedProcess("kafka", self.config),
            ):
                if await process.terminate():
                    stopped.append(process.name)
        if await stop_schema_registry(self.config):
            stopped.append("schema-registry")
        for cluster in self.postgres.values():
            if await cluster.stop():
                stopped.append(cluster.name)
        return stopped


async def _wait_connect_ready(client: ConnectClient, *, timeout: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    last_error: Exception | None = None
    while asyncio.get_running_loop().time() < deadline:
        try:
            plugins = await client.plugins()
            if any("PostgresConnector" in plugin for plugin in plugins):
                return
            last_error = StackError(f"Debezium plugin missing; Connect has {plugins}")
        except Exception as error:
            last_error = error
        await asyncio.sleep(0.5)
    raise StackError(f"Kafka Connect not ready: {last_error}")

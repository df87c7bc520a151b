"""What the local stack is doing right now: components, connectors, events per topic."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ambidex.connectors import ConnectClient, load_connectors
from ambidex.stack.local import LocalStack
from ambidex.stack.ports import recorded_ports
from ambidex.stack.processes import DetachedProcess, pid_alive, port_open
from ambidex.stack.supervisor import read_state
from ambidex.topics import load_topic_declaration
from services.registry import METRICS_PORTS as SERVICE_METRICS_PORTS
from services.shared.settings import ServiceSettings, redact_dsn

SERVICE_NAMES = tuple(SERVICE_METRICS_PORTS)


@dataclass
class ComponentStatus:
    name: str
    running: bool
    address: str
    pid: int | None = None
    detail: str = ""
    #: services: times the supervisor restarted it (None: not supervised)
    restarts: int | None = None


@dataclass
class TopicActivity:
    topic: str
    events: int
    per_second: float


@dataclass
class StackStatus:
    components: list[ComponentStatus]
    connectors: list[dict[str, Any]]
    topics: list[TopicActivity]
    addresses: dict[str, str] = field(default_factory=dict)

    @property
    def healthy(self) -> bool:
        core = [
            c
            for c in self.components
            if c.name in ("postgres-crm", "postgres-erp", "kafka", "connect")
        ]
        return (
            all(c.running for c in core)
            and bool(self.connectors)
            and all(
                connector.get("state") == "RUNNING"
                and all(task["state"] == "RUNNING" for task in connector.get("tasks", []))
                for connector in self.connectors
            )
        )

    def as_dict(self, *, show_secrets: bool = False) -> dict[str, Any]:
        """Everything as JSON-able values; DSN passwords masked unless ``show_secrets``."""
        addresses = {
            name: value if show_secrets or not name.endswith("_dsn") else redact_dsn(value)
            for name, value in self.addresses.items()
        }
        return {
            "healthy": self.healthy,
            "addresses": addresses,
            "components": [asdict(c) for c in self.components],
            "connectors": self.connectors,
            "topics": [asdict(t) for t in self.topics],
        }


async def gather_status(stack: LocalStack, *, sample_seconds: float = 1.0) -> StackStatus:
    config = stack.config
    components = [
        ComponentStatus(cluster.name, cluster.running(), f"{config.host}:{cluster.port}")
        for cluster in stack.postgres.values()
    ]
    for name, address, port in (
        ("kafka", config.kafka_bootstrap, config.kafka_port),
        ("connect", config.connect_url, config.connect_port),
    ):
        pid = DetachedProcess(name, config).pid()
        components.append(
            ComponentStatus(name, pid is not None and port_open(config.host, port), address, pid)
        )
    ports = recorded_ports(config.state_dir)
    components.append(_plain_process("workload", stack))
    for name in dict.fromkeys([*SERVICE_NAMES, *ports]):
        components.append(await _service_status(stack, name, ports.get(name)))

    addresses = {
        "kafka_bootstrap": config.kafka_bootstrap,
        "connect_url": config.connect_url,
        "crm_dsn": stack.addresses.crm_dsn,
        "erp_dsn": stack.addresses.erp_dsn,
        **{
            f"{name}_metrics_url": f"http://{config.host}:{port}/metrics"
            for name, port in ports.items()
        },
    }
    if "customer-value" in ports:  # its dashboard, on the port its settings give it
        default = ServiceSettings.model_fields["customer_value_dashboard_port"].default
        dashboard = os.environ.get("AMBIDEX_CUSTOMER_VALUE_DASHBOARD_PORT", str(default))
        addresses["customer-value_dashboard_url"] = f"http://{config.host}:{dashboard}/"

    connectors: list[dict[str, Any]] = []
    kafka_up = any(c.name == "kafka" and c.running for c in components)
    connect_up = any(c.name == "connect" and c.running for c in components)
    if connect_up:
        async with ConnectClient(config.connect_url, timeout=5) as client:
            for connector in load_connectors(stack.connector_values()):
                try:
                    status = await client.status(connector.name)
                except Exception as error:  # status view must render whatever happens
                    connectors.append(
                        {"name": connector.name, "state": f"UNKNOWN ({error})", "tasks": []}
                    )
                    continue
                connectors.append(
                    status.as_dict()
                    if status
                    else {"name": connector.name, "state": "ABSENT", "tasks": []}
                )
    topics = await topic_activity(config.kafka_bootstrap, sample_seconds) if kafka_up else []
    return StackStatus(components, connectors, topics, addresses)


def _plain_process(name: str, stack: LocalStack) -> ComponentStatus:
    pid = DetachedProcess(name, stack.config).pid()
    return ComponentStatus(name, pid is not None, "-", pid)


async def _service_status(stack: LocalStack, name: str, port: int | None) -> ComponentStatus:
    """A service as this stack recorded it: its own metrics port, its supervisor's state."""
    config = stack.config
    address = f"http://{config.host}:{port}/metrics" if port else "-"
    supervisor = DetachedProcess(name, config).pid()
    if supervisor is None:
        return ComponentStatus(name, False, address)
    state = read_state(config.state_dir, name)
    if state is None or state.get("supervisor_pid") != supervisor:
        if _is_supervisor(supervisor):
            return ComponentStatus(name, False, address, None, "supervisor starting")
        # started before services were supervised: the pid file names the service
        detail = await _readiness(f"http://{config.host}:{port}") if port else ""
        return ComponentStatus(name, True, address, supervisor, f"{detail} (unsupervised)")
    restarts = int(state.get("restarts", 0))
    last = (state.get("last_exit") or {}).get("reason")
    child = state.get("pid")
    if state.get("state") == "running" and isinstance(child, int) and pid_alive(child):
        detail = await _readiness(f"http://{config.host}:{port}") if port else ""
        if last:
            detail += f"; last restart: {last}"
        return ComponentStatus(name, True, address, child, detail, restarts)
    if state.get("state") == "backoff":
        wait = max(0.0, float(state.get("restart_at", 0)) - time.time())
        detail = f"CrashLoopBackOff: {last}, restart in {wait:.0f}s"
    else:
        detail = f"supervisor {state.get('state')}"
    return ComponentStatus(name, False, address, None, detail, restarts)


def _is_supervisor(pid: int) -> bool:
    try:
        return b"supervise" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


async def _readiness(base_url: str) -> str:
    """``ready`` or why not, from the service's own /readyz."""
    import httpx

    try:
        async with httpx.AsyncClient(timeout=2) as client:
            response = await client.get(f"{base_url}/readyz")
    except httpx.HTTPError as error:
        return f"not answering ({type(error).__name__})"
    if response.status_code == 200:
        return "ready"
    failing = [
        name for name, check in response.json().get("checks", {}).items() if not check.get("ok")
    ]
    return "not ready: " + ", ".join(failing)


async def topic_activity(bootstrap: str, sample_seconds: float) -> list[TopicActivity]:
    """Messages per CDC topic and the arrival rate over a short sample."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    names = [spec.name for spec in load_topic_declaration() if spec.group in ("cdc", "cdc_meta")]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [
            TopicPartition(topic, p)
            for topic in names
            for p in (consumer.partitions_for_topic(topic) or await _partitions(consumer, topic))
        ]
        if not partitions:
            return []
        first = await consumer.end_offsets(partitions)
        started = time.monotonic()
        await asyncio.sleep(sample_seconds)
        second = await consumer.end_offsets(partitions)
        beginnings = await consumer.beginning_offsets(partitions)
        elapsed = time.monotonic() - started
    finally:
        await consumer.stop()
    activity = []
    for topic in names:
        tps = [tp for tp in partitions if tp.topic == topic]
        events = sum(second[tp] - beginnings[tp] for tp in tps)
        arrived = sum(second[tp] - first[tp] for tp in tps)
        activity.append(TopicActivity(topic, events, round(arrived / elapsed, 1)))
    return activity


async def _partitions(consumer: Any, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()  # metadata of topics not yet subscribed
    return set(consumer.partitions_for_topic(topic) or ())

"""Debezium connector configurations (`deploy/connectors/*.json`) and the Connect REST API.

Connector files are versioned JSON. ``{{name}}`` placeholders are filled from the
deployment's values when applied; ``${env:...}`` references are left for the Connect
worker's config provider, so secrets never pass through this tool or the REST API.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

DEFAULT_CONNECTOR_DIR = Path(__file__).resolve().parent.parent / "deploy" / "connectors"
_PLACEHOLDER = re.compile(r"\{\{\s*([a-z0-9_]+)\s*\}\}")


_ENV_CONFIG_PROVIDER = "org.apache.kafka.common.config.provider.EnvVarConfigProvider"


def connect_worker_config(*, replication: int) -> dict[str, str]:
    """Worker settings every deployment shares (local stack and Strimzi alike)."""
    factor = str(replication)
    return {
        "group.id": "ambidex-connect",
        "config.storage.topic": "_ambidex-connect-configs",
        "offset.storage.topic": "_ambidex-connect-offsets",
        "status.storage.topic": "_ambidex-connect-status",
        "config.storage.replication.factor": factor,
        "offset.storage.replication.factor": factor,
        "status.storage.replication.factor": factor,
        "offset.flush.interval.ms": "1000",
        "key.converter": "org.apache.kafka.connect.json.JsonConverter",
        "value.converter": "org.apache.kafka.connect.json.JsonConverter",
        "key.converter.schemas.enable": "false",
        "value.converter.schemas.enable": "false",
        # secrets come from the worker's environment, never through the REST API
        "config.providers": "env",
        "config.providers.env.class": _ENV_CONFIG_PROVIDER,
        # commit->Kafka latency: send small batches quickly, compress them cheaply
        "producer.linger.ms": "5",
        "producer.batch.size": "262144",
        "producer.compression.type": "lz4",
        "producer.acks": "all",
        "producer.enable.idempotence": "true",
        "topic.creation.enable": "false",
    }


class ConnectorError(RuntimeError):
    """A connector could not be applied, or did not reach RUNNING."""


@dataclass(frozen=True)
class ConnectorDefinition:
    name: str
    version: int
    config: Mapping[str, str]
    source: Path


@dataclass(frozen=True)
class ConnectorStatus:
    name: str
    state: str
    tasks: tuple[tuple[int, str, str | None], ...]  # (task id, state, trace)

    @property
    def running(self) -> bool:
        return (
            self.state == "RUNNING"
            and bool(self.tasks)
            and all(state == "RUNNING" for _, state, _ in self.tasks)
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "tasks": [
                {"id": task_id, "state": state, "trace": trace}
                for task_id, state, trace in self.tasks
            ],
        }


def load_connectors(
    values: Mapping[str, str], directory: Path = DEFAULT_CONNECTOR_DIR
) -> list[ConnectorDefinition]:
    """Read every connector file and fill its ``{{placeholders}}`` from ``values``."""
    definitions = []
    for path in sorted(directory.glob("*.json")):
        document = json.loads(path.read_text())
        config = {
            key: _fill(path, key, str(value), values) for key, value in document["config"].items()
        }
        definitions.append(
            ConnectorDefinition(document["name"], int(document.get("version", 1)), config, path)
        )
    return definitions


def _fill(path: Path, key: str, text: str, values: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise ConnectorError(f"{path.name}: {key} needs a value for {{{{{name}}}}}")
        return str(values[name])

    return _PLACEHOLDER.sub(replace, text)


class ConnectClient:
    """The few Kafka Connect REST calls Ambidex needs."""

    def __init__(self, base_url: str, *, timeout: float = 30.0) -> None:
        self._http = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout)

    async def __aenter__(self) -> ConnectClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._http.aclose()

    async def worker_info(self) -> dict[str, Any]:
        response = await self._http.get("/")
        response.raise_for_status()
        info: dict[str, Any] = response.json()
        return info

    async def plugins(self) -> list[str]:
        response = await self._http.get("/connector-plugins")
        response.raise_for_status()
        return [plugin["class"] for plugin in response.json()]

    async def config(self, name: str) -> dict[str, str] | None:
        """The connector's current configuration, or None when there is no such connector."""
        response = await self._http.get(f"/connectors/{name}/config")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        config: dict[str, str] = response.json()
        return config

    async def apply(self, connector: ConnectorDefinition) -> bool:
        """Create or update the connector; False (and nothing sent) when it is unchanged.

        A PUT of the same configuration still makes Connect restart the connector and
        its tasks, so a running connector is left alone unless its definition changed.
        """
        current = await self.config(connector.name)
        if current is not None and _same_config(current, connector):
            return False
        response = await self._http.put(
            f"/connectors/{connector.name}/config", json=dict(connector.config)
        )
        if response.status_code >= 400:
            raise ConnectorError(
                f"Connect refused {connector.name} ({connector.source.name}): "
                f"{response.status_code} {response.text}"
            )
        return True

    async def status(self, name: str) -> ConnectorStatus | None:
        response = await self._http.get(f"/connectors/{name}/status")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        body = response.json()
        return ConnectorStatus(
            name=name,
            state=body["connector"]["state"],
            tasks=tuple(
                (int(task["id"]), str(task["state"]), task.get("trace"))
                for task in body.get("tasks", [])
            ),
        )

    async def delete(self, name: str) -> None:
        response = await self._http.delete(f"/connectors/{name}")
        if response.status_code not in (204, 404):
            response.raise_for_status()

    async def restart_failed(self, name: str) -> None:
        await self._http.post(
            f"/connectors/{name}/restart", params={"includeTasks": "true", "onlyFailed": "true"}
        )

    async def wait_running(self, name: str, *, timeout: float = 120.0) -> ConnectorStatus:
        """Wait until the connector and all its tasks run; fail fast on FAILED."""
        deadline = asyncio.get_running_loop().time() + timeout
        last: ConnectorStatus | None = None
        while asyncio.get_running_loop().time() < deadline:
            last = await self.status(name)
            if last is not None:
                if last.running:
                    return last
                failed = [trace for _, state, trace in last.tasks if state == "FAILED"]
                if last.state == "FAILED" or failed:
                    first_trace = (failed[0] or "").splitlines()[:3] if failed else []
                    raise ConnectorError(f"{name} FAILED: {' '.join(first_trace)}")
            await asyncio.sleep(0.5)
        raise ConnectorError(f"{name} not RUNNING after {timeout:.0f}s (last: {last})")


def _same_config(current: Mapping[str, str], connector: ConnectorDefinition) -> bool:
    wanted = {"name": connector.name, **connector.config}
    return {k: str(v) for k, v in current.items()} == {k: str(v) for k, v in wanted.items()}

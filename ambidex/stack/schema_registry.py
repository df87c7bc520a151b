"""The local stack's schema registry process (``ambidex.schema_registry_server``).

Its port: ``AMBIDEX_STACK_SCHEMA_REGISTRY_PORT``, else the one this state directory
recorded, else 8081 (Confluent's usual port) on the default stack and any free port on
a test's stack (metrics ports on 0); recorded in ``run/schema-registry.port``. Its data
is ``schema-registry/registry.json`` in the state directory.
"""

from __future__ import annotations

import os
import sys

from ambidex.stack.config import StackConfig, _free_ports
from ambidex.stack.processes import DetachedProcess, port_free, port_open, wait_for

NAME = "schema-registry"
DEFAULT_PORT = 8081


def registry_port(config: StackConfig) -> int:
    """This stack's registry port (chosen once, then recorded)."""
    configured = os.environ.get("AMBIDEX_STACK_SCHEMA_REGISTRY_PORT")
    if configured:
        return int(configured)
    recorded = config.state_dir / "run" / f"{NAME}.port"
    try:
        return int(recorded.read_text().strip())
    except (OSError, ValueError):
        pass
    port = DEFAULT_PORT
    if config.metrics_port is not None or not port_free(config.host, port):
        port = _free_ports(1)[0]
    recorded.parent.mkdir(parents=True, exist_ok=True)
    recorded.write_text(f"{port}\n")
    return port


def registry_url(config: StackConfig) -> str:
    return f"http://{config.host}:{registry_port(config)}"


def registry_environment(config: StackConfig) -> dict[str, str]:
    """What a service gets to publish in the registry format on this stack."""
    return {"AMBIDEX_SCHEMA_REGISTRY_URL": registry_url(config)}


async def start_schema_registry(config: StackConfig) -> str:
    """Start the registry unless it runs; returns its URL once it answers."""
    process = DetachedProcess(NAME, config)
    port = registry_port(config)
    if process.pid() is None:
        process.spawn([
            sys.executable, "-m", "ambidex.schema_registry_server",
            "--host", config.host, "--port", str(port),
            "--data", str(config.state_dir / NAME / "registry.json"),
        ])
    await wait_for(
        f"schema registry on port {port}", lambda: port_open(config.host, port),
        timeout=30, log=process.log_file,
    )
    return registry_url(config)


async def stop_schema_registry(config: StackConfig) -> bool:
    return await DetachedProcess(NAME, config).terminate()

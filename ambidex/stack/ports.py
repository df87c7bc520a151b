"""Which metrics port each service of one local stack listens on, kept in its state.

Ports are chosen when a service is started and recorded in ``<state dir>/services.json``,
which ``stack status`` reads, so two stacks on one machine never report each other's
services. :func:`choose_service_ports` is the pure rule:

1. a service that is running keeps the port it was started with (left alone);
2. ``AMBIDEX_METRICS_PORT=N`` (N > 0) puts the services on N, N+1, ... in registry order;
   such a port in use by something else stops the start with a message;
3. otherwise a service keeps its recorded port while that port is free,
4. else gets its registry default (9401, ...) when free and no port was asked for,
5. else any free port (``AMBIDEX_METRICS_PORT=0`` asks for this directly).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


class PortInUse(RuntimeError):
    """A port the operator asked for is taken by another process."""


def choose_service_ports(
    names: Sequence[str],
    *,
    order: Sequence[str],
    requested: int | None,
    recorded: Mapping[str, int],
    running: frozenset[str],
    defaults: Mapping[str, int],
    port_free: Callable[[int], bool],
    any_free_port: Callable[[], int],
) -> dict[str, int]:
    """The metrics port of each of ``names`` (see the module docstring for the rule)."""
    # a running service started before ports were recorded listens on its default
    chosen: dict[str, int] = {
        name: recorded.get(name, defaults[name])
        for name in names
        if name in running and (name in recorded or name in defaults)
    }

    def available(port: int) -> bool:
        return port not in chosen.values() and port_free(port)

    for name in names:
        if name in chosen:
            continue
        if requested:
            port = requested + order.index(name)
            if not available(port):
                raise PortInUse(
                    f"AMBIDEX_METRICS_PORT={requested}: port {port} for {name} is in use; "
                    "free it, choose another base port, or set AMBIDEX_METRICS_PORT=0 "
                    "for any free ports"
                )
        elif name in recorded and available(recorded[name]):
            port = recorded[name]
        elif requested is None and name in defaults and available(defaults[name]):
            port = defaults[name]
        else:
            port = any_free_port()
            while not available(port):
                port = any_free_port()
        chosen[name] = port
    return chosen


def services_file(state_dir: Path) -> Path:
    return state_dir / "services.json"


def recorded_ports(state_dir: Path) -> dict[str, int]:
    """``{service: metrics port}`` as recorded by the last start of each service."""
    try:
        document = json.loads(services_file(state_dir).read_text())
    except (OSError, ValueError):
        return {}
    return {
        name: int(entry["metrics_port"])
        for name, entry in document.items()
        if isinstance(entry, dict) and "metrics_port" in entry
    }


def record_ports(state_dir: Path, ports: Mapping[str, int]) -> None:
    path = services_file(state_dir)
    document = {name: {"metrics_port": port} for name, port in sorted(ports.items())}
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(document, indent=2) + "\n")
    temporary.replace(path)

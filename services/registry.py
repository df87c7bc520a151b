"""The services this distribution can run, by name; each module offers ``build_service``.

The one place a service's name is written down: the local stack, the status view, the
Kubernetes manifests and alerts, the benchmarks and the tests derive theirs from here
(topic names in ``deploy/topics.yaml`` aside).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.shared.runtime import Service
    from services.shared.settings import ServiceSettings

#: the services of this build, by name -> module with ``build_service``
SERVICE_MODULES = {
    "order-sync": "services.order_sync.app",
    "inventory-projection": "services.inventory_projection.app",
    "receivables": "services.receivables.app",
    "production-status": "services.production_status.app",
    "customer-value": "services.customer_value.app",
}
#: default metrics port of every service, planned ones included (ports stay stable)
METRICS_PORTS = {
    "order-sync": 9401,
    "inventory-projection": 9402,
    "receivables": 9403,
    "production-status": 9404,
    "customer-value": 9405,
}


def available_services() -> list[str]:
    """Services whose module is present in this build.

    Only a service whose own package is missing is left out: one whose dependency is
    missing (e.g. ``rocksdict`` without the ``rocksdb`` extra) raises, instead of
    silently not being started.
    """
    found = []
    for name, module in SERVICE_MODULES.items():
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            missing = error.name or ""
            if missing and (module == missing or module.startswith(f"{missing}.")):
                continue
            raise
        found.append(name)
    return found


def service_builder(name: str) -> Callable[[ServiceSettings], Service]:
    if name not in SERVICE_MODULES:
        raise KeyError(f"unknown service {name!r}; known: {', '.join(SERVICE_MODULES)}")
    module = importlib.import_module(SERVICE_MODULES[name])
    builder: Callable[[ServiceSettings], Service] = module.build_service
    return builder

"""The dashboard in customer-value's process: its view follows the service (as its
observer) and its server runs beside the observability one, on
``AMBIDEX_CUSTOMER_VALUE_DASHBOARD_PORT``.

A port that cannot be bound (taken by another process) costs the dashboard, not the
figures: it is logged and tried again, the service carries on.
"""

from __future__ import annotations

import asyncio
import logging

from services.customer_value.dashboard.accounts import PostgresNames
from services.customer_value.dashboard.feed import DashboardObserver
from services.customer_value.dashboard.server import start_dashboard
from services.customer_value.dashboard.view import DashboardView
from services.shared.health import ObservabilityServer
from services.shared.runtime import Service
from services.shared.tasks import cancel_and_wait

log = logging.getLogger(__name__)


class AttachedDashboard:
    def __init__(self, service: Service) -> None:
        settings = service.settings
        self.host = settings.metrics_host
        self.port = settings.customer_value_dashboard_port
        self.retry_delay = settings.retry_max_delay_seconds
        self.view = DashboardView()
        self.observer = DashboardObserver(self.view)
        self.names = PostgresNames(settings.crm_dsn)
        self.server: ObservabilityServer | None = None
        self._serving: asyncio.Task[None] | None = None

    async def start(self, _: Service) -> None:
        self._serving = asyncio.get_running_loop().create_task(
            self._serve(), name="customer-value-dashboard")

    async def _serve(self) -> None:
        while self.server is None:
            try:
                self.server = await start_dashboard(self.view, self.names, self.host,
                                                    self.port)
            except OSError as error:
                log.error("customer-value dashboard cannot listen, trying again", extra={
                    "host": self.host, "port": self.port, "error": str(error)})
                await asyncio.sleep(self.retry_delay)

    async def stop(self, _: Service) -> None:
        for task in (self._serving, self.observer.task):
            if task is not None and not task.done():
                await cancel_and_wait(task)
        if self.server is not None:
            await self.server.close()
        await self.names.close()


def attach_dashboard(service: Service) -> DashboardObserver:
    """Serve the dashboard while ``service`` runs; returns the observer to hand the
    service's shell."""
    dashboard = AttachedDashboard(service)
    service.on_start.append(dashboard.start)
    service.on_stop.append(dashboard.stop)
    return dashboard.observer

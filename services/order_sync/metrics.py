"""order-sync's own metrics (beside the shared ones every service has).

Decisions by outcome, echoes recognised, customers written, status rows changed per
side, retries by cause, orphaned and rejected source transactions, and how many CRM
transactions wait for the rest of their events. Created once per process on the
service's registry.
"""

from __future__ import annotations

from prometheus_client import Counter as MetricCounter

from services.shared.runtime import Service


class OrderSyncMetrics:
    def __init__(self, service: Service) -> None:
        registry = service.registry
        self.orders = MetricCounter(
            "ambidex_order_sync_orders_total",
            "CRM order decisions applied, by outcome (create, amend, cancel, reject, "
            "conflict, nothing).",
            ("outcome",),
            registry=registry,
        )
        self.echoes = MetricCounter(
            "ambidex_order_sync_echoes_total",
            "ERP changes recognised as order-sync's own writes (not synced back).",
            registry=registry,
        )
        self.customers = MetricCounter(
            "ambidex_order_sync_customers_written_total",
            "ERP customers created or updated from CRM accounts.",
            registry=registry,
        )
        self.status_changes = MetricCounter(
            "ambidex_order_sync_status_changes_total",
            "CRM status rows changed (and published), by side (crm, erp).",
            ("side",),
            registry=registry,
        )
        self.retries = MetricCounter(
            "ambidex_order_sync_retries_total",
            "Batches retried, by cause (conflict, unavailable, split).",
            ("cause",),
            registry=registry,
        )

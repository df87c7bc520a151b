"""inventory-projection's business metrics (beside the platform ones)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from services.shared.runtime import Service


class ProjectionMetrics:
    """Business metrics beside the platform ones (same registry, ``service`` label)."""

    def __init__(self, service: Service) -> None:
        registry, name = service.registry, service.name
        self.service = name
        self.changes_applied = Counter(
            "ambidex_inventory_changes_applied_total",
            "Source row changes folded into the projection (stale/redelivered excluded).",
            ("service",),
            registry=registry,
        ).labels(name)
        self.shortages = Counter(
            "ambidex_inventory_shortages_total",
            "Shortage events raised (once per CRM order version and item/warehouse).",
            ("service",),
            registry=registry,
        ).labels(name)
        self.awaiting_verdicts = Gauge(
            "ambidex_inventory_awaiting_verdicts",
            "Changes held for an unknown reference, waiting for their grace to pass.",
            ("service",),
            registry=registry,
        ).labels(name)
        self.unjudged_references = Gauge(
            "ambidex_inventory_unjudged_references",
            "Held changes released without a verdict since start (too many waiting).",
            ("service",),
            registry=registry,
        ).labels(name)
        self.as_of = Gauge(
            "ambidex_inventory_as_of_timestamp_seconds",
            "The projection's as-of time (Unix seconds).",
            ("service",),
            registry=registry,
        ).labels(name)
        self.held_requests = Gauge(
            "ambidex_demand_held_requests",
            "Feasibility requests whose order or product is not seen yet, held until the "
            "CRM topics are read to their position (then answered).",
            ("service",),
            registry=registry,
        ).labels(name)


__all__ = ["ProjectionMetrics"]

"""The vocabulary of the Grafana dashboards (:mod:`ambidex.dashboards`): a panel, a row,
and the panels that belong to one service (its own metrics, where its memory is)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

RATE = "[5m]"
#: services keeping local state (RocksDB): the others have no state store memory
WITHOUT_STATE = ("order-sync",)


@dataclass(frozen=True)
class Panel:
    title: str
    targets: tuple[tuple[str, str], ...]  # (expr, legend)
    unit: str = "short"
    kind: str = "timeseries"
    width: int = 12
    description: str = ""


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


def panel_of(title: str, expr: str, legend: str, unit: str = "short", **kw: Any) -> Panel:
    return Panel(title, ((expr, legend),), unit, **kw)


def quantile(q: float, metric: str, by: str, where: str = "") -> str:
    return f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket{where}{RATE})))"


def service_panels(service: str) -> tuple[Panel, ...]:
    """Each service's own metrics, beside the platform ones every service has."""
    S = f'service="{service}"'
    return {
        "order-sync": (
            panel_of(
                "Order decisions / s",
                f"sum by (outcome) (rate(ambidex_order_sync_orders_total{{{S}}}{RATE}))",
                "{{outcome}}",
                "ops",
            ),
            panel_of(
                "Status changes / s",
                f"sum by (side) (rate(ambidex_order_sync_status_changes_total{{{S}}}{RATE}))",
                "{{side}}",
                "ops",
            ),
            panel_of(
                "Own writes recognised / s",
                f"rate(ambidex_order_sync_echoes_total{{{S}}}{RATE})",
                "echoes",
                "ops",
            ),
            panel_of(
                "Customers written / s",
                f"rate(ambidex_order_sync_customers_written_total{{{S}}}{RATE})",
                "customers",
                "ops",
            ),
        ),
        "inventory-projection": (
            panel_of(
                "Changes applied / s",
                f"rate(ambidex_inventory_changes_applied_total{{{S}}}{RATE})",
                "applied",
                "ops",
            ),
            panel_of(
                "Shortages raised / s",
                f"rate(ambidex_inventory_shortages_total{{{S}}}{RATE})",
                "shortages",
                "ops",
            ),
            panel_of(
                "Projection age",
                f"time() - ambidex_inventory_as_of_timestamp_seconds{{{S}}}",
                "as of",
                "s",
            ),
            panel_of("Demand requests held", f"ambidex_demand_held_requests{{{S}}}", "held"),
        ),
        "receivables": (
            panel_of(
                "Changes applied / s",
                f"rate(ambidex_receivables_changes_applied_total{{{S}}}{RATE})",
                "applied",
                "ops",
            ),
            panel_of(
                "Discrepancies / s",
                "sum by (kind, event) "
                f"(rate(ambidex_receivables_discrepancies_total{{{S}}}{RATE}))",
                "{{kind}} {{event}}",
                "ops",
            ),
            panel_of(
                "Positions written / s",
                f"rate(ambidex_receivables_positions_written_total{{{S}}}{RATE})",
                "positions",
                "ops",
            ),
        ),
        "production-status": (
            panel_of(
                "Orders by stage", f"sum by (stage) (ambidex_fulfilment_orders{{{S}}})", "{{stage}}"
            ),
            panel_of(
                "Orders by delay risk",
                f"sum by (level) (ambidex_fulfilment_risk_orders{{{S}}})",
                "{{level}}",
            ),
            panel_of(
                "Delay risks / s",
                f"sum by (event, reason) (rate(ambidex_delay_risks_total{{{S}}}{RATE}))",
                "{{event}} {{reason}}",
                "ops",
            ),
            panel_of(
                "Cases triaged / s",
                f"sum by (culprit) (rate(ambidex_cases_triaged_total{{{S}}}{RATE}))",
                "{{culprit}}",
                "ops",
            ),
        ),
        "customer-value": (
            panel_of(
                "Figures published / s",
                f"rate(ambidex_customer_values_published_total{{{S}}}{RATE})",
                "published",
                "ops",
            ),
            panel_of(
                "Positions folded / s",
                f"rate(ambidex_customer_value_positions_folded_total{{{S}}}{RATE})",
                "positions",
                "ops",
            ),
            panel_of(
                "Statuses folded / s",
                f"rate(ambidex_customer_value_statuses_folded_total{{{S}}}{RATE})",
                "statuses",
                "ops",
            ),
            panel_of(
                "Figures age",
                f"time() - ambidex_customer_value_as_of_timestamp_seconds{{{S}}}",
                "as of",
                "s",
            ),
        ),
    }[service]


def memory_panels(service: str) -> tuple[Panel, ...]:
    """Where the worker's memory is (services/shared/memory_metrics.py): a leak grows
    the heap in use beyond the state store; caches stop at their caps."""
    s = f'service="{service}"'
    return (
        panel_of(
            "Resident memory",
            f'process_resident_memory_bytes{{job="{service}"}}',
            "{{instance}}",
            "bytes",
        ),
        panel_of("C heap", f"sum by (state) (ambidex_c_heap_bytes{{{s}}})", "{{state}}", "bytes"),
        *(
            []
            if service in WITHOUT_STATE
            else [
                panel_of(
                    "State store memory",
                    f"sum by (part) (ambidex_state_store_memory_bytes{{{s}}})",
                    "{{part}}",
                    "bytes",
                )
            ]
        ),
        panel_of("Python allocated blocks", f"ambidex_python_allocated_blocks{{{s}}}", "blocks"),
    )

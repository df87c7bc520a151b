"""Invariant: each local stack's services get metrics ports of their own — a running
service keeps its port, AMBIDEX_METRICS_PORT is honoured (a taken port refused up front,
not a service exiting at start), a taken recorded or default port is never handed out,
two services never share one — and the choice is recorded for `stack status`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ambidex.stack.ports import PortInUse, choose_service_ports, record_ports, recorded_ports

ORDER = ["order-sync", "inventory-projection", "receivables", "production-status"]
DEFAULTS = {"order-sync": 9401, "inventory-projection": 9402}
NAMES = ["order-sync", "inventory-projection"]


def _choose(
    *,
    requested: int | None = None,
    recorded: dict[str, int] | None = None,
    running: frozenset[str] = frozenset(),
    taken: frozenset[int] = frozenset(),
    free: Iterator[int] | None = None,
) -> dict[str, int]:
    spare = free or iter(range(40000, 40100))
    return choose_service_ports(
        NAMES,
        order=ORDER,
        requested=requested,
        recorded=recorded or {},
        running=running,
        defaults=DEFAULTS,
        port_free=lambda port: port not in taken,
        any_free_port=lambda: next(spare),
    )


def test_defaults_when_free_and_nothing_asked() -> None:
    assert _choose() == {"order-sync": 9401, "inventory-projection": 9402}


def test_a_second_stack_gets_other_ports_when_the_defaults_are_taken() -> None:
    assert _choose(taken=frozenset({9401, 9402})) == {
        "order-sync": 40000,
        "inventory-projection": 40001,
    }


def test_metrics_port_zero_means_any_free_port() -> None:
    assert _choose(requested=0) == {"order-sync": 40000, "inventory-projection": 40001}


def test_metrics_port_is_the_base_in_registry_order() -> None:
    assert _choose(requested=9500) == {"order-sync": 9500, "inventory-projection": 9501}


def test_an_asked_for_port_that_is_taken_is_refused_before_anything_starts() -> None:
    with pytest.raises(PortInUse, match="port 9501 for inventory-projection"):
        _choose(requested=9500, taken=frozenset({9501}))


def test_a_running_service_keeps_its_port_even_over_the_asked_base() -> None:
    chosen = _choose(
        requested=9500, recorded={"order-sync": 40123}, running=frozenset({"order-sync"}),
        taken=frozenset({40123}),
    )
    assert chosen == {"order-sync": 40123, "inventory-projection": 9501}


def test_a_recorded_port_is_kept_while_free_and_replaced_when_taken() -> None:
    recorded = {"order-sync": 41000, "inventory-projection": 41001}
    assert _choose(recorded=recorded) == recorded
    assert _choose(recorded=recorded, taken=frozenset({41001})) == {
        "order-sync": 41000,
        "inventory-projection": 9402,
    }


def test_two_services_never_share_a_port() -> None:
    chosen = _choose(requested=0, free=iter([40000, 40000, 40000, 40001]))
    assert chosen == {"order-sync": 40000, "inventory-projection": 40001}


def test_ports_round_trip_through_the_state_directory(tmp_path: Path) -> None:
    assert recorded_ports(tmp_path) == {}
    record_ports(tmp_path, {"order-sync": 40000})
    assert recorded_ports(tmp_path) == {"order-sync": 40000}

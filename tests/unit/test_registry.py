"""Service names live only in services/registry.py: the alerts cover every service of
the build (and no planned one), and a service whose dependency is missing is an error, not a
service silently left out of `ambidex up`."""

from __future__ import annotations

import types

import pytest

from ambidex.monitoring import alert_rules
from services import registry


def test_service_down_alert_names_every_service_of_the_build_and_no_planned_one() -> None:
    rule = next(r for r in alert_rules()["groups"][0]["rules"]
                if r["alert"] == "AmbidexServiceDown")
    for name in registry.METRICS_PORTS:
        assert (name in rule["expr"]) == (name in registry.SERVICE_MODULES)


def test_every_service_of_the_build_has_a_metrics_port() -> None:
    assert set(registry.SERVICE_MODULES) <= set(registry.METRICS_PORTS)


def test_a_service_not_in_this_build_is_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "SERVICE_MODULES", {
        **registry.SERVICE_MODULES, "planned": "services.planned_service_absent.app"})
    assert "planned" not in registry.available_services()
    assert set(registry.available_services()) == set(registry.SERVICE_MODULES) - {"planned"}


def test_a_service_whose_dependency_is_missing_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def fail(name: str) -> types.ModuleType:
        if name == "services.broken_for_test.app":
            raise ModuleNotFoundError("No module named 'rocksdict'", name="rocksdict")
        return types.ModuleType(name)

    monkeypatch.setattr(registry.importlib, "import_module", fail)
    monkeypatch.setattr(registry, "SERVICE_MODULES", {"broken": "services.broken_for_test.app"})
    with pytest.raises(ModuleNotFoundError, match="rocksdict"):
        registry.available_services()

"""Faust is the worker shell only (docs/adr/0001-faust-as-worker-shell.md): the worker
a service runs starts no Kafka client of Faust's (no consumer group, no producer, no
leader-assignor topic outside deploy/topics.yaml), no web server and no tables."""

from __future__ import annotations

from services.registry import SERVICE_MODULES, service_builder
from services.shared.settings import load_settings


def test_every_service_worker_starts_nothing_that_talks_to_kafka() -> None:
    for name in SERVICE_MODULES:
        service = service_builder(name)(load_settings(name, {}))
        started = [type(part).__name__ for part in service.app.boot_strategy.server()]
        assert started == ["AgentManager"], (name, started)
        assert not service.app.agents, name
        assert not service.app.tables, name

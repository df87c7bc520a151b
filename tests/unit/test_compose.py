"""deploy/compose/compose.yaml, checked without Docker (ambidex/compose.py, in lint).

Invariants: the shipped file is valid Compose (the specification's JSON schema), follows
the policy (a healthcheck on every long-running service, images pinned, no secret
inline) and has the local stack's broker, Connect and service settings; and each check
fails when the file breaks it (a validator that cannot fail protects nothing).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from ambidex.compose import (
    consistency_problems,
    load_compose,
    policy_problems,
    schema_problems,
    validate,
)

Doc = dict[str, Any]


def test_the_shipped_compose_file_passes_every_check() -> None:
    assert validate() == []


def test_it_runs_the_whole_pipeline_with_debezium_of_the_local_stack() -> None:
    services = load_compose()["services"]
    assert {
        "crm-db",
        "erp-db",
        "kafka",
        "connect",
        "setup",
        "order-sync",
        "inventory-projection",
        "workload",
    } <= set(services)
    assert services["connect"]["image"] == "quay.io/debezium/connect:3.6.1.Final"
    for database in ("crm-db", "erp-db"):
        assert "wal_level=logical" in services[database]["command"]


def _broken(change: Callable[[Doc], None]) -> Doc:
    document = copy.deepcopy(load_compose())
    change(document)
    return document


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d["services"]["kafka"]["healthcheck"].update(interval=["10s"]),
        lambda d: d["services"]["crm-db"].update(port=["5433:5432"]),
        lambda d: d.update(service={}),
        lambda d: d["services"]["connect"].update(depends_on={"kafka": {"condition": "up"}}),
    ],
    ids=["wrong type", "unknown service field", "unknown top-level field", "bad condition"],
)
def test_a_file_that_breaks_the_compose_schema_fails(change: Callable[[Doc], None]) -> None:
    assert schema_problems(_broken(change))


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d["services"]["kafka"].pop("healthcheck"), "kafka: no healthcheck"),
        (lambda d: d["services"]["setup"].update(restart="always"), "setup: no healthcheck"),
        (
            lambda d: d["services"]["order-sync"]["depends_on"]["setup"].update(
                condition="service_started"
            ),
            "setup: no healthcheck",
        ),
        (lambda d: d["services"]["kafka"].update(image="apache/kafka:latest"), "not pinned"),
        (lambda d: d["services"]["kafka"].update(image="apache/kafka"), "not pinned"),
        (lambda d: d["services"]["crm-db"].update(image="postgres:17"), "not pinned"),
        (
            lambda d: d["services"]["crm-db"]["environment"].update(POSTGRES_PASSWORD="hunter2"),
            "POSTGRES_PASSWORD is inline",
        ),
        (
            lambda d: d["services"]["order-sync"].update(
                environment={
                    **d["services"]["order-sync"]["environment"],
                    "AMBIDEX_CRM_DSN": "postgresql://ambidex_app:hunter2@crm-db:5432/crm",
                }
            ),
            "AMBIDEX_CRM_DSN holds an inline password",
        ),
    ],
)
def test_a_file_that_breaks_the_policy_fails(change: Callable[[Doc], None], expected: str) -> None:
    problems = policy_problems(_broken(change))
    assert any(expected in problem for problem in problems), problems


def test_a_pinned_digest_passes_the_policy() -> None:
    digest = "apache/kafka@sha256:" + "0" * 64
    assert policy_problems(_broken(lambda d: d["services"]["kafka"].update(image=digest))) == []


def _without(service: str, variable: str) -> Callable[[Doc], None]:
    def change(document: Doc) -> None:
        environment = dict(document["services"][service]["environment"])
        environment.pop(variable)
        document["services"][service]["environment"] = environment

    return change


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda d: d["services"]["kafka"]["environment"].update(KAFKA_NUM_PARTITIONS="3"),
            "KAFKA_NUM_PARTITIONS",
        ),
        (_without("kafka", "KAFKA_AUTO_CREATE_TOPICS_ENABLE"), "KAFKA_AUTO_CREATE_TOPICS_ENABLE"),
        (
            lambda d: d["services"]["connect"]["environment"].update(CONNECT_PRODUCER_ACKS="1"),
            "CONNECT_PRODUCER_ACKS",
        ),
        (_without("connect", "GROUP_ID"), "GROUP_ID"),
        (_without("order-sync", "AMBIDEX_CRM_DSN"), "AMBIDEX_CRM_DSN"),
        (lambda d: d["services"].pop("inventory-projection"), "inventory-projection: a service"),
    ],
)
def test_settings_that_differ_from_the_local_stack_fail(
    change: Callable[[Doc], None], expected: str
) -> None:
    problems = consistency_problems(_broken(change))
    assert any(expected in problem for problem in problems), problems

"""deploy/compose/compose.yaml, checked without Docker (ambidex/compose.py, in lint).

Invariants: the shipped file is valid Compose (the specification's JSON schema), follows
the policy (a healthcheck on every long-running service, images pinned, no secret
inline), has the local stack's broker, Connect and service settings, and Kafka takes no
client without a login (no plaintext listener other containers reach; every service, the
setup job and the Connect worker log in as their own user with the password the broker
checks), and its Prometheus loads the pipeline alerts and scrapes Kafka's and Connect's
JMX exporter agent (the jar the jmx-agent job fetches, the rule files of
deploy/monitoring/jmx) and the pipeline exporter; and each check fails when the file
breaks it (a validator that cannot fail protects nothing).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ambidex.compose import (
    COMPOSE_FILE,
    consistency_problems,
    env_example_problems,
    load_compose,
    monitoring_problems,
    policy_problems,
    schema_problems,
    security_problems,
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


def _env(document: Doc, service: str) -> dict[str, Any]:
    """The service's environment as its own mapping (anchors are shared after loading)."""
    environment = dict(document["services"][service]["environment"])
    document["services"][service]["environment"] = environment
    return environment


def _set(service: str, **values: str) -> Callable[[Doc], None]:
    return lambda d: _env(d, service).update(values)


def _drop(service: str, *variables: str) -> Callable[[Doc], None]:
    def change(document: Doc) -> None:
        environment = _env(document, service)
        for variable in variables:
            environment.pop(variable)

    return change


def _drop_setup_flag(document: Doc) -> None:
    document["services"]["setup"]["command"].remove("--connector-principals")


def test_the_shipped_file_requires_a_kafka_login_everywhere() -> None:
    assert security_problems(load_compose()) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            _drop("receivables", "AMBIDEX_KAFKA_SASL_USERNAME", "AMBIDEX_KAFKA_SASL_PASSWORD"),
            "receivables: no Kafka user name",
        ),
        (
            _drop("receivables", "AMBIDEX_KAFKA_SASL_PASSWORD"),
            "receivables: the Kafka password is not a ${VARIABLE} reference",
        ),
        (
            _set("order-sync", AMBIDEX_KAFKA_SECURITY_PROTOCOL="PLAINTEXT"),
            "order-sync: Kafka security protocol PLAINTEXT",
        ),
        (
            _set("order-sync", AMBIDEX_KAFKA_SASL_MECHANISM="SCRAM-SHA-512"),
            "order-sync: SASL mechanism SCRAM-SHA-512 is not one the broker enables",
        ),
        (
            _set("customer-value", AMBIDEX_KAFKA_SASL_USERNAME="ambidex-receivables"),
            "customer-value: logs in as ambidex-receivables, deploy/access.yaml declares",
        ),
        (
            _set("customer-value", AMBIDEX_KAFKA_SASL_USERNAME="ambidex-nobody"),
            "Kafka user ambidex-nobody is not one the broker knows",
        ),
        (
            _set("customer-value",
                 AMBIDEX_KAFKA_SASL_PASSWORD="${AMBIDEX_KAFKA_PASSWORD_AMBIDEX_ADMIN}"),
            "the broker checks it against ${AMBIDEX_KAFKA_PASSWORD_AMBIDEX_CUSTOMER_VALUE}",
        ),
        (
            _set("setup", AMBIDEX_KAFKA_BOOTSTRAP="localhost:19092"),
            "setup: bootstrap localhost:19092 is the PLAINTEXT listener",
        ),
        (
            _set("kafka", KAFKA_LISTENERS="CLIENTS://:9092,HOST://:29092,BROKER://:19092,"
                 "CONTROLLER://localhost:9093"),
            "listener BROKER (PLAINTEXT) on every address:19092 is reachable without a login",
        ),
        (
            _set("kafka", KAFKA_LISTENER_SECURITY_PROTOCOL_MAP="CLIENTS:PLAINTEXT,"
                 "HOST:SASL_PLAINTEXT,BROKER:PLAINTEXT,CONTROLLER:PLAINTEXT"),
            "listener CLIENTS (PLAINTEXT) on every address:9092 is reachable without a login",
        ),
        (
            _drop("kafka", "KAFKA_LISTENER_NAME_HOST_PLAIN_SASL_JAAS_CONFIG"),
            "SASL listener HOST has no PLAIN user list",
        ),
        (
            _drop("connect", "CONNECT_PRODUCER_SECURITY_PROTOCOL"),
            "connect (connect_producer): Kafka security protocol PLAINTEXT (unset)",
        ),
        (
            _drop("connect", "CONNECT_ADMIN_SASL_JAAS_CONFIG"),
            "connect (connect_admin): no Kafka user name",
        ),
        (
            _drop("connect", "AMBIDEX_KAFKA_PASSWORD_AMBIDEX_CRM"),
            "connect (connector ambidex-crm): the Kafka password is not a ${VARIABLE}",
        ),
        (_drop_setup_flag, "setup: no --connector-principals"),
    ],
)
def test_a_kafka_client_without_a_login_or_an_open_listener_fails(
    change: Callable[[Doc], None], expected: str
) -> None:
    problems = security_problems(_broken(change))
    assert any(expected in problem for problem in problems), problems


def test_an_inline_kafka_password_fails_the_policy() -> None:
    def inline(document: Doc) -> None:
        environment = _env(document, "kafka")
        environment["KAFKA_LISTENER_NAME_HOST_PLAIN_SASL_JAAS_CONFIG"] = (
            'org.apache.kafka.common.security.plain.PlainLoginModule required '
            'user_ambidex-admin="hunter2";'
        )

    problems = [*policy_problems(_broken(inline)), *security_problems(_broken(inline))]
    assert any("KAFKA_LISTENER_NAME_HOST_PLAIN_SASL_JAAS_CONFIG holds an inline password" in p
               for p in problems), problems
    assert any("user ambidex-admin's password is inline" in p for p in problems), problems


def test_every_required_variable_is_in_the_env_example(tmp_path: Path) -> None:
    text = COMPOSE_FILE.read_text()
    assert env_example_problems(text) == []
    example = tmp_path / ".env.example"
    example.write_text("POSTGRES_PASSWORD=\n# AMBIDEX_CDC_PASSWORD=\n")
    problems = env_example_problems(text, example)
    assert ".env.example: AMBIDEX_CDC_PASSWORD is required but not listed" in problems
    assert not any("POSTGRES_PASSWORD" in p for p in problems)


def test_kafka_and_connect_serve_the_jmx_exporter_prometheus_scrapes() -> None:
    assert monitoring_problems(load_compose()) == []
    services = load_compose()["services"]
    assert services["jmx-agent"]["entrypoint"] == ["python", "-m", "ambidex.jmx_agent", "/state"]
    for jvm in ("kafka", "connect"):
        assert services[jvm]["depends_on"]["jmx-agent"] == {
            "condition": "service_completed_successfully"
        }


def _opts(service: str, value: str) -> Callable[[Doc], None]:
    return _set(service, KAFKA_OPTS=value)


_AGENT = "/opt/jmx-agent/jmx_prometheus_javaagent-1.0.1.jar"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (_drop("kafka", "KAFKA_OPTS"), "kafka: no JMX exporter agent"),
        (_opts("connect", f"-javaagent:{_AGENT}=9999:/etc/jmx/connect.yaml"),
         "connect: the JMX agent serves 9999, scraped on 9411"),
        (_opts("kafka", f"-javaagent:{_AGENT}=9410:/etc/jmx/connect.yaml"),
         "kafka: the JMX agent's rules /etc/jmx/connect.yaml are not"),
        (_opts("kafka", "-javaagent:/opt/other/agent.jar=9410:/etc/jmx/kafka.yaml"),
         "kafka: the JMX agent's jar /opt/other/agent.jar is not in the volume"),
        (_opts("kafka", "-javaagent:/opt/jmx-agent/jmx_prometheus_javaagent-0.20.0.jar"
               "=9410:/etc/jmx/kafka.yaml"),
         "kafka: the JMX agent's jar is jmx_prometheus_javaagent-0.20.0.jar"),
        (lambda d: d["services"].pop("jmx-agent"), "not in the volume the jmx-agent job"),
        (lambda d: d["services"].pop("pipeline-exporter"),
         "job pipeline-exporter scrapes pipeline-exporter:9400, no such service"),
    ],
)
def test_a_scrape_target_compose_does_not_serve_fails(
    change: Callable[[Doc], None], expected: str
) -> None:
    problems = monitoring_problems(_broken(change))
    assert any(expected in problem for problem in problems), problems


def test_the_pipeline_jobs_are_the_local_stacks() -> None:
    from ambidex.monitoring import COMPOSE_PIPELINE_JOBS
    from ambidex.stack.config import StackConfig
    from ambidex.stack.pipeline_metrics import metrics_endpoints

    config = StackConfig(state_dir=Path("/nonexistent"), cache_dir=Path("/nonexistent"))
    assert set(COMPOSE_PIPELINE_JOBS) == set(metrics_endpoints(config))

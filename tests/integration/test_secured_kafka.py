"""Secured Kafka on the real local stack: SASL/SCRAM-SHA-512 users with the ACLs of
deploy/access.yaml under the standard (KRaft) authorizer.

Invariants (issue 13, "prove the ACL set on the local stack"):

* Each principal of deploy/access.yaml can fetch every topic it reads, produce to its
  output topics, and use its own consumer groups, through the SASL listener.
* It is denied everything else: another service's state, dead letters and outputs
  (TopicAuthorizationFailed, at metadata or at fetch/produce), producing to a topic it
  only reads, another service's consumer group (GroupAuthorizationFailed); a capture
  connector writes under its own database's prefix and not under the other's.
* A wrong password or an unknown user fails SASL authentication.
* The pipeline runs end to end over the SASL listener: Connect as ``ambidex-connect``,
  each capture connector's producer as its own principal (the worker's user may write
  no CDC topic, so a change only arrives if the override works), inventory-projection
  as its own user (Debezium -> Kafka -> service -> CRM); no password reaches any log.

The session's stack gets the SASL listener because this module is marked
``secured_kafka`` (tests/conftest.py); other modules' clients stay on the plain listener.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    TopicAuthorizationFailedError,
)

from ambidex.access import Access, load_access
from ambidex.stack.kafka_access import sasl_client_environment, users_file
from ambidex.stack.local import LocalStack, StackAddresses
from services.shared.kafka import KafkaConnection, client_options
from tests.conftest import ServiceProcess
from tests.integration.support import topic_partitions
from tests.integration.test_inventory_projection import expect, new_fixture, quantities

pytestmark = [pytest.mark.integration, pytest.mark.secured_kafka]

ACCESS = load_access()
SERVICES = ACCESS.services


def connection(stack: LocalStack, access: Access, password: str | None = None) -> KafkaConnection:
    env = sasl_client_environment(stack.config, access.user)
    return KafkaConnection(
        env["AMBIDEX_KAFKA_BOOTSTRAP"],
        "SASL_PLAINTEXT",
        "SCRAM-SHA-512",
        access.user,
        password if password is not None else env["AMBIDEX_KAFKA_SASL_PASSWORD"],
    )


async def read_to_end(kafka: KafkaConnection, bootstrap: str, topic: str) -> int:
    """Fetch ``topic`` from its beginning to its end as the given user (no group)."""
    partitions = await topic_partitions(bootstrap, [topic])  # the plain listener's view
    consumer = AIOKafkaConsumer(**client_options(kafka), enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        count = 0
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            batches = await consumer.getmany(timeout_ms=1000)
            count += sum(len(records) for records in batches.values())
        # fetches at the end still go to the broker and are authorized there (an empty
        # topic gets no other fetch)
        for _ in range(3):
            await consumer.getmany(timeout_ms=500)
        return count
    finally:
        await consumer.stop()


async def fetch_refused(kafka: KafkaConnection, bootstrap: str, topic: str) -> bool:
    """Whether fetching ``topic`` as the given user fails with TopicAuthorizationFailed
    (a described topic: the refusal comes with the first fetch response)."""
    partitions = await topic_partitions(bootstrap, [topic])
    consumer = AIOKafkaConsumer(**client_options(kafka), enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(partitions)
        for partition in partitions:
            consumer.seek(partition, 0)
        for _ in range(60):
            try:
                await consumer.getmany(timeout_ms=500)
            except TopicAuthorizationFailedError:
                return True
        return False
    finally:
        await consumer.stop()


async def produce(kafka: KafkaConnection, topic: str, key: bytes) -> None:
    producer = AIOKafkaProducer(**client_options(kafka), enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"secured-kafka probe", key=key)
    finally:
        await producer.stop()


async def describe_error(kafka: KafkaConnection, topic: str) -> int:
    admin = AIOKafkaAdminClient(**client_options(kafka))
    await admin.start()
    try:
        (description,) = await admin.describe_topics([topic])
        return int(description.get("error_code", 0))
    finally:
        await admin.close()


async def group_offsets(kafka: KafkaConnection, group: str) -> object:
    admin = AIOKafkaAdminClient(**client_options(kafka))
    await admin.start()
    try:
        return await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()


@pytest.mark.parametrize("service", sorted(SERVICES))
async def test_a_service_reads_writes_and_uses_groups_as_granted(
    local_stack: LocalStack, stack: StackAddresses, service: str, unique: str
) -> None:
    access = SERVICES[service]
    kafka = connection(local_stack, access)
    for topic in access.reads:
        await read_to_end(kafka, stack.kafka_bootstrap, topic)
    for group in access.groups:
        await group_offsets(kafka, group)
    # published outputs: a keyed probe no service reads (test readers start at the end);
    # its state and dead-letter topics are written by the real service (test below)
    for topic in (t for t in access.writes if t.startswith("ambidex.")):
        await produce(kafka, topic, key=f"probe-{unique}".encode())
        assert await describe_error(kafka, topic) == 0


def _others(service: str) -> set[str]:
    """Topics other services read or write that ``service`` is granted nothing on."""
    mine = {*SERVICES[service].reads, *SERVICES[service].writes}
    return {
        topic
        for name, access in SERVICES.items()
        if name != service
        for topic in (*access.reads, *access.writes)
        if topic not in mine
    }


@pytest.mark.parametrize("service", sorted(SERVICES))
async def test_a_service_is_denied_what_it_is_not_granted(
    local_stack: LocalStack, stack: StackAddresses, service: str, unique: str
) -> None:
    access = SERVICES[service]
    kafka = connection(local_stack, access)
    foreign = sorted(_others(service))
    assert any(t.startswith("state.") or t.startswith("dlq.") for t in foreign), foreign
    for topic in foreign:  # not even its metadata: no read, no write
        assert await describe_error(kafka, topic) == TopicAuthorizationFailedError.errno, topic
        with pytest.raises(TopicAuthorizationFailedError):
            await produce(kafka, topic, key=unique.encode())
    # a topic it only reads: fetching works (test above), producing is refused
    read_only = sorted(set(access.reads) - set(access.writes))[0]
    with pytest.raises(TopicAuthorizationFailedError):
        await produce(kafka, read_only, key=unique.encode())
    # a topic it only writes: described, but fetching is refused
    write_only = sorted(set(access.writes) - set(access.reads))[0]
    assert await fetch_refused(kafka, stack.kafka_bootstrap, write_only), write_only
    for other in (a for name, a in SERVICES.items() if name != service):
        for group in other.groups:
            with pytest.raises(GroupAuthorizationFailedError):
                await group_offsets(kafka, group)


async def test_a_connector_writes_only_under_its_own_prefix(
    local_stack: LocalStack, stack: StackAddresses, unique: str
) -> None:
    # fresh topics under each prefix, so no captured topic gets a probe record
    probes = {db: f"cdc.{db}.probe_{unique}" for db in ("crm", "erp")}
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, 1, 1) for t in probes.values()])
        for name, access in ACCESS.connectors.items():
            own = "crm" if "crm" in name else "erp"
            other = "erp" if own == "crm" else "crm"
            kafka = connection(local_stack, access)
            await produce(kafka, probes[own], key=b"probe")
            with pytest.raises(TopicAuthorizationFailedError):
                await produce(kafka, probes[other], key=b"probe")
            # it writes, never reads
            assert await fetch_refused(kafka, stack.kafka_bootstrap, probes[own])
    finally:
        await admin.delete_topics(list(probes.values()))
        await admin.close()


@pytest.mark.parametrize("who", ["wrong password", "unknown user"])
async def test_bad_credentials_fail_authentication(
    local_stack: LocalStack, who: str, caplog: pytest.LogCaptureFixture
) -> None:
    access = SERVICES["order-sync"]
    good = connection(local_stack, access)
    kafka = (
        connection(local_stack, access, password=good.sasl_password + "x")  # type: ignore[operator]
        if who == "wrong password"
        else KafkaConnection(
            good.bootstrap,
            "SASL_PLAINTEXT",
            "SCRAM-SHA-512",
            "ambidex-nobody",
            good.sasl_password,
        )
    )
    producer = AIOKafkaProducer(**client_options(kafka))
    with caplog.at_level(logging.ERROR, logger="aiokafka"), pytest.raises(KafkaConnectionError):
        await producer.start()
    await producer.stop()
    assert "Authentication failed" in caplog.text, caplog.text
    assert "invalid credentials with SASL mechanism SCRAM-SHA-512" in caplog.text


async def test_inventory_projection_runs_end_to_end_as_its_own_user(
    local_stack: LocalStack,
    stack: StackAddresses,
    service_process: Callable[[str], ServiceProcess],
    unique: str,
) -> None:
    from ambidex.stack.config import _free_ports

    # the session's plain instance shares the group and state directory: stop it for
    # this test (the `projection` fixture starts it again when a later test needs it)
    service_process("inventory-projection").stop()
    environment = {
        **local_stack.service_environment("inventory-projection", _free_ports(1)[0]),
        "AMBIDEX_LOG_FORMAT": "json",
    }
    assert environment["AMBIDEX_KAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT"
    assert environment["AMBIDEX_KAFKA_BOOTSTRAP"] == local_stack.config.kafka_sasl_bootstrap
    assert environment["AMBIDEX_KAFKA_SASL_USERNAME"] == "ambidex-inventory-projection"
    secured = ServiceProcess(
        "inventory-projection", local_stack, environment, label=f"secured-{unique}"
    )
    secured.start()
    try:
        await secured.wait_ready()
        fx = await new_fixture(stack, f"SASL{unique}")
        erp = await asyncpg.connect(stack.erp_admin_dsn)
        try:
            await erp.execute(
                """INSERT INTO erp.stock_quant (item_id, warehouse_id, quantity)
                   VALUES ($1, $2, 40)""",
                fx.item_id,
                fx.warehouse_id,
            )
        finally:
            await erp.close()
        await expect(stack, fx, quantities(40, 0, 0, 40))
    finally:
        secured.stop()
    passwords = json.loads(users_file(local_stack.config.state_dir).read_text()).values()
    assert environment["AMBIDEX_KAFKA_SASL_PASSWORD"] in passwords
    # the service's own log, and the broker's, Connect's and every other of the stack
    for log in [secured.log_path, *local_stack.config.logs_dir.glob("*.log")]:
        text = log.read_text(errors="replace")
        assert not [p for p in passwords if p in text], f"a Kafka password is in {log}"


async def test_the_setup_job_and_the_pipeline_exporter_log_in_with_the_services_settings(
    local_stack: LocalStack, stack: StackAddresses
) -> None:
    """docker-compose's broker takes only logins: ``ambidex setup``'s topic step and the
    pipeline exporter read ``AMBIDEX_KAFKA_SECURITY_PROTOCOL`` and the SASL settings as a
    service does (``kafka_from_environment``) and reach the SASL listener as the user
    given; a wrong password is a failed read, not a plain connection."""
    from ambidex.pipeline_exporter import ExporterSettings, Snapshot, refresh
    from ambidex.targets import kafka_from_environment
    from ambidex.topics import apply_topics, load_topic_declaration

    access = SERVICES["receivables"]
    environment = sasl_client_environment(local_stack.config, access.user)
    kafka = kafka_from_environment(environment["AMBIDEX_KAFKA_BOOTSTRAP"], environment)
    assert isinstance(kafka, KafkaConnection) and kafka.sasl_username == access.user
    # topics it may describe and all present: the step lists and checks them, creates none
    readable = [spec for spec in load_topic_declaration() if spec.name in access.reads]
    report = await apply_topics(kafka, readable)
    assert report.created == [] and sorted(report.existing) == sorted(s.name for s in readable)

    snapshot = Snapshot()
    await refresh(ExporterSettings.from_env(environment), snapshot)
    assert snapshot.kafka_up is True
    wrong = {**environment, "AMBIDEX_KAFKA_SASL_PASSWORD": "not-the-password"}
    await refresh(ExporterSettings.from_env(wrong), snapshot)
    assert snapshot.kafka_up is False

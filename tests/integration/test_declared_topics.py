"""Every topic on the cluster is declared: with every service of the registry running,
the broker holds only the topics of `deploy/topics.yaml`, Kafka's and Kafka Connect's
own, and the ones tests create for themselves (`test.*`, `dlq.test-*`). A runtime that
creates a topic of its own (Faust's `<app id>-__assignor-__leader`, replication 1
whatever production needs) fails here."""

from __future__ import annotations

from collections.abc import Callable

from aiokafka.admin import AIOKafkaAdminClient

from ambidex.connectors import connect_worker_config
from ambidex.stack.local import StackAddresses
from ambidex.topics import load_topic_declaration
from services.registry import SERVICE_MODULES
from tests.conftest import ServiceProcess

#: the broker's own topics (consumer offsets; transaction state once a producer uses it)
KAFKA_INTERNAL = frozenset({"__consumer_offsets", "__transaction_state"})


def _platform_topics() -> frozenset[str]:
    worker = connect_worker_config(replication=1)
    connect = {worker[key] for key in worker if key.endswith(".storage.topic")}
    return KAFKA_INTERNAL | connect | {spec.name for spec in load_topic_declaration()}


def _made_by_a_test(topic: str) -> bool:
    return topic.startswith(("test.", "dlq.test-"))


async def test_running_services_create_no_undeclared_topic(
    stack: StackAddresses, service_process: Callable[[str], ServiceProcess]
) -> None:
    names = list(SERVICE_MODULES)
    assert names, "the registry offers no service to run"
    for name in names:
        process = service_process(name)
        if process.process is None or process.process.poll() is not None:
            process.start()
    for name in names:
        await service_process(name).wait_ready()
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    await admin.start()
    try:
        topics = set(await admin.list_topics())
    finally:
        await admin.close()
    undeclared = sorted(
        topic for topic in topics - _platform_topics() if not _made_by_a_test(topic)
    )
    assert undeclared == []

"""Published topics in the ecosystem's registry wire format, read by a client that is
not ours, against the stack's schema registry.

Invariants:

* receivables publishes ``ambidex.receivable-position`` framed as magic byte 0 + the
  4-byte id its subject ``ambidex.receivable-position-value`` holds (compatibility
  FULL, set by the service at start-up), and Confluent's own consumer and
  ``AvroDeserializer`` (librdkafka + Confluent's registry client, no Ambidex code) read
  the same exact Decimal figures from it that Ambidex's reader does.
* A schema the registry refuses as incompatible holds a service's start with
  ``/readyz`` failing and naming the subject and the reason; once the registry accepts
  it (here: the subject is deleted), the start goes on.
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from ambidex.stack.local import LocalStack, StackAddresses
from ambidex.stack.schema_registry import registry_url
from services.receivables.emit import POSITION_TOPIC
from services.shared.avro import SchemaCatalogue
from services.shared.health import HealthState
from services.shared.resilience import Backoff, RetryPolicy
from services.shared.schema_registry import (
    IncompatibleSchema,
    RegistryIds,
    register_at_start,
    register_subjects,
)
from services.shared.schema_registry import (
    SchemaRegistryClient as AmbidexRegistryClient,
)
from tests.conftest import ServiceProcess, wait_until
from tests.integration.support import read_topic
from tests.integration.test_receivables import bill, new_party, pay, sign, today

pytestmark = pytest.mark.integration


def confluent_read(bootstrap: str, registry: str, topic: str, key: bytes) -> list[dict[str, Any]]:
    """Every value with ``key`` on ``topic``, decoded by Confluent's client alone."""
    deserialize = AvroDeserializer(SchemaRegistryClient({"url": registry}))
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": "unused", "enable.auto.commit": False,
    })
    try:
        metadata = consumer.list_topics(topic, timeout=30)
        partitions = [TopicPartition(topic, p, 0) for p in metadata.topics[topic].partitions]
        ends = {p.partition: consumer.get_watermark_offsets(p, timeout=30)[1] for p in partitions}
        consumer.assign(partitions)
        found: list[dict[str, Any]] = []
        done: set[int] = {p for p, end in ends.items() if end == 0}
        while len(done) < len(partitions):
            message = consumer.poll(5.0)
            if message is None:
                continue
            assert message.error() is None, message.error()
            value = message.value()
            if message.key() == key and value is not None:
                assert value[0] == 0, f"not registry-framed: {value[:5].hex()}"
                context = SerializationContext(topic, MessageField.VALUE)
                found.append(deserialize(value, context))
            partition, offset = message.partition(), message.offset()
            assert partition is not None and offset is not None
            if offset + 1 >= ends[partition]:
                done.add(partition)
        return found
    finally:
        consumer.close()


# the first test of a session also waits for the stack and the service to start
@pytest.mark.timeout(900)
async def test_confluents_reader_gets_the_figures_receivables_published(
    receivables: ServiceProcess, local_stack: LocalStack, stack: StackAddresses,
    dbs: Any, unique: str,
) -> None:
    crm, erp = dbs
    party = await new_party(crm, erp, f"registry {unique}")
    day = today()
    contract = await sign(crm, party, "999.99", [(day - timedelta(days=20), "333.33"),
                                                 (day + timedelta(days=10), "666.66")])
    invoice = await bill(erp, party, contract, 1, "333.33")
    await pay(erp, party, invoice, "100.01")
    key = str(contract).encode()

    async def ours() -> dict[str, Any] | None:
        found = await read_topic(stack.kafka_bootstrap, POSITION_TOPIC, lambda k: k == key)
        last = found[-1][1] if found else None
        return last if last is not None and last["paid"] == Decimal("100.01") else None

    await wait_until(ours, timeout=120, interval=1.0)
    ambidex_view = await ours()
    assert ambidex_view is not None

    registry = registry_url(local_stack.config)
    client = SchemaRegistryClient({"url": registry})
    subject = f"{POSITION_TOPIC}-value"
    assert client.get_compatibility(subject) == "FULL"
    latest = client.get_latest_version(subject)
    raw = await read_topic(stack.kafka_bootstrap, POSITION_TOPIC, lambda k: k == key, raw=True)
    assert latest.schema_id is not None
    assert raw[-1][1][:5] == b"\x00" + latest.schema_id.to_bytes(4, "big")

    theirs = await asyncio.to_thread(
        confluent_read, stack.kafka_bootstrap, registry, POSITION_TOPIC, key
    )
    assert theirs[-1] == ambidex_view
    assert (theirs[-1]["contracted"], theirs[-1]["invoiced"], theirs[-1]["paid"],
            theirs[-1]["outstanding"], theirs[-1]["currency"]) == (
        Decimal("999.99"), Decimal("333.33"), Decimal("100.01"), Decimal("899.98"), "EUR")


@pytest.mark.timeout(900)
async def test_an_incompatible_schema_fails_readiness_until_the_registry_accepts_it(
    local_stack: LocalStack, unique: str,
) -> None:
    catalogue = SchemaCatalogue.load()
    entry = catalogue.latest("ambidex.receivables.ReceivablePosition")
    subject = f"ambidex.test-{unique}-value"
    registry = registry_url(local_stack.config)
    client = AmbidexRegistryClient(registry)
    # the subject already holds a schema of the same name the new one cannot follow:
    # a required field the new schema lacks (no default: old readers break)
    older = json.loads(json.dumps(entry.schema))
    older["fields"].append({"name": "legacy_required", "type": "string"})
    await client.set_compatibility(subject, "FULL")
    await client.register(subject, older)
    try:
        with pytest.raises(IncompatibleSchema, match=subject):
            await register_subjects(client, catalogue, {subject: entry.name}, RegistryIds())

        health = HealthState()
        retry = RetryPolicy(health, Backoff(initial=0.05, maximum=0.2), log_interval=10)
        ids = RegistryIds()
        start = asyncio.ensure_future(register_at_start(
            client, catalogue, {subject: entry.name}, ids, health, retry, refused_delay=0.2,
        ))

        async def check() -> dict[str, Any]:
            _, answer = await health.readiness()  # what /readyz answers
            return dict(answer["checks"].get("schema-registry") or {})

        async def refused() -> bool:
            status = await check()
            return status.get("ok") is False and "refused" in status["detail"]

        await wait_until(refused, timeout=30)
        assert not (await health.readiness())[0]
        detail = (await check())["detail"]
        assert subject in detail and "incompatible" in detail.lower(), detail
        assert not start.done()

        SchemaRegistryClient({"url": registry}).delete_subject(subject, permanent=False)
        registered = await asyncio.wait_for(start, timeout=30)
        assert (await check())["ok"] is True
        assert ids.id_for(entry) == registered[subject]
    finally:
        await client.close()

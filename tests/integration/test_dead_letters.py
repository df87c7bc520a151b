"""Bad input never stops a consumer and is never silently dropped (invariant 4): a
malformed record and a schema-invalid one on a real topic each land in the service's
dead-letter topic with the reason, the original bytes and their origin, the good
records around them are decoded, and `deadletters replay` puts the original bytes back
(`--dry-run` shows the same letters and sends nothing; the command reads its broker from
AMBIDEX_KAFKA_BOOTSTRAP like every service)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import socket
import sys
from decimal import Decimal

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from ambidex.stack.local import StackAddresses
from services.shared.avro import AvroCodec, SchemaCatalogue
from services.shared.cdc_schemas import EnvelopeSchemas, load_envelope_schemas
from services.shared.changes import ChangeDecoder, ChangeEvent
from services.shared.deadletter_tools import read_dead_letters, replay_dead_letters
from services.shared.deadletters import KafkaDeadLetterPublisher
from services.shared.intake import ChangeIntake
from tests.integration.support import create_topic, topic_partitions


def _account_envelope(account_id: int, credit_limit: object) -> bytes:
    row = {
        "id": account_id,
        "name": "Dead Letter AG",
        "street": None,
        "city": None,
        "postal_code": None,
        "country_code": "CH",
        "vat_number": None,
        "currency_code": "CHF",
        "credit_limit": credit_limit,
        "industry": None,
        "created_at": "2026-11-26T10:00:00.000000Z",
        "updated_at": "2026-11-26T10:00:00.000000Z",
    }
    return json.dumps(
        {
            "before": None,
            "after": row,
            "source": {
                "version": "3.6.1.Final",
                "connector": "postgresql",
                "name": "cdc.crm",
                "ts_ms": 1795735628506,
                "snapshot": "false",
                "db": "crm",
                "sequence": '["100","200"]',
                "schema": "crm",
                "table": "account",
                "txId": 9,
                "lsn": 200,
                "xmin": None,
            },
            "transaction": {"id": "9:200", "total_order": 1, "data_collection_order": 1},
            "op": "c",
            "ts_ms": 1795735628542,
        }
    ).encode()


async def test_bad_records_go_to_the_dead_letter_topic_and_can_be_replayed(
    stack: StackAddresses, unique: str
) -> None:
    service = f"test-{unique}"
    source_topic = f"test.cdc.crm.account.{unique}"
    replay_topic = f"test.replayed.{unique}"
    for topic in (source_topic, f"dlq.{service}", replay_topic):
        await create_topic(stack.kafka_bootstrap, topic)

    schemas = load_envelope_schemas()
    aliased = EnvelopeSchemas([dataclasses.replace(schemas["cdc.crm.account"], topic=source_topic)])
    records = [
        (b'{"id": 1}', _account_envelope(1, "1000.00")),
        (b'{"id": 2}', b"\x00\x01 not json"),
        (b'{"id": 3}', _account_envelope(3, 1000.5)),  # money as a float: schema violation
        (b'{"id": 4}', _account_envelope(4, "250.10")),
    ]
    producer = AIOKafkaProducer(
        bootstrap_servers=stack.kafka_bootstrap, acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(
                source_topic, value=value, key=key, headers=[("origin", b"test")]
            )
        intake = ChangeIntake(
            service,
            ChangeDecoder(aliased),
            KafkaDeadLetterPublisher(producer, AvroCodec(SchemaCatalogue.load())),
        )
        consumer = AIOKafkaConsumer(
            bootstrap_servers=stack.kafka_bootstrap, enable_auto_commit=False
        )
        await consumer.start()
        try:
            partitions = await topic_partitions(stack.kafka_bootstrap, [source_topic])
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            decoded: list[ChangeEvent] = []
            seen = 0
            while seen < len(records):
                for batch in (await consumer.getmany(timeout_ms=1000)).values():
                    for record in batch:
                        seen += 1
                        change = await intake.change(record)
                        if isinstance(change, ChangeEvent):
                            decoded.append(change)
        finally:
            await consumer.stop()
    finally:
        await producer.stop()

    assert [change.key["id"] for change in decoded] == [1, 4]
    assert [change.after["credit_limit"] for change in decoded if change.after] == [
        Decimal("1000.00"),
        Decimal("250.10"),
    ]

    letters = [
        letter async for _, letter in read_dead_letters(stack.kafka_bootstrap, service, limit=None)
    ]
    assert [(letter.source_topic, letter.source_offset) for letter in letters] == [
        (source_topic, 1),
        (source_topic, 2),
    ]
    malformed, invalid = letters
    assert malformed.error_type == "MalformedEvent" and malformed.value == records[1][1]
    assert invalid.error_type == "SchemaViolation" and "credit_limit" in invalid.reason
    assert invalid.key == b'{"id": 3}' and invalid.value == records[2][1]
    assert ("origin", b"test") in [tuple(header) for header in invalid.headers]

    dry_run = await _ambidex(
        {"AMBIDEX_KAFKA_BOOTSTRAP": stack.kafka_bootstrap},
        "deadletters", "replay", service, "--to", replay_topic, "--dry-run",
    )
    assert dry_run.returncode == 0, dry_run.stderr
    shown = [json.loads(line) for line in dry_run.stdout.splitlines()]
    assert [(letter["offset"], letter["to"]) for letter in shown] == [
        (0, replay_topic), (1, replay_topic)
    ]
    assert "would replay 2 dead letters" in dry_run.stderr

    replayed = await replay_dead_letters(
        stack.kafka_bootstrap, service, offsets=None, target_topic=replay_topic
    )
    assert replayed.replayed == 2
    consumer = AIOKafkaConsumer(
        replay_topic,
        bootstrap_servers=stack.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        batch = await consumer.getmany(timeout_ms=10_000)
        values = [record.value for records in batch.values() for record in records]
    finally:
        await consumer.stop()
    assert values == [records[1][1], records[2][1]]  # once each: the dry run sent nothing


class _Finished:
    def __init__(self, returncode: int, stdout: bytes, stderr: bytes) -> None:
        self.returncode = returncode
        self.stdout, self.stderr = stdout.decode(), stderr.decode()


async def _ambidex(env: dict[str, str], *args: str) -> _Finished:
    """The real CLI in its own process (it runs its own event loop)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ambidex.cli", *args,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await process.communicate()
    assert process.returncode is not None
    return _Finished(process.returncode, stdout, stderr)


async def test_an_unreachable_target_is_one_line_naming_it_and_its_setting(
    stack: StackAddresses,
) -> None:
    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        nowhere = f"127.0.0.1:{probe.getsockname()[1]}"
    inspect = await _ambidex(
        {"AMBIDEX_KAFKA_BOOTSTRAP": nowhere}, "deadletters", "inspect", "order-sync"
    )
    assert inspect.returncode == 1
    assert f"cannot reach {nowhere} (from AMBIDEX_KAFKA_BOOTSTRAP)" in inspect.stderr
    assert "Traceback" not in inspect.stderr

    password = "s3cret-not-printed"
    reconcile = await _ambidex(
        {
            "AMBIDEX_CRM_DSN": f"postgresql://ambidex_app:{password}@{nowhere}/crm",
            "AMBIDEX_ERP_DSN": stack.erp_admin_dsn,
        },
        "reconcile", "order-sync",
    )
    assert reconcile.returncode == 1
    assert "cannot reach postgresql://ambidex_app:***@" in reconcile.stderr
    assert "AMBIDEX_CRM_DSN" in reconcile.stderr
    assert password not in reconcile.stderr + reconcile.stdout
    assert "Traceback" not in reconcile.stderr

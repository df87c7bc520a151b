"""The intake never lets bad input through and never drops it: a good record comes out
as a typed change, a malformed or schema-invalid one goes to the dead-letter port with
its reason, original bytes and origin, is counted, and the caller carries on."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal

from prometheus_client import CollectorRegistry

from services.shared.avro import AvroCodec, SchemaCatalogue
from services.shared.cdc_schemas import load_envelope_schemas
from services.shared.changes import ChangeDecoder, ChangeEvent
from services.shared.deadletters import InMemoryDeadLetterPublisher
from services.shared.intake import ChangeIntake
from services.shared.observability import ServiceMetrics


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int | None = 1_795_735_628_506
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def _product(price: object) -> bytes:
    return json.dumps(
        {
            "before": None,
            "after": {
                "id": 7,
                "sku": "SKU-7",
                "name": "Gear",
                "uom": "Unit",
                "list_price": price,
                "currency_code": "EUR",
                "active": True,
                "created_at": "2026-11-26T10:00:00Z",
                "updated_at": "2026-11-26T10:00:00Z",
            },
            "source": {
                "version": "3.6.1.Final",
                "connector": "postgresql",
                "name": "cdc.crm",
                "ts_ms": 1795735628506,
                "snapshot": "false",
                "db": "crm",
                "sequence": '["10","20"]',
                "schema": "crm",
                "table": "product",
                "txId": 5,
                "lsn": 20,
                "xmin": None,
            },
            "transaction": {"id": "5:20", "total_order": 1, "data_collection_order": 1},
            "op": "c",
            "ts_ms": 1795735628542,
        }
    ).encode()


def _intake() -> tuple[ChangeIntake, InMemoryDeadLetterPublisher, CollectorRegistry]:
    codec = AvroCodec(SchemaCatalogue.load())
    dead_letters = InMemoryDeadLetterPublisher(codec)
    registry = CollectorRegistry()
    intake = ChangeIntake(
        "order-sync",
        ChangeDecoder(load_envelope_schemas()),
        dead_letters,
        ServiceMetrics("order-sync", registry),
    )
    return intake, dead_letters, registry


async def test_good_record_becomes_a_typed_change() -> None:
    intake, dead_letters, _ = _intake()
    change = await intake.change(Record("cdc.crm.product", 0, 3, b'{"id": 7}', _product("12.30")))
    assert isinstance(change, ChangeEvent)
    assert change.after is not None and change.after["list_price"] == Decimal("12.30")
    assert dead_letters.letters == []


async def test_bad_records_are_dead_lettered_with_reason_bytes_and_origin() -> None:
    intake, dead_letters, registry = _intake()
    garbage = Record("cdc.crm.product", 1, 41, b'{"id": 8}', b"{not json", headers=[("h", b"1")])
    floaty = Record("cdc.crm.product", 2, 42, b'{"id": 7}', _product(12.3))
    assert await intake.change(garbage) is None
    assert await intake.change(floaty) is None

    first, second = dead_letters.letters
    assert (first.source_topic, first.source_partition, first.source_offset) == (
        "cdc.crm.product",
        1,
        41,
    )
    assert first.value == b"{not json" and first.key == b'{"id": 8}'
    assert first.error_type == "MalformedEvent" and first.reason
    assert [tuple(h) for h in first.headers] == [("h", b"1")]
    assert second.error_type == "SchemaViolation" and "list_price" in second.reason
    assert second.value == floaty.value
    dead = registry.get_sample_value(
        "ambidex_dead_letters_total", {"service": "order-sync", "reason_kind": "SchemaViolation"}
    )
    assert dead == 1.0


async def test_unreadable_transaction_marker_is_dead_lettered() -> None:
    intake, dead_letters, _ = _intake()
    assert await intake.marker(Record("cdc.crm.transaction", 0, 9, b"{}", b"[]")) is None
    assert dead_letters.letters[0].source_topic == "cdc.crm.transaction"


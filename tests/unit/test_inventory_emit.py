"""inventory-projection's hot-path emitters equal the generic ones, byte for byte.

Invariants protected here:

* A published availability record is exactly what the schema catalogue's Avro codec
  (fastavro, single-object encoding) writes for it: consumers decode it with the
  catalogue, whatever the figures (negative, zero, large, many incoming dates, undated
  supply, overall keys without a warehouse, as-of before and after the epoch).
* The availability topic key is the documented compact sorted JSON, for any text.
* The write-back row of an availability is the generic upsert of its row, exactly; the
  column arrays of the dedicated write-back statement hold those same rows, in the
  generic spec's column order (quantities as their exact decimal text).
* A key is published to the partition the producer's default partitioner would choose
  (murmur2), so batching the sends never moves a compacted key to another partition;
  the hash from a cached mid-state of the key's sku part is murmur2 of the whole key.
"""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from services.inventory_projection.available_to_promise import Availability, Incoming, topic_key
from services.inventory_projection.emit import (
    AvailabilityEncoder,
    TopicKeys,
    availability_topic_key,
    murmur2,
    partition_for,
)
from services.inventory_projection.recompute import (
    AVAILABILITY_SPEC,
    availability_row,
    availability_upsert,
)
from services.inventory_projection.writeback import (
    NUMERIC_COLUMNS,
    UPSERT_AVAILABILITY,
    availability_columns,
)
from services.shared.avro import AvroCodec, SchemaCatalogue
from services.shared.position import SourcePosition

CATALOGUE = SchemaCatalogue.load()
CODEC = AvroCodec(CATALOGUE)
ENCODER = AvailabilityEncoder(CATALOGUE.latest("availability"))


def _quantity(rng: random.Random) -> Decimal:
    magnitude = rng.choice([0, 1, 7, 63, 64, 127, 128, 255, 256, 32767, 32768, 10**11 - 1])
    sign = rng.choice([1, -1])
    return Decimal(sign * magnitude * 1000 + rng.randrange(1000)).scaleb(-3)


def _availability(rng: random.Random) -> Availability:
    incoming = tuple(
        Incoming(
            None if rng.random() < 0.2 else date(2026, 1, 1) + timedelta(rng.randrange(-900, 900)),
            abs(_quantity(rng)) + Decimal("0.001"),
        )
        for _ in range(rng.choice([0, 0, 1, 3, 70]))
    )
    overall = rng.random() < 0.3
    return Availability(
        item_id=rng.choice([1, 63, 64, 10_000_123, 2**40]),
        sku=rng.choice(["A", "SKU-ÄÖ-ü€", "BENCH-000001", "x" * 200, ""]),
        warehouse_id=None if overall else rng.choice([1, 64, 10_000_000]),
        warehouse_code="*" if overall else rng.choice(["W", "BW-00001", "Lager Süd"]),
        on_hand=_quantity(rng),
        reserved=_quantity(rng),
        pending_crm_demand=_quantity(rng),
        incoming=incoming,
        available_to_promise=_quantity(rng),
        as_of=datetime(1970, 1, 1, tzinfo=UTC)
        + timedelta(milliseconds=rng.randrange(-(10**12), 3 * 10**12))
        + timedelta(microseconds=rng.randrange(1000)),
    )


def test_availability_encoding_equals_the_catalogue_codec_byte_for_byte() -> None:
    rng = random.Random(4)
    for _ in range(2000):
        availability = _availability(rng)
        expected = CODEC.encode("availability", availability.to_avro())
        assert ENCODER.encode(availability) == expected, availability
        assert CODEC.decode(expected).record["sku"] == availability.sku


def test_zero_and_negative_zero_encode_like_fastavro() -> None:
    rng = random.Random(1)
    base = _availability(rng)
    for value in (Decimal("0.000"), Decimal("-0.000"), Decimal("0"), Decimal("5")):
        a = Availability(**{**_fields(base), "on_hand": value})
        assert ENCODER.encode(a) == CODEC.encode("availability", a.to_avro())


def test_a_quantity_beyond_the_schema_is_refused() -> None:
    base = _availability(random.Random(2))
    with pytest.raises(ValueError):
        ENCODER.encode(Availability(**{**_fields(base), "on_hand": Decimal("0.0001")}))
    with pytest.raises(ValueError):
        ENCODER.encode(Availability(**{**_fields(base), "reserved": Decimal("1e11")}))


def _fields(a: Availability) -> dict[str, object]:
    return a._asdict()


@pytest.mark.parametrize(
    ("sku", "code"),
    [("A", "W"), ("BENCH-000001", "*"), ('q"uo\\te', "tab\there\x01"), ("Süd", "€"), ("", "")],
)
def test_topic_key_is_the_documented_json(sku: str, code: str) -> None:
    assert availability_topic_key(sku, code) == topic_key(sku, code)


def test_partition_is_the_default_partitioners() -> None:
    rng = random.Random(3)
    partitioner = DefaultPartitioner()
    for length in range(0, 80):
        key = bytes(rng.randrange(256) for _ in range(length))
        assert murmur2(key) == aiokafka_murmur2(key)
        for count in (1, 3, 6):
            partitions = list(range(count))
            assert partition_for(key, partitions) == partitioner(key, partitions, partitions)


def test_availability_upsert_equals_the_generic_row_write() -> None:
    rng = random.Random(5)
    position = SourcePosition(1_700_000_000_000, 42)
    for _ in range(200):
        a = _availability(rng)
        assert availability_upsert(a, position) == AVAILABILITY_SPEC.upsert(
            availability_row(a), position
        )


def test_write_back_columns_are_the_generic_rows() -> None:
    rng = random.Random(6)
    position = SourcePosition(1_700_000_000_000, 42)
    rows = [_availability(rng) for _ in range(300)]
    columns = availability_columns(rows)
    assert len(columns) == len(AVAILABILITY_SPEC.columns) - 1  # as_of: one scalar
    for i, a in enumerate(rows):
        upsert = availability_upsert(a, position)
        *values, as_of = upsert.values
        assert as_of == a.as_of
        expected = [*upsert.key, *values]
        for c in NUMERIC_COLUMNS:  # quantities travel as their exact decimal text
            if expected[c] is not None:
                assert isinstance(expected[c], Decimal)
                expected[c] = str(expected[c])
        assert [column[i] for column in columns] == expected
    listed = UPSERT_AVAILABILITY.split("(", 2)[1].split(")")[0]
    names = [n.strip() for n in listed.split(",")]
    assert names[: len(AVAILABILITY_SPEC.columns)] == list(AVAILABILITY_SPEC.columns)


def test_topic_keys_hash_is_murmur2_of_the_key() -> None:
    rng = random.Random(7)
    skus = ["A", "SKU-ÄÖ-ü€", "BENCH-000001", "x" * 37, "", 'q"uo\\te', "BENCH-0000012"]
    codes = ["W", "*", "BW-00001", "Lager Süd", "tab\there", "", "BW-000011", "BW-0000111"]
    for limit in (1, 3, 100_000):
        keys = TopicKeys(limit=limit)
        for _ in range(500):
            sku, code = rng.choice(skus), rng.choice(codes)
            key, hashed = keys.key_and_hash(sku, code)
            assert key == availability_topic_key(sku, code)
            assert hashed == aiokafka_murmur2(key)

"""What inventory-projection emits per availability, on the per-change hot path (pure).

A replay publishes one availability record per touched key, so the generic paths cost
more than the projection itself: the schema-driven Avro writer with its validator
(~13 us a record), JSON for the Kafka key, a dict per write-back row, and
``producer.send`` computing the partition per record. Here the availability record's
fixed shape is encoded directly (:class:`AvailabilityEncoder`, checked byte for byte
against fastavro in ``tests/unit/test_inventory_emit.py``, with the same single-object
encoding header as :class:`~services.shared.avro.AvroCodec`), the topic key is built
without ``json.dumps`` when it is plain ASCII, and :func:`partition_for` picks the
partition exactly like the producer's default partitioner (murmur2 of the key), so a
key lands on the same partition whether it was sent one by one or in a batch.
"""

from __future__ import annotations

import json
import struct
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from services.inventory_projection.available_to_promise import Availability, topic_key
from services.shared.avro import SchemaEntry

#: the field names of ``availability`` v1 in order; the encoder refuses any other shape
AVAILABILITY_FIELDS = (
    "sku",
    "warehouse_code",
    "item_id",
    "warehouse_id",
    "on_hand",
    "reserved",
    "pending_crm_demand",
    "available_to_promise",
    "incoming",
    "next_incoming_date",
    "as_of",
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_ORDINAL = 719_163  # date(1970, 1, 1).toordinal()
_DECIMAL_LIMIT = 10**14  # decimal(14, 3): at most 14 digits unscaled
_SMALL = [bytes([(n << 1) if n >= 0 else ((-n << 1) - 1)]) for n in range(-64, 64)]
_CACHE_LIMIT = 50_000


def _remember(cache: dict[Any, bytes], value: Any, encoded: bytes) -> bytes:
    """Keep ``encoded`` for ``value`` in a bounded cache (dropped whole when full)."""
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()
    cache[value] = encoded
    return encoded


#: encoded longs by value: ids, dates and the as-of time repeat across a batch's records,
#: and the varint loop per id was ~3% of a replay's CPU
_LONGS: dict[int, bytes] = {}


def _long(n: int) -> bytes:
    """Avro ``long``: zig-zag, then base-128 varint (little end first)."""
    cached = _LONGS.get(n)
    return cached if cached is not None else _remember(_LONGS, n, _encode_long(n))


def _encode_long(n: int) -> bytes:
    if -64 <= n < 64:
        return _SMALL[n + 64]
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def _string(text: str) -> bytes:
    raw = text.encode()
    return _long(len(raw)) + raw


#: encoded quantities by value: stock figures repeat (a few distinct quantities per
#: item), and a dict lookup is a fraction of the encoding
_DECIMALS: dict[Decimal, bytes] = {}


def _decimal(value: Decimal) -> bytes:
    """``bytes`` with logical type ``decimal(14, 3)``: the unscaled integer, two's
    complement big-endian, sized as fastavro sizes it (from the magnitude). Equal
    values (``1`` and ``1.000``) encode alike, so the cache is keyed by value."""
    cached = _DECIMALS.get(value)
    return cached if cached is not None else _remember(_DECIMALS, value, _encode_decimal(value))


def _encode_decimal(value: Decimal) -> bytes:
    if not value:
        return b"\x02\x00"  # zero (also -0): one byte 0x00; reserved and demand mostly are
    scaled = value.scaleb(3)
    unscaled = int(scaled)
    if unscaled != scaled or not -_DECIMAL_LIMIT < unscaled < _DECIMAL_LIMIT:
        raise ValueError(f"{value} does not fit decimal(14, 3)")
    raw = unscaled.to_bytes((abs(unscaled).bit_length() + 8) // 8, "big", signed=True)
    return _long(len(raw)) + raw


def _millis(at: datetime) -> int:
    if at.tzinfo is None:
        raise ValueError(f"as_of {at!r} has no time zone")
    delta = at - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


class AvailabilityEncoder:
    """Single-object Avro encoding of :class:`Availability` in schema ``entry``."""

    def __init__(self, entry: SchemaEntry) -> None:
        names = tuple(f["name"] for f in entry.schema["fields"])
        if names != AVAILABILITY_FIELDS:
            raise ValueError(
                f"{entry.name} v{entry.version}: fields {names} are not the "
                "shape this encoder writes; update emit.py with the schema"
            )
        self.prefix = entry.prefix
        self.headers = list(entry.headers)
        self._as_of: datetime | None = None
        self._as_of_encoded = b""

    def encode(self, a: Availability) -> bytes:
        parts = [
            self.prefix,
            _string(a.sku),
            _string(a.warehouse_code),
            _long(a.item_id),
            b"\x00" if a.warehouse_id is None else b"\x02" + _long(a.warehouse_id),
            _decimal(a.on_hand),
            _decimal(a.reserved),
            _decimal(a.pending_crm_demand),
            _decimal(a.available_to_promise),
        ]
        next_date = None
        if a.incoming:
            parts.append(_long(len(a.incoming)))
            for entry in a.incoming:
                if entry.date is None:
                    parts.append(b"\x00")
                else:
                    parts.append(b"\x02" + _long(entry.date.toordinal() - _EPOCH_ORDINAL))
                    if next_date is None:
                        next_date = entry.date
                parts.append(_decimal(entry.quantity))
        parts.append(b"\x00")  # end of the array (its only block, or the empty array)
        if next_date is None:
            parts.append(b"\x00")
        else:
            parts.append(b"\x02" + _long(next_date.toordinal() - _EPOCH_ORDINAL))
        as_of = a.as_of
        if as_of is not self._as_of:  # one as-of for a whole batch, mostly
            self._as_of, self._as_of_encoded = as_of, _long(_millis(as_of))
        parts.append(self._as_of_encoded)
        return b"".join(parts)


def availability_topic_key(sku: str, warehouse_code: str) -> bytes:
    """:func:`~.available_to_promise.topic_key`, built directly for ASCII text (the common case):
    ``json.dumps`` (ASCII output, sorted keys) escapes only ``"``, ``\\`` and control
    characters there, which ``json.dumps`` of each string alone does identically."""
    if sku.isascii() and warehouse_code.isascii():
        return (
            '{"sku":'
            + json.encoder.encode_basestring_ascii(sku)
            + ',"warehouse":'
            + json.encoder.encode_basestring_ascii(warehouse_code)
            + "}"
        ).encode()
    return topic_key(sku, warehouse_code)


_M = 0x5BD1E995
_MASK = 0xFFFFFFFF
_WORDS = struct.Struct("<I")


def _mix(h: int, words: bytes) -> int:
    """murmur2's loop over whole little-endian 32-bit words (``len(words) % 4 == 0``)."""
    for (k,) in _WORDS.iter_unpack(words):
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    return h


def _finish(h: int, tail: bytes) -> int:
    """murmur2's last 0-3 bytes and final avalanche."""
    extra = len(tail)
    if extra >= 3:
        h ^= tail[2] << 16
    if extra >= 2:
        h ^= tail[1] << 8
    if extra >= 1:
        h ^= tail[0]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (``org.apache.kafka.common.utils.Utils.murmur2``), as aiokafka's
    :func:`aiokafka.partitioner.murmur2`, with fewer operations per word."""
    length = len(data)
    body = length & ~3
    return _finish(_mix((0x9747B28C ^ length) & _MASK, data[:body]), data[body:])


def partition_for(key: bytes, partitions: list[int]) -> int:
    """The partition the producer's default partitioner gives ``key`` (``partitions``
    sorted, as aiokafka passes them)."""
    return partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)]


class TopicKeys:
    """:func:`availability_topic_key` and its :func:`murmur2`, the hash computed from a
    cached mid-state of the key's sku part.

    murmur2 folds the key word by word from a seed that depends only on the length, so
    the state after the whole words of ``{"sku":"<sku>","warehouse":`` is the same for
    every key of that item with the same total length: a batch publishes an item in
    many warehouses (and its overall key), and hashing each key whole was ~5% of a
    replay's CPU. The warehouse part's bytes are cached too. Bounded: each cache is
    dropped when it reaches :attr:`limit` entries.
    """

    def __init__(self, limit: int = 100_000) -> None:
        self.limit = limit
        self._mid: dict[tuple[str, int], tuple[int, bytes]] = {}
        self._suffixes: dict[str, bytes] = {}

    def key_and_hash(self, sku: str, warehouse_code: str) -> tuple[bytes, int]:
        """The topic key and its murmur2 (equal to ``murmur2(key)``)."""
        if not (sku.isascii() and warehouse_code.isascii()):
            key = topic_key(sku, warehouse_code)
            return key, murmur2(key)
        suffix = self._suffixes.get(warehouse_code)
        if suffix is None:
            suffix = (json.encoder.encode_basestring_ascii(warehouse_code) + "}").encode()
            if len(self._suffixes) >= self.limit:
                self._suffixes.clear()
            self._suffixes[warehouse_code] = suffix
        length_key = (sku, len(suffix))
        cached = self._mid.get(length_key)
        if cached is None:
            prefix = (
                '{"sku":' + json.encoder.encode_basestring_ascii(sku) + ',"warehouse":'
            ).encode()
            body = len(prefix) & ~3
            length = len(prefix) + len(suffix)
            h = _mix((0x9747B28C ^ length) & _MASK, prefix[:body])
            if len(self._mid) >= self.limit:
                self._mid.clear()
            cached = self._mid[length_key] = (h, prefix)
        h, prefix = cached
        key = prefix + suffix
        body = len(prefix) & ~3
        end = len(key) & ~3
        return key, _finish(_mix(h, key[body:end]), key[end:])


__all__ = [
    "AvailabilityEncoder",
    "TopicKeys",
    "availability_topic_key",
    "murmur2",
    "partition_for",
]

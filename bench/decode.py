"""Change-event decoding on one core: the shared decoder's cost per event.

Not a test: it prints figures and the command that reproduces them.

    uv run python -m bench.decode
    uv run python -m bench.decode --events 200000

Every service decodes every change event it reads (JSON parse, check against the
topic's envelope schema, typed values: Decimal money, aware datetimes), so this cost
is part of every service's budget per change. The envelopes are built from the
checked-in schemas (``schemas/cdc``) with realistic values; the figures compare the
whole decode with its parts (orjson alone, the generated schema check, fastavro's
generic ``validate`` that the check replaces on the hot path).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from fastavro.validation import validate

from bench.common import reproduce_line
from services.shared.avro_check import compile_check
from services.shared.cdc_schemas import load_envelope_schemas
from services.shared.changes import ChangeDecoder

ROOT = Path(__file__).resolve().parents[1]
TOPICS = ("cdc.erp.stock_quant", "cdc.crm.sales_order_line", "cdc.crm.sales_order")

_VALUES: dict[str, Any] = {"long": 4242, "int": 20419, "string": "text", "boolean": False,
                           "double": 1.5, "float": 1.5, "bytes": b"\x00"}
_LOGICAL: dict[str, str] = {
    "decimal": "1234.500", "date": "2026-11-27", "timestamptz": "2026-11-27T01:02:03.123456Z",
    "timestamp": "2026-11-27T01:02:03.123456",
}


def _value(schema: Any, named: dict[str, Any]) -> Any:
    if isinstance(schema, str):
        return _VALUES[schema] if schema in _VALUES else _value(named[schema], named)
    if isinstance(schema, list):
        branches = [b for b in schema if b != "null"]
        return _value(branches[0], named) if branches else None
    if schema.get("ambidex.logical") in _LOGICAL and schema.get("type") == "string":
        return _LOGICAL[schema["ambidex.logical"]]
    kind = schema["type"]
    if kind == "record":
        return {f["name"]: _value(f["type"], named) for f in schema["fields"]}
    if kind == "enum":
        return schema["symbols"][0]
    return _value(kind, named)


def envelope(topic: str) -> tuple[bytes, bytes]:
    """(key, value) of a streamed insert on ``topic`` with realistic values."""
    schema = load_envelope_schemas(ROOT / "schemas" / "cdc")[topic]
    named = dict(schema.parsed["__named_schemas"])
    row_schema = named[f"{topic}.Value"]
    after = _value(row_schema, named)
    source = _value(named["io.debezium.connector.postgresql.Source"], named)
    source.update(snapshot="false", sequence='["987654","987655"]', lsn=987655,
                  schema=schema.source_schema, table=schema.table, ts_ms=1_790_000_000_000)
    document = {"before": None, "after": after, "source": source, "op": "c",
                "ts_ms": 1_790_000_000_001, "transaction": {
                    "id": "771:987650", "total_order": 1, "data_collection_order": 1}}
    key = {column: after[column] for column in schema.key_columns}
    return orjson.dumps(key), orjson.dumps(document)


def per_event_us(work: Callable[[int], object], events: int) -> float:
    work(0)
    started = time.perf_counter()
    for i in range(events):
        work(i)
    return (time.perf_counter() - started) / events * 1e6


def measure(
    decoder: ChangeDecoder, parsed: Any, topic: str, events: int
) -> tuple[float, float, float, float]:
    """Microseconds per event: whole decode, orjson, generated check, fastavro validate."""
    key, value = envelope(topic)
    check = compile_check(parsed)
    document = orjson.loads(value)
    assert check(document) and validate(document, parsed, raise_errors=False)
    return (
        per_event_us(lambda i: decoder.decode(topic, 0, i, key, value), events),
        per_event_us(lambda _: orjson.loads(value), events),
        per_event_us(lambda _: check(document), events),
        per_event_us(lambda _: validate(document, parsed, raise_errors=False), events // 4),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000, help="events per measurement")
    args = parser.parse_args()
    schemas = load_envelope_schemas(ROOT / "schemas" / "cdc")
    decoder = ChangeDecoder(schemas)
    print(f"Ambidex change decoding (one core of {os.cpu_count()}, {args.events:,} events each)")
    print(f"  {'topic':28} {'decode':>10} {'events/s':>10} {'orjson':>8} "
          f"{'check':>8} {'fastavro':>9}")
    for topic in TOPICS:
        decode, parse, fast, generic = measure(decoder, schemas[topic].parsed, topic,
                                               args.events)
        print(f"  {topic:28} {decode:8.1f}us {1e6 / decode:10,.0f} {parse:6.1f}us "
              f"{fast:6.1f}us {generic:7.1f}us")
    print("  (decode = the whole ChangeDecoder.decode; check = the generated schema check it "
          "uses; fastavro = the generic validate it replaces on the hot path)")
    print(f"reproduce: {reproduce_line('bench.decode')}")


if __name__ == "__main__":
    main()

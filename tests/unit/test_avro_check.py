"""The generated schema check is never more lenient than fastavro.

Invariant (DESIGN.md 4, bad input never slips through): whenever the fast check of
:mod:`services.shared.avro_check` accepts a document, fastavro's ``validate`` accepts it
too; and it accepts the well-formed envelopes Debezium sends (or the fast path would be
no faster). Checked on every CDC envelope schema with valid envelopes and many
mutations of them (wrong types, out-of-range numbers, missing fields, unknown enum
symbols).
"""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import pytest
from fastavro.validation import validate

from services.shared.avro_check import compile_check
from services.shared.cdc_schemas import TopicSchema, load_envelope_schemas

SCHEMAS = load_envelope_schemas(Path(__file__).resolve().parents[2] / "schemas" / "cdc")

_SAMPLES: dict[str, Any] = {
    "long": 42, "int": 7, "string": "x", "boolean": True, "double": 1.5, "float": 1.5,
    "bytes": b"\x00", "null": None,
}


def _sample(schema: Any, named: dict[str, Any]) -> Any:
    """A valid datum of ``schema`` (first non-null union branch)."""
    if isinstance(schema, str):
        if schema in _SAMPLES:
            return _SAMPLES[schema]
        return _sample(named[schema], named)
    if isinstance(schema, list):
        branches = [b for b in schema if b != "null"]
        return _sample(branches[0], named) if branches else None
    kind = schema["type"]
    if kind == "record":
        named[schema["name"]] = schema
        return {f["name"]: _sample(f["type"], named) for f in schema["fields"]}
    if kind == "enum":
        return schema["symbols"][0]
    if kind == "array":
        return [_sample(schema["items"], named)]
    if kind == "map":
        return {"k": _sample(schema["values"], named)}
    return _sample(kind, named)


def _envelope(topic: TopicSchema) -> dict[str, Any]:
    named: dict[str, Any] = dict(topic.parsed["__named_schemas"])
    return dict(_sample(topic.parsed, named))


_MUTANTS: list[Any] = [
    None, "text", 1, -(2**63) - 1, 2**63, 2**31, 1.5, True, [], {}, b"x", "zz",
]


def _paths(datum: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(datum, dict):
        for key, value in datum.items():
            found.extend(_paths(value, (*prefix, key)))
    return found


def _set(datum: dict[str, Any], path: tuple[Any, ...], value: Any, *, delete: bool) -> None:
    for key in path[:-1]:
        datum = datum[key]
    if delete:
        datum.pop(path[-1], None)
    else:
        datum[path[-1]] = value


@pytest.mark.parametrize("topic", sorted(SCHEMAS), ids=str)
def test_fast_check_accepts_valid_envelopes_and_never_more_than_fastavro(topic: str) -> None:
    schema = SCHEMAS[topic]
    check = compile_check(schema.parsed)
    valid = _envelope(schema)
    assert validate(valid, schema.parsed, raise_errors=False)
    assert check(valid)
    rng = random.Random(topic)
    paths = _paths(valid)
    mutants = 0
    for path in paths:
        for value in [*_MUTANTS, "__delete__"]:
            mutant = copy.deepcopy(valid)
            _set(mutant, path, value, delete=value == "__delete__")
            if check(mutant):
                assert validate(mutant, schema.parsed, raise_errors=False), (path, value)
            mutants += 1
    for _ in range(200):  # a few mutations at once
        mutant = copy.deepcopy(valid)
        for path in rng.sample(paths, min(3, len(paths))):
            try:
                _set(mutant, path, rng.choice(_MUTANTS), delete=False)
            except (KeyError, TypeError):
                continue
        if check(mutant):
            assert validate(mutant, schema.parsed, raise_errors=False)
    assert mutants > 50


def test_refuses_out_of_range_numbers_and_unknown_symbols() -> None:
    schema = {
        "type": "record", "name": "r",
        "fields": [
            {"name": "i", "type": "int"},
            {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["a", "b"]}},
            {"name": "n", "type": ["null", "long"]},
        ],
    }
    check = compile_check(schema, {})
    assert check({"i": 1, "e": "a", "n": None})
    assert check({"i": 1, "e": "b", "n": 2**40})
    assert not check({"i": 2**31, "e": "a", "n": None})
    assert not check({"i": 1, "e": "c", "n": None})
    assert not check({"i": True, "e": "a", "n": None})
    assert not check({"i": 1, "e": "a", "n": 2**63})
    assert not check({"e": "a", "n": None})
    assert not check([1, "a", None])

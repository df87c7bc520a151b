"""Schema evolution: whether a new version of a published schema is FULL compatible.

Each ``v<N+1>.avsc`` of a published record must be both backward and forward
compatible with ``v<N>`` (:func:`check_compatible`; the lint's schema test runs it).
"""

from __future__ import annotations

import io
import random
from collections.abc import Mapping
from typing import Any

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.utils import generate_many

from services.shared.avro_validation import type_label

_PROMOTIONS: dict[str, frozenset[str]] = {
    # writer type -> reader types that can read it (Avro spec, "Schema Resolution")
    "int": frozenset({"long", "float", "double"}),
    "long": frozenset({"float", "double"}),
    "float": frozenset({"double"}),
    "string": frozenset({"bytes"}),
    # the spec also lets a string reader read bytes, but arbitrary bytes are not UTF-8:
    # treated as a break so that a bytes->string change is never "compatible" by luck
}
_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})


def check_compatible(
    old: Mapping[str, Any], new: Mapping[str, Any], *, samples: int = 50
) -> list[str]:
    """Problems that stop ``new`` being FULL (backward and forward) compatible with ``old``.

    Empty means: a reader with ``new`` reads data written with ``old`` (backward) and a
    reader with ``old`` reads data written with ``new`` (forward). Two checks:

    * structural, by the Avro schema resolution rules: same record names, every field
      a reader lacks in the writer has a default (so added fields need defaults and
      only fields with defaults may be removed), types equal or an allowed promotion
      (int->long->float->double, string->bytes) in the direction of reading, enum
      symbols known to the reader or a reader enum default, same fixed sizes, unions
      covering each other; and logical types (decimal precision/scale) unchanged;
    * empirical, if the structure is sound: ``samples`` random records generated for
      each schema are written with it and read back through fastavro's resolution
      with the other as reader.
    """
    problems: list[str] = []
    try:
        old_parsed: Any = parse_schema(dict(old))
        new_parsed: Any = parse_schema(dict(new))
    except Exception as exc:
        return [f"schema does not parse: {exc}"]
    old_named: dict[str, Any] = {}
    new_named: dict[str, Any] = {}
    _collect_named(old_parsed, old_named)
    _collect_named(new_parsed, new_named)
    for label, reader, writer, rn, wn in (
        ("backward (new reads old)", new_parsed, old_parsed, new_named, old_named),
        ("forward (old reads new)", old_parsed, new_parsed, old_named, new_named),
    ):
        for problem in _can_read(reader, writer, rn, wn, "", set()):
            problems.append(f"{label}: {problem}")
    if problems or samples <= 0:
        return problems
    for label, writer, reader in (
        ("backward (new reads old)", old_parsed, new_parsed),
        ("forward (old reads new)", new_parsed, old_parsed),
    ):
        failure = _sample_round_trip(writer, reader, samples)
        if failure is not None:
            problems.append(f"{label}: {failure}")
    return problems


def _sample_round_trip(writer: Any, reader: Any, samples: int) -> str | None:
    state = random.getstate()
    random.seed(0x0A3B1DE)  # reproducible samples; restore the caller's generator after
    try:
        records = list(generate_many(writer, samples))
    finally:
        random.setstate(state)
    for i, record in enumerate(records):
        buf = io.BytesIO()
        try:
            schemaless_writer(buf, writer, record)
            buf.seek(0)
            schemaless_reader(buf, writer, reader)
        except Exception as exc:
            return f"sample record {i} fails schema resolution: {exc}"
    return None


def _collect_named(schema: Any, named: dict[str, Any]) -> None:
    if isinstance(schema, list):
        for branch in schema:
            _collect_named(branch, named)
    elif isinstance(schema, dict):
        kind = schema.get("type")
        if kind in ("record", "error", "enum", "fixed"):
            named[schema["name"]] = schema
        if kind in ("record", "error"):
            for f in schema["fields"]:
                _collect_named(f["type"], named)
        elif kind == "array":
            _collect_named(schema["items"], named)
        elif kind == "map":
            _collect_named(schema["values"], named)


def _resolve(schema: Any, named: Mapping[str, Any]) -> Any:
    if isinstance(schema, str) and schema not in _PRIMITIVES:
        return named[schema]
    if isinstance(schema, dict) and schema.get("type") in _PRIMITIVES and len(schema) == 1:
        return schema["type"]
    return schema


def _kind(schema: Any) -> str:
    if isinstance(schema, str):
        return schema
    if isinstance(schema, list):
        return "union"
    return str(schema["type"])


def _logical(schema: Any) -> tuple[Any, ...] | None:
    if not isinstance(schema, dict) or "logicalType" not in schema:
        return None
    lt = schema["logicalType"]
    if lt == "decimal":
        return (lt, schema.get("precision"), schema.get("scale", 0))
    return (lt,)


def _can_read(
    reader: Any,
    writer: Any,
    rnamed: Mapping[str, Any],
    wnamed: Mapping[str, Any],
    path: str,
    seen: set[tuple[str, str]],
) -> list[str]:
    """Why a reader with ``reader`` cannot read data written with ``writer`` (if so)."""
    reader = _resolve(reader, rnamed)
    writer = _resolve(writer, wnamed)
    where = path or "<root>"
    rk, wk = _kind(reader), _kind(writer)

    if wk == "union":
        problems: list[str] = []
        for branch in writer:
            problems.extend(_can_read(reader, branch, rnamed, wnamed, path, seen))
        return problems
    if rk == "union":
        for branch in reader:
            if not _can_read(branch, writer, rnamed, wnamed, path, seen):
                return []
        return [f"{where}: writer type {type_label(writer)} matches no branch of reader union"]

    if rk != wk and wk not in _PRIMITIVES:
        return [f"{where}: written as {wk}, cannot be read as {rk}"]
    if rk != wk:
        if rk in _PROMOTIONS.get(wk, frozenset()):
            return _logical_problems(reader, writer, where)
        return [f"{where}: written as {wk}, cannot be read as {rk} (not an Avro promotion)"]
    if wk in _PRIMITIVES:
        return _logical_problems(reader, writer, where)

    if wk in ("record", "error", "enum", "fixed"):
        rname, wname = reader["name"], writer["name"]
        aliases = {_alias_name(a, rname) for a in reader.get("aliases", [])}
        if rname != wname and wname not in aliases:
            return [f"{where}: named type {wname} renamed to {rname} without an alias"]
    if wk == "fixed":
        if reader["size"] != writer["size"]:
            return [f"{where}: fixed size changed from {writer['size']} to {reader['size']}"]
        return _logical_problems(reader, writer, where)
    if wk == "enum":
        missing = [s for s in writer["symbols"] if s not in reader["symbols"]]
        if missing and "default" not in reader:
            return [
                f"{where}: enum symbol(s) {', '.join(missing)} unknown to the reader, "
                f"which has no enum default"
            ]
        return []
    if wk == "array":
        return _can_read(reader["items"], writer["items"], rnamed, wnamed, f"{path}[]", seen)
    if wk == "map":
        return _can_read(reader["values"], writer["values"], rnamed, wnamed, f"{path}{{}}", seen)
    # records
    pair = (reader["name"], writer["name"])
    if pair in seen:  # recursive type already being checked
        return []
    seen = seen | {pair}
    problems = []
    wfields = {f["name"]: f for f in writer["fields"]}  # aliases count on the reader side only
    prefix = f"{path}." if path else ""
    for rf in reader["fields"]:
        names = [rf["name"], *rf.get("aliases", [])]
        wf = next((wfields[n] for n in names if n in wfields), None)
        if wf is None:
            if "default" not in rf:
                problems.append(
                    f"{prefix}{rf['name']}: the reader needs this field, the writer lacks it "
                    f"and it has no default (a field added, or removed, without a default)"
                )
            continue
        problems.extend(
            _can_read(rf["type"], wf["type"], rnamed, wnamed, prefix + rf["name"], seen)
        )
    return problems


def _alias_name(alias: str, full_name: str) -> str:
    if "." in alias or "." not in full_name:
        return alias
    return full_name.rsplit(".", 1)[0] + "." + alias


def _logical_problems(reader: Any, writer: Any, where: str) -> list[str]:
    rl, wl = _logical(reader), _logical(writer)
    if rl == wl:
        return []
    if rl and wl and rl[0] == wl[0] == "decimal":
        return [
            f"{where}: decimal changed from ({wl[1]},{wl[2]}) to ({rl[1]},{rl[2]}); "
            f"precision and scale are part of the value's meaning"
        ]
    return [
        f"{where}: logical type changed from {wl[0] if wl else 'none'} to {rl[0] if rl else 'none'}"
    ]

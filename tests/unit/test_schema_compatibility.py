"""Schema catalogue health and FULL compatibility between consecutive versions.

Invariants protected here:

* Every schema file under ``schemas/published/*/`` and ``schemas/ambidex/`` parses,
  loads into the catalogue, and versions of one schema are numbered 1..N without gaps.
* Every ``v<N+1>`` is BACKWARD compatible with ``v<N>`` (a consumer upgraded to the new
  schema reads data still written with the old one) and FORWARD compatible (a consumer
  not yet upgraded reads data written with the new one), so producers and consumers
  can be deployed in any order.
* The checker itself (``check_compatible``) flags each kind of breaking change, shown on
  deliberately incompatible pairs, and passes a legitimate evolution.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from services.shared.avro import DEFAULT_SCHEMA_ROOT, SchemaCatalogue
from services.shared.avro_compat import check_compatible

HERE = Path(__file__).parent
FIXTURES = HERE / "fixtures"
ROOT = DEFAULT_SCHEMA_ROOT

SCHEMA_FILES = sorted(
    [
        *DEFAULT_SCHEMA_ROOT.glob("published/*/*.avsc"),
        *DEFAULT_SCHEMA_ROOT.glob("ambidex/*.avsc"),
        *DEFAULT_SCHEMA_ROOT.glob("ambidex/*/*.avsc"),
    ]
)


def _load(path: Path) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return schema


def _consecutive_problems(catalogue: SchemaCatalogue) -> dict[str, list[str]]:
    problems: dict[str, list[str]] = {}
    for key in catalogue.names():
        versions = catalogue.versions(key)
        numbers = [v.version for v in versions]
        if numbers != list(range(1, len(numbers) + 1)):
            problems[key] = [f"versions {numbers} are not 1..{len(numbers)}"]
            continue
        for old, new in itertools.pairwise(versions):
            found = check_compatible(old.schema, new.schema)
            if found:
                problems[f"{key} v{old.version}->v{new.version}"] = found
    return problems


def test_there_are_schemas_to_check() -> None:
    assert any(p.parent.name == "dead_letter" for p in SCHEMA_FILES)


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_schema_file_parses(path: Path) -> None:
    schema = _load(path)
    assert schema.get("type") == "record", "catalogue schemas are records"
    # a schema is trivially compatible with itself: also exercises the sample generator
    assert check_compatible(schema, schema) == []


def test_project_catalogue_loads() -> None:
    catalogue = SchemaCatalogue.load()
    assert len(catalogue) == len(SCHEMA_FILES)


def test_every_project_version_is_full_compatible_with_the_previous() -> None:
    assert _consecutive_problems(SchemaCatalogue.load()) == {}


# --------------------------------------------------------------------------- the checker


def test_checker_passes_a_legitimate_evolution() -> None:
    """Fixture widget v1 -> v2: optional fields with defaults, enum symbol with enum default."""
    assert _consecutive_problems(SchemaCatalogue.load(FIXTURES / "schemas")) == {}


def test_checker_flags_the_incompatible_fixture() -> None:
    v1 = _load(FIXTURES / "schemas" / "published" / "widget" / "v1.avsc")
    bad = _load(FIXTURES / "widget_v2_incompatible.avsc")
    problems = check_compatible(v1, bad)
    text = "\n".join(problems)
    # price bytes/decimal -> double, both ways
    assert "backward (new reads old): price: written as bytes, cannot be read as double" in text
    assert "forward (old reads new): price: written as double, cannot be read as bytes" in text
    # stock added without a default: new readers cannot read old data
    assert any(p.startswith("backward") and "stock" in p for p in problems)
    # currency removed although it had no default: old readers cannot read new data
    assert any(p.startswith("forward") and "currency" in p for p in problems)
    assert len(problems) == 4


def _record(*fields: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "record", "name": "t.R", "fields": list(fields), **extra}


def _dec(precision: int, scale: int) -> dict[str, Any]:
    return {"type": "bytes", "logicalType": "decimal", "precision": precision, "scale": scale}


ID = {"name": "id", "type": "long"}


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        pytest.param(
            _record(ID),
            _record(ID, {"name": "x", "type": "string"}),
            ["backward (new reads old): x:"],
            id="field added without default",
        ),
        pytest.param(
            _record(ID, {"name": "x", "type": "string"}),
            _record(ID),
            ["forward (old reads new): x:"],
            id="field without default removed",
        ),
        pytest.param(
            _record({"name": "id", "type": "int"}),
            _record({"name": "id", "type": "long"}),
            ["forward (old reads new): id: written as long, cannot be read as int"],
            id="int to long is backward only",
        ),
        pytest.param(
            _record({"name": "id", "type": "string"}),
            _record({"name": "id", "type": "long"}),
            ["backward", "forward"],
            id="type change",
        ),
        pytest.param(
            _record({"name": "amount", "type": _dec(18, 2)}),
            _record({"name": "amount", "type": _dec(18, 4)}),
            ["decimal changed from (18,2) to (18,4)"],
            id="decimal scale change",
        ),
        pytest.param(
            _record({"name": "s", "type": {"type": "enum", "name": "t.S", "symbols": ["A"]}}),
            _record({"name": "s", "type": {"type": "enum", "name": "t.S", "symbols": ["A", "B"]}}),
            ["forward (old reads new): s: enum symbol(s) B unknown"],
            id="enum symbol added without enum default",
        ),
        pytest.param(
            _record({"name": "x", "type": ["null", "string"], "default": None}),
            _record({"name": "x", "type": "string", "default": ""}),
            ["backward (new reads old): x: written as null, cannot be read as string"],
            id="nullable made required",
        ),
        pytest.param(
            _record(ID),
            {"type": "record", "name": "t.Renamed", "fields": [ID]},
            ["renamed"],
            id="record renamed without alias",
        ),
        pytest.param(
            _record({"name": "f", "type": {"type": "fixed", "name": "t.F", "size": 4}}),
            _record({"name": "f", "type": {"type": "fixed", "name": "t.F", "size": 8}}),
            ["fixed size changed"],
            id="fixed size",
        ),
        pytest.param(
            _record({"name": "s", "type": "string"}),
            _record({"name": "s", "type": "bytes"}),
            ["forward (old reads new): s: written as bytes, cannot be read as string"],
            id="string to bytes is backward only",
        ),
        pytest.param(
            _record({"name": "old_name", "type": "long"}),
            _record({"name": "new_name", "type": "long", "aliases": ["old_name"]}),
            ["forward (old reads new): old_name:"],
            id="field renamed with alias is backward only",
        ),
        pytest.param(
            _record({"name": "xs", "type": {"type": "array", "items": "int"}}),
            _record({"name": "xs", "type": {"type": "array", "items": "string"}}),
            ["xs[]"],
            id="array item type",
        ),
    ],
)
def test_checker_flags_breaking_changes(
    old: dict[str, Any], new: dict[str, Any], expected: list[str]
) -> None:
    problems = check_compatible(old, new)
    assert problems, "an incompatible pair was accepted"
    text = "\n".join(problems)
    for fragment in expected:
        assert fragment in text


@pytest.mark.parametrize(
    ("old", "new"),
    [
        pytest.param(
            _record(ID),
            _record(ID, {"name": "note", "type": ["null", "string"], "default": None}),
            id="optional field added",
        ),
        pytest.param(
            _record(ID, {"name": "note", "type": ["null", "string"], "default": None}),
            _record(ID),
            id="optional field removed",
        ),
        pytest.param(
            _record(
                ID, {"name": "amount", "type": _dec(18, 2)}, {"name": "currency", "type": "string"}
            ),
            _record(
                ID,
                {"name": "amount", "type": _dec(18, 2)},
                {"name": "currency", "type": "string"},
                {"name": "tax", "type": ["null", _dec(18, 2)], "default": None},
            ),
            id="money field added as optional",
        ),
        pytest.param(
            _record({"name": "when", "type": "long"}, {"name": "x", "type": "float"}),
            _record(
                {"name": "when", "type": "long"}, {"name": "x", "type": "float"}, doc="docs only"
            ),
            id="documentation only",
        ),
    ],
)
def test_checker_accepts_compatible_changes(old: dict[str, Any], new: dict[str, Any]) -> None:
    assert check_compatible(old, new) == []


def test_unparseable_schema_is_reported_not_raised() -> None:
    problems = check_compatible(_record(ID), {"type": "record", "name": "t.R", "fields": [{}]})
    assert problems and "does not parse" in problems[0]


def test_sample_resolution_catches_what_the_structure_check_would_miss(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The empirical layer stands on its own: with the structural rules switched off,
    writing generated records and resolving them still finds a field added without default."""
    import services.shared.avro_compat as avro

    monkeypatch.setattr(avro, "_can_read", lambda *args: [])
    problems = check_compatible(_record(ID), _record(ID, {"name": "x", "type": "string"}))
    assert problems
    assert problems[0].startswith("backward (new reads old): sample record")

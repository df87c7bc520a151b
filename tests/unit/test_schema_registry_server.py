"""The local stack's registry keeps Confluent's rules: one id per canonical schema
across subjects, the same schema registered again keeps its id, compatibility is judged
against the subject's latest version (all of them for ``_TRANSITIVE``) at the subject's
level, and everything survives a restart (ids are in published values)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ambidex.schema_registry_server import RegistryState

V1: dict[str, Any] = {"type": "record", "name": "R", "namespace": "t",
                      "fields": [{"name": "a", "type": "long"}]}
V2 = {**V1, "fields": [*V1["fields"], {"name": "b", "type": "string", "default": ""}]}
REQUIRED_B = {**V1, "fields": [*V1["fields"], {"name": "b", "type": "string"}]}


def text(schema: dict[str, Any], **dumps: Any) -> str:
    return json.dumps(schema, **dumps)


def test_ids_are_per_schema_and_survive_a_restart(tmp_path: Path) -> None:
    state = RegistryState(tmp_path / "r.json")
    first = state.register("a-value", text(V1))
    assert state.register("a-value", text(V1, indent=2)) == first  # same canonical form
    assert state.register("b-value", text(V1)) == first  # one id across subjects
    second = state.register("a-value", text(V2))
    assert second != first
    again = RegistryState(tmp_path / "r.json")
    assert again.subjects == {"a-value": [first, second], "b-value": [first]}
    assert json.loads(again.schemas[second]) == V2


def test_full_refuses_a_required_field_backward_allows_only_one_direction(
    tmp_path: Path,
) -> None:
    state = RegistryState(tmp_path / "r.json")
    state.register("s", text(V1))
    state.config["s"] = "FULL"
    assert state.problems("s", text(V2)) == []
    assert state.problems("s", text(REQUIRED_B))  # new reader cannot read old data
    state.config["s"] = "FORWARD"
    assert state.problems("s", text(REQUIRED_B)) == []  # old readers skip the new field
    state.config["s"] = "NONE"
    assert state.problems("s", text({**V1, "fields": [{"name": "a", "type": "string"}]})) == []


def test_transitive_checks_every_version(tmp_path: Path) -> None:
    state = RegistryState(tmp_path / "r.json")
    state.register("s", text(REQUIRED_B))
    state.register("s", text(V1))  # default BACKWARD: a reader without b reads it
    v3 = {**V1, "fields": [*V1["fields"], {"name": "b", "type": "long", "default": 0}]}
    state.config["s"] = "BACKWARD"
    assert state.problems("s", text(v3)) == []  # against V1 only
    state.config["s"] = "BACKWARD_TRANSITIVE"
    assert state.problems("s", text(v3))  # b was a string in the first version

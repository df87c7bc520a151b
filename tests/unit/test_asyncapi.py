"""docs/asyncapi.yaml tells downstream teams the truth: it is what deploy/topics.yaml and
schemas/ generate now, it is a valid AsyncAPI 3.0.0 document (checked against the
specification's own JSON schema, shipped in tests/schemas/ because CI has no internet),
every reference in it resolves, and each published topic names a real producer."""

from __future__ import annotations

import copy
import json
from importlib.metadata import version
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from ambidex.asyncapi import DOCUMENT, build_document, render
from ambidex.topics import load_topic_declaration
from services.registry import METRICS_PORTS
from services.shared.avro import SchemaCatalogue

SPEC_SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "asyncapi-3.0.0.json"


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(json.loads(SPEC_SCHEMA.read_text()))


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(DOCUMENT.read_text())
    return loaded


def test_the_document_is_what_the_declaration_and_schemas_generate() -> None:
    assert DOCUMENT.read_text() == render(version("ambidex")), (
        "docs/asyncapi.yaml is stale: run `bin/ambidex asyncapi render`"
    )


def test_the_document_is_valid_asyncapi_3(
    validator: jsonschema.Draft7Validator, document: dict[str, Any]
) -> None:
    assert [error.message for error in validator.iter_errors(document)] == []


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("channels", "ambidex.availability", "bindings", "kafka", "partitions"), "six"),
        (("operations", "order-sync.publishes.ambidex.order-identity", "action"), "emit"),
        (("components", "messages", "ambidex.inventory.Availability", "payload", "schema",
          "type"), 42),
    ],
)
def test_a_broken_field_fails_validation(
    validator: jsonschema.Draft7Validator,
    document: dict[str, Any],
    path: tuple[str, ...],
    value: object,
) -> None:
    broken = copy.deepcopy(document)
    node = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert list(validator.iter_errors(broken)), f"{'/'.join(path)} = {value!r} passed"


def test_every_reference_resolves(document: dict[str, Any]) -> None:
    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
            return own + [r for value in node.values() for r in refs(value)]
        if isinstance(node, list):
            return [r for value in node for r in refs(value)]
        return []

    for ref in refs(document):
        node: Any = document
        for part in ref.removeprefix("#/").split("/"):
            assert isinstance(node, dict) and part in node, f"{ref} does not resolve"
            node = node[part]


def test_each_published_topic_names_a_known_producer_and_schema() -> None:
    specs = [spec for spec in load_topic_declaration() if spec.publication is not None]
    assert {spec.name for spec in specs} >= {
        "ambidex.order-identity", "ambidex.order-status", "ambidex.availability",
        "ambidex.order-conflicts", "ambidex.shortages",
    }
    for spec in specs:
        assert spec.publication is not None
        assert spec.publication.producer in METRICS_PORTS, spec.name
    document = build_document(specs, SchemaCatalogue.load(), "test")
    assert set(document["channels"]) == {spec.name for spec in specs}

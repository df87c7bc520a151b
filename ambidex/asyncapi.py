"""``docs/asyncapi.yaml``: every published topic as an AsyncAPI 3.0 document.

Generated, never edited: the topics, their partitions, replication and configuration
come from ``deploy/topics.yaml`` (each published topic names its producer, value schema
and key there), the payloads from ``schemas/`` (the newest version of each schema).
``ambidex asyncapi render`` writes it, ``--check`` fails when it is stale (a unit test
runs that check, and validates the document against the AsyncAPI 3.0.0 JSON schema).

Per topic: a channel (address = topic name, Kafka channel binding with partitions,
replicas and the topic configuration), one message (Avro payload, the key as the
message binding's description), and a ``send`` operation of the producing service.
The wire formats of the value (the registry wire format: 0x00, schema id, body; or
Avro single-object encoding: marker, fingerprint, body) are said in each message's
description and Kafka binding, the registry in the server's binding, and in
``docs/wire-format.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from ambidex.topics import TopicSpec, load_topic_declaration
from services.shared.avro import SchemaCatalogue, SchemaEntry

REPO = Path(__file__).resolve().parent.parent
DOCUMENT = REPO / "docs" / "asyncapi.yaml"
AVRO_FORMAT = "application/vnd.apache.avro;version=1.9.0"
ENCODING = (
    "Value: one Avro datum, in either of two wire formats (docs/wire-format.md), told "
    "apart by the first byte. Registry wire format (the default when a schema registry "
    "is configured; what Kafka Connect's AvroConverter, ksqlDB, Flink's avro-confluent "
    "and Kafka UIs read): 0x00, the 4-byte big-endian schema id of the writer schema in "
    "the registry (subject <topic>-value, compatibility FULL), the binary body. Avro "
    "single-object encoding (AMBIDEX_WIRE_FORMAT=single-object): 0xC3 0x01, the 8-byte "
    "CRC-64-AVRO fingerprint of the writer schema, the binary body, decodable from the "
    "schema alone. Headers ambidex.schema and ambidex.schema.version name the schema."
)
REGISTRY_URL = "http://schema-registry:8080/apis/ccompat/v7"
_TOPIC_CONFIG: dict[str, Callable[[str], Any]] = {  # Kafka binding 0.5.0: keys it knows
    "cleanup.policy": lambda v: v.split(","),
    "retention.ms": int,
    "retention.bytes": int,
    "delete.retention.ms": int,
    "max.message.bytes": int,
}


def _identifier(name: str) -> str:
    """A component key AsyncAPI accepts (``^[\\w\\d.\\-_]+$``)."""
    return name.replace("/", "_")


def _channel(spec: TopicSpec, message_id: str) -> dict[str, Any]:
    assert spec.publication is not None
    configuration = {
        key: convert(spec.config[key])
        for key, convert in _TOPIC_CONFIG.items()
        if key in spec.config
    }
    return {
        "address": spec.name,
        "title": spec.name,
        "description": (
            f"Produced by {spec.publication.producer} (topic group {spec.group}). "
            f"Key: {spec.publication.key}."
        ),
        "messages": {message_id: {"$ref": f"#/components/messages/{message_id}"}},
        "bindings": {
            "kafka": {
                "bindingVersion": "0.5.0",
                "topic": spec.name,
                "partitions": spec.partitions,
                "replicas": spec.replication_factor,
                "topicConfiguration": configuration,
            }
        },
    }


def _message(spec: TopicSpec, entry: SchemaEntry) -> dict[str, Any]:
    assert spec.publication is not None
    return {
        "name": entry.name,
        "title": f"{entry.name} v{entry.version}",
        "summary": str(entry.schema.get("doc", ""))[:300],
        "description": ENCODING,
        "contentType": "application/octet-stream",
        "payload": {"schemaFormat": AVRO_FORMAT, "schema": dict(entry.schema)},
        "bindings": {
            "kafka": {
                "bindingVersion": "0.5.0",
                "key": {"type": "string", "description": spec.publication.key},
                # registry wire format: the schema id opens the payload (Confluent's
                # framing), looked up under the topic's subject
                "schemaIdLocation": "payload",
                "schemaIdPayloadEncoding": "confluent",
                "schemaLookupStrategy": "TopicIdStrategy",
            }
        },
    }


def build_document(
    specs: Iterable[TopicSpec], catalogue: SchemaCatalogue, version: str
) -> dict[str, Any]:
    """The AsyncAPI document of every topic with a publication."""
    by_name = {entry.name: entry for entry in catalogue}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for spec in specs:
        if spec.publication is None:
            continue
        newest = max(
            (e for e in catalogue if e.name == spec.publication.schema),
            key=lambda e: e.version,
            default=None,
        )
        if newest is None:
            raise LookupError(
                f"{spec.name}: schema {spec.publication.schema!r} is not in schemas/ "
                f"(known: {', '.join(sorted(by_name))})"
            )
        channel_id = _identifier(spec.name)
        message_id = _identifier(newest.name)  # one message per schema, shared by topics
        messages.setdefault(message_id, _message(spec, newest))
        channels[channel_id] = _channel(spec, message_id)
        operations[_identifier(f"{spec.publication.producer}.publishes.{spec.name}")] = {
            "action": "send",
            "title": f"{spec.publication.producer} publishes {spec.name}",
            "channel": {"$ref": f"#/channels/{channel_id}"},
            "messages": [{"$ref": f"#/channels/{channel_id}/messages/{message_id}"}],
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Ambidex published topics",
            "version": version,
            "description": (
                "What Ambidex publishes for downstream consumers: state topics "
                "(compacted, the last record per key is current) and alert topics. "
                "Generated from deploy/topics.yaml and schemas/ by "
                "`ambidex asyncapi render`; do not edit."
            ),
        },
        "defaultContentType": "application/octet-stream",
        "servers": {
            "kafka": {
                "host": "kafka-bootstrap:9092",
                "protocol": "kafka",
                "description": (
                    "Your cluster's bootstrap servers (AMBIDEX_KAFKA_BOOTSTRAP); the schema "
                    "registry the values' ids refer to is AMBIDEX_SCHEMA_REGISTRY_URL."
                ),
                "bindings": {
                    "kafka": {
                        "bindingVersion": "0.5.0",
                        "schemaRegistryUrl": REGISTRY_URL,
                        "schemaRegistryVendor": "apicurio",
                    }
                },
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    }


def render(version: str) -> str:
    document = build_document(load_topic_declaration(), SchemaCatalogue.load(), version)
    header = "# Generated by `ambidex asyncapi render` from deploy/topics.yaml and schemas/.\n"
    return header + yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)

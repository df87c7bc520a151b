"""The topic declaration (`deploy/topics.yaml`) and applying it to a cluster.

The declaration is the single source of truth for topic names, partition counts and
configs; the local stack, the tests and the Kubernetes manifests all read it here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from services.shared.kafka import Kafka, client_options

DEFAULT_DECLARATION = Path(__file__).resolve().parent.parent / "deploy" / "topics.yaml"


@dataclass(frozen=True)
class Publication:
    """What a published topic carries, for the people and tools that consume it
    (``docs/asyncapi.yaml`` is generated from it): who produces it, the Avro full name
    of its value schema (``schemas/``) and what its key is."""

    producer: str
    schema: str
    key: str


@dataclass(frozen=True)
class TopicSpec:
    name: str
    group: str
    partitions: int
    replication_factor: int
    config: Mapping[str, str] = field(default_factory=dict)
    #: set for a topic consumers outside Ambidex read (``producer``/``schema``/``key``)
    publication: Publication | None = None


class TopicDeclarationError(ValueError):
    """The declaration file is not well formed."""


def cdc_topic(database: str, table: str) -> str:
    """Topic of a captured table: the Debezium prefix with the schema name dropped."""
    return f"cdc.{database}.{table}"


def load_topic_declaration(path: Path = DEFAULT_DECLARATION) -> list[TopicSpec]:
    document = yaml.safe_load(path.read_text())
    if not isinstance(document, dict) or not isinstance(document.get("groups"), dict):
        raise TopicDeclarationError(f"{path}: expected a mapping with a 'groups' key")
    specs: list[TopicSpec] = []
    for group_name, group in document["groups"].items():
        specs.extend(_group_topics(path, group_name, group))
    names = [spec.name for spec in specs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise TopicDeclarationError(f"{path}: topics declared twice: {', '.join(duplicates)}")
    return specs


def _group_topics(path: Path, group_name: str, group: Any) -> Iterable[TopicSpec]:
    if not isinstance(group, dict):
        raise TopicDeclarationError(f"{path}: group {group_name!r} must be a mapping")
    try:
        partitions = int(group["partitions"])
        replication = int(group.get("replication_factor", 1))
    except (KeyError, TypeError, ValueError) as error:
        raise TopicDeclarationError(
            f"{path}: group {group_name!r} needs an integer 'partitions'"
        ) from error
    config = {str(k): str(v) for k, v in (group.get("config") or {}).items()}
    entries: list[tuple[str, Publication | None]] = [
        _topic_entry(path, group_name, entry) for entry in group.get("topics") or []
    ]
    for database, tables in (group.get("databases") or {}).items():
        entries.extend((cdc_topic(str(database), str(table)), None) for table in tables)
    if not entries:
        raise TopicDeclarationError(f"{path}: group {group_name!r} declares no topics")
    for name, publication in entries:
        yield TopicSpec(name, group_name, partitions, replication, config, publication)


def _topic_entry(path: Path, group_name: str, entry: Any) -> tuple[str, Publication | None]:
    """A topic is its name, or ``{name, producer, schema, key}`` when it is published."""
    if not isinstance(entry, dict):
        return str(entry), None
    try:
        return str(entry["name"]), Publication(
            str(entry["producer"]), str(entry["schema"]), str(entry["key"])
        )
    except KeyError as missing:
        raise TopicDeclarationError(
            f"{path}: a published topic of group {group_name!r} needs name, producer, "
            f"schema and key (missing {missing})"
        ) from None


def captured_tables(specs: Iterable[TopicSpec], database: str) -> list[str]:
    """The tables of one source database that the declaration expects Debezium to capture."""
    prefix = f"cdc.{database}."
    return [
        spec.name.removeprefix(prefix)
        for spec in specs
        if spec.group == "cdc" and spec.name.startswith(prefix)
    ]


@dataclass(frozen=True)
class TopicReport:
    created: list[str]
    existing: list[str]
    drift: list[str]


async def apply_topics(
    kafka: Kafka, specs: Iterable[TopicSpec], *, max_replication: int | None = None
) -> TopicReport:
    """Create every declared topic that is missing; report (not fix) partition drift.

    ``kafka``: a bootstrap string (the local stack's plain listener) or a connection
    with its SASL/SSL settings (docker-compose's setup job authenticates).

    Partition counts are only ever raised by hand: raising them silently would move
    keys to other partitions and break per-key ordering for running consumers.
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    specs = list(specs)
    admin = AIOKafkaAdminClient(**client_options(kafka), client_id="ambidex-topics")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [spec for spec in specs if spec.name not in existing]
        if missing:
            await admin.create_topics(
                [
                    NewTopic(
                        spec.name,
                        spec.partitions,
                        min(spec.replication_factor, max_replication or spec.replication_factor),
                        topic_configs=dict(spec.config),
                    )
                    for spec in missing
                ]
            )
        drift: list[str] = []
        present = [spec for spec in specs if spec.name in existing]
        if present:
            described = await admin.describe_topics([spec.name for spec in present])
            partitions_by_name = {topic["topic"]: len(topic["partitions"]) for topic in described}
            for spec in present:
                actual = partitions_by_name.get(spec.name)
                if actual is not None and actual != spec.partitions:
                    drift.append(f"{spec.name}: {actual} partitions, declared {spec.partitions}")
        return TopicReport(
            created=[spec.name for spec in missing],
            existing=[spec.name for spec in present],
            drift=drift,
        )
    finally:
        await admin.close()

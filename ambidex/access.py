"""Who may do what on Kafka (`deploy/access.yaml`): one principal per service and per
capture connector, and the least-privilege ACLs each one gets.

The declaration is the single source of the ACL set: the Kubernetes KafkaUsers are
rendered from it (:mod:`ambidex.manifests`), and a unit test checks it against the
topics the services read and write and against ``deploy/topics.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEFAULT_DECLARATION = Path(__file__).resolve().parent.parent / "deploy" / "access.yaml"
#: the principal of the Kafka Connect worker (its group and storage topics only)
CONNECT_USER = "ambidex-connect"


class AccessDeclarationError(ValueError):
    """The access declaration is not well formed."""


@dataclass(frozen=True)
class Access:
    """One principal: the topics it reads and writes and the consumer groups it uses.

    A topic name ending in ``*`` is a prefix (a connector writes one topic per table).
    """

    name: str
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()

    @property
    def user(self) -> str:
        """The Kafka principal (KafkaUser) name: ``ambidex-<service>`` or the connector's."""
        return self.name if self.name.startswith("ambidex-") else f"ambidex-{self.name}"


@dataclass(frozen=True)
class AccessDeclaration:
    services: dict[str, Access]
    connectors: dict[str, Access]


def _names(path: Path, owner: str, entry: dict[str, Any], key: str) -> tuple[str, ...]:
    value = entry.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AccessDeclarationError(f"{path}: {owner}.{key} must be a list of names")
    return tuple(value)


def _section(path: Path, document: dict[str, Any], section: str) -> dict[str, Access]:
    entries = document.get(section) or {}
    if not isinstance(entries, dict):
        raise AccessDeclarationError(f"{path}: {section!r} must be a mapping")
    return {
        name: Access(
            name,
            reads=_names(path, name, entry, "reads"),
            writes=_names(path, name, entry, "writes"),
            groups=_names(path, name, entry, "groups"),
        )
        for name, entry in entries.items()
    }


def load_access(path: Path = DEFAULT_DECLARATION) -> AccessDeclaration:
    document = yaml.safe_load(path.read_text())
    if not isinstance(document, dict):
        raise AccessDeclarationError(f"{path}: expected a mapping")
    return AccessDeclaration(
        services=_section(path, document, "services"),
        connectors=_section(path, document, "connectors"),
    )


def _resource(kind: str, name: str) -> dict[str, str]:
    if name.endswith("*"):
        return {"type": kind, "name": name[:-1], "patternType": "prefix"}
    return {"type": kind, "name": name, "patternType": "literal"}


def acl_rules(access: Access) -> list[dict[str, Any]]:
    """Strimzi ``simple`` ACL rules: Read on sources, Write on its own topics (a topic
    both read and written gets both), Read on its own groups; nothing else."""
    operations: dict[str, list[str]] = {}
    for topic in access.reads:
        operations.setdefault(topic, []).append("Read")
    for topic in access.writes:
        operations.setdefault(topic, []).append("Write")
    rules = [
        {"resource": _resource("topic", topic), "operations": [*ops, "Describe"]}
        for topic, ops in operations.items()
    ]
    rules.extend(
        {"resource": _resource("group", group), "operations": ["Read"]} for group in access.groups
    )
    return rules


def connect_worker_acls(group: str, storage_topics: list[str]) -> list[dict[str, Any]]:
    """The Connect worker: its group, and its three storage topics (created by the
    worker when missing, their cleanup policy checked at start)."""
    return [
        *(
            {
                "resource": _resource("topic", topic),
                "operations": ["Read", "Write", "Create", "Describe", "DescribeConfigs"],
            }
            for topic in storage_topics
        ),
        {"resource": _resource("group", group), "operations": ["Read"]},
    ]

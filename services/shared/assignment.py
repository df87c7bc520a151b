"""Who owns a source's partitions: one member of the group, the others stand by.

Used by :class:`~services.shared.batches.BatchSource` unless a source is keyed so that
members can share it (a route topic: :mod:`services.shared.state.shards`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)


class WholeSourceAssignor(AbstractPartitionAssignor):  # type: ignore[misc]
    """Every partition of the group to ONE member; the others stand by.

    A source transaction's changes and its END marker sit on different partitions (the
    marker topic has one), so a member holding only some of them could never complete
    a transaction, and would keep the others from completing theirs. The owner keeps
    ownership when a standby joins (it says so in its subscription's user data), so a
    new replica causes one rebalance, not a handover.
    """

    name = "ambidex-whole-source"
    version = 0

    def __init__(self) -> None:
        self.owns = False

    def assign(
        self, cluster: Any, members: Mapping[str, ConsumerProtocolMemberMetadata]
    ) -> dict[str, ConsumerProtocolMemberAssignment]:
        topics = sorted({t for m in members.values() for t in m.subscription})
        owners = sorted(m for m, meta in members.items() if meta.user_data == b"owner")
        chosen = owners[0] if owners else min(members)
        partitions = [
            (topic, sorted(cluster.partitions_for_topic(topic) or ())) for topic in topics
        ]
        return {
            member: ConsumerProtocolMemberAssignment(
                self.version, partitions if member == chosen else [], b""
            )
            for member in members
        }

    def metadata(self, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
        return ConsumerProtocolMemberMetadata(
            self.version, list(topics), b"owner" if self.owns else b""
        )

    def on_assignment(self, assignment: ConsumerProtocolMemberAssignment) -> None:
        self.owns = bool(assignment.partitions())


__all__ = ["WholeSourceAssignor"]

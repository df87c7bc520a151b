"""What one step of inventory-projection hands its shell (pure): the :class:`Step`, the
keys it removed, the companion fold's protocol, and the last evaluated version per CRM
order (kept in the state). Split from :mod:`.projector`, which builds them.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

from services.inventory_projection.available_to_promise import Availability
from services.inventory_projection.shortages import Shortage
from services.shared.changes import ChangeEvent
from services.shared.cooperative import Pausable
from services.shared.errors import BadInput
from services.shared.holding import GivenUp, Whole
from services.shared.state.store import KeyValue
from services.shared.truncates import TruncateAnswer

H = TypeVar("H")

#: When a source transaction's newest record (of its handles) reached Kafka, in Unix
#: seconds: where the service's own lag starts. The shell passes the kit's
#: :func:`~services.shared.observability.last_appended` (its handles are Kafka records).
AppendedAt = Callable[[Sequence[H]], float | None]

#: State keys of the last evaluated version per CRM order (see :mod:`.state`).
EVALUATED_PREFIX = b"e:"


def evaluated_key(order_id: int) -> bytes:
    return EVALUATED_PREFIX + order_id.to_bytes(8, "big", signed=True)


class EvaluatedVersions:
    """The last evaluated version per CRM order, kept in the state (``e:<order id>``)
    and read when an order is evaluated: nothing per order stays in memory (a dict of
    every order ever seen grew for as long as the worker ran, found by bench/soak.py)."""

    __slots__ = ("kv",)

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    def get(self, order_id: int) -> int | None:
        raw = self.kv.get(evaluated_key(order_id))
        return None if raw is None else int(raw)

    def __setitem__(self, order_id: int, version: int) -> None:
        self.kv.put(evaluated_key(order_id), str(version).encode())


class Companion(Protocol):
    """A second fold run over the same whole transactions and the same state (demand
    signals, :mod:`.demand_signals`): after each transaction the projection folded,
    and once at the end of the step (it may add dead letters and withhold handles)."""

    collections: frozenset[str]

    def transaction(self, whole: Whole[Any], caught_up: Collection[str]) -> Pausable[None]: ...

    def finish(self, out: Step[Any], caught_up: Collection[str]) -> Pausable[None]: ...


@dataclass(frozen=True, slots=True)
class Removed:
    """A key that no longer has an availability: tombstone it (DB row and topic key)."""

    item_id: int
    sku: str
    warehouse_code: str


@dataclass
class Step(Generic[H]):
    """The effects of one batch, in the order the shell makes them durable."""

    availability: list[Availability] = field(default_factory=list)
    removed: list[Removed] = field(default_factory=list)
    shortages: list[Shortage] = field(default_factory=list)
    dead_letters: list[tuple[H, BadInput]] = field(default_factory=list)
    evaluated: dict[str, int] = field(default_factory=dict)
    """CRM order id (text) -> last evaluated version (already written to the state)."""
    meta: dict[str, Any] | None = None
    """The store's meta (revision, watermarks) when it changed (already written)."""
    release: list[H] = field(default_factory=list)
    """Handles to acknowledge once everything above is durable."""
    commit_times: list[datetime] = field(default_factory=list)
    """Source commit time of each applied transaction (end-to-end latency)."""
    appended_times: list[float] = field(default_factory=list)
    """When each applied transaction's newest record reached Kafka (Unix seconds; the
    service's own latency), when the projector is given :data:`AppendedAt`."""
    truncates: list[tuple[ChangeEvent, TruncateAnswer]] = field(default_factory=list)
    """TRUNCATEs folded in this step, with the answer given (the shell counts them)."""
    given_up: list[GivenUp] = field(default_factory=list)
    """Source transactions given up whole (their records are in :attr:`dead_letters`)."""
    orphans: dict[str, int] = field(default_factory=dict)
    """Per database: leftovers of transactions applied before a restart, released."""
    applied: int = 0
    stale: int = 0
    encoded: list[bytes] | None = None
    """:attr:`availability` encoded for publishing, in order (by the output check)."""

    @property
    def writes_anything(self) -> bool:
        return bool(self.availability or self.removed)


__all__ = [
    "EVALUATED_PREFIX", "AppendedAt", "Companion", "EvaluatedVersions", "Removed", "Step",
    "evaluated_key",
]

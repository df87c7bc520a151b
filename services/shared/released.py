"""What a transaction holder hands on (:mod:`services.shared.holding`): whole
transactions, records to acknowledge or dead-letter, and transactions given up."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Generic, TypeVar

from services.shared.changes import ChangeEvent, UndecodedChange
from services.shared.errors import BadInput
from services.shared.position import SourcePosition
from services.shared.transactions import CompleteTransaction

H = TypeVar("H")


class GiveUpCause(StrEnum):
    """Why a transaction was given up whole (a label of the rejected-transactions metric)."""

    UNDECODABLE = "undecodable"
    INCONSISTENT = "inconsistent"
    INCOMPLETE = "incomplete"
    OVERFLOW = "overflow"
    #: a row of it is bad input for the service's typed records (TransactionFold)
    BAD_ROW = "bad_row"
    #: an output it made cannot be published (services.shared.output_check)
    UNPUBLISHABLE = "unpublishable"


@dataclass(slots=True)  # not frozen: one per transaction, built on the hot path
class Whole(Generic[H]):
    """A complete transaction and the handles to ack once it is applied."""

    transaction: CompleteTransaction
    handles: list[H]
    #: the handle of the record that carried each event, by ``total_order``
    members: Mapping[int, H] = field(default_factory=dict)

    def handle_of(self, event: ChangeEvent) -> H | None:
        """The record that carried ``event`` (a snapshot read: its only record)."""
        if event.total_order is None:
            return self.handles[0] if len(self.handles) == 1 else None
        return self.members.get(event.total_order)


@dataclass(frozen=True, slots=True)
class GivenUp:
    """A transaction given up whole: its records are in :attr:`Released.dead`."""

    database: str
    transaction_id: str
    cause: GiveUpCause
    reason: str
    #: what was held of it (for the service to report whose change was rejected)
    events: tuple[ChangeEvent, ...] = ()
    defects: tuple[UndecodedChange, ...] = ()

    @property
    def position(self) -> SourcePosition | None:
        """The highest source position held of it (None: nothing but markers)."""
        positions = [e.position for e in self.events] + [d.position for d in self.defects]
        return max(positions, default=None)


@dataclass
class Released(Generic[H]):
    """What adding a record (or ending overdue transactions) released; see the module."""

    complete: list[Whole[H]] = field(default_factory=list)
    ack_now: list[H] = field(default_factory=list)
    dead: list[tuple[H, BadInput]] = field(default_factory=list)
    given_up: list[GivenUp] = field(default_factory=list)
    orphans: int = 0

    def extend(self, other: Released[H]) -> None:
        self.complete.extend(other.complete)
        self.ack_now.extend(other.ack_now)
        self.dead.extend(other.dead)
        self.given_up.extend(other.given_up)
        self.orphans += other.orphans


@dataclass(frozen=True, slots=True)
class Overdue:
    """An open transaction held beyond the bound, and the topics it waits for: end it
    (:meth:`TransactionHolder.expire`) once they are read to their end."""

    transaction_id: str
    waits_for: frozenset[str]

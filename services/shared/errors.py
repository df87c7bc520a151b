"""Errors that mean "this input is bad", as opposed to "the system is broken".

A service catches :class:`BadInput` around each event and sends the event to its
dead-letter topic with ``reason``; anything else is a real failure and is allowed to
stop the worker (the event is then redelivered after restart).

Every :class:`BadInput` carries a :class:`Cause`: the class of problem, which says what
an operator can do about the dead letter (replay it once the cause is fixed, or not).
"""

from enum import StrEnum
from typing import ClassVar


class Cause(StrEnum):
    """Why an event was dead-lettered, as a class an operator acts on."""

    BAD_INPUT = "bad_input"
    """The record itself is unusable (not JSON, not the schema, NaN money ...)."""
    UNKNOWN_REFERENCE = "unknown_reference"
    """It names a row the other side does not have (an item, a warehouse ...)."""
    ERP_STATE = "erp_state"
    """The ERP refused it because of its own state (e.g. a reserved line cannot be
    removed): replaying the same record fails again until the ERP changes."""
    NEEDS_RESNAPSHOT = "needs_resnapshot"
    """A TRUNCATE the service cannot fold: its state from that table must be rebuilt
    from a fresh snapshot; replaying the record only dead-letters it again."""

    @property
    def replayable(self) -> bool:
        """Whether replaying the original record can succeed without changing anything
        but the cause's fix (``deadletters replay`` offers only these without --force)."""
        return self not in (Cause.ERP_STATE, Cause.NEEDS_RESNAPSHOT)


class BadInput(Exception):
    """An event that cannot be processed as it is; never retried automatically."""

    cause: ClassVar[Cause] = Cause.BAD_INPUT

    def __init__(self, reason: str, cause: Cause | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        if cause is not None:
            self.cause = cause  # type: ignore[misc]  # per instance, over the class default


class SchemaViolation(BadInput):
    """The event does not conform to the Avro schema declared for its topic."""


class MalformedEvent(BadInput):
    """The bytes are not a readable event at all (not JSON, not Avro, truncated)."""


class NeedsResnapshot(BadInput):
    """A TRUNCATE of a table the service cannot clear: rebuild its state from a fresh
    snapshot (see :mod:`services.shared.truncates`)."""

    cause = Cause.NEEDS_RESNAPSHOT

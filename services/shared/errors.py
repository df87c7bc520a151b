"""Errors that mean "this input is bad", as opposed to "the system is broken".

A service catches :class:`BadInput` around each event and sends the event to its
dead-letter topic with ``reason``; anything else is a real failure and is allowed to
stop the worker (the event is then redelivered after restart).
"""


class BadInput(Exception):
    """An event that cannot be processed as it is; never retried automatically."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SchemaViolation(BadInput):
    """The event does not conform to the Avro schema declared for its topic."""


class MalformedEvent(BadInput):
    """The bytes are not a readable event at all (not JSON, not Avro, truncated)."""

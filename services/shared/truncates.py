"""What a service does when a captured table it consumes is truncated.

The connectors emit truncates (``skipped.operations=none``; Debezium's default drops
them): one change event with op ``t``, no key and no row images, per truncated table,
inside its source transaction (END counts it). A TRUNCATE removes every row at once
without a delete per row, so no service can fold it like other changes; each service
declares, in ONE mapping per service (``<service>/truncates.py``), its answer for every
captured table it consumes (:class:`TruncateAnswers`, checked complete when built):

* :attr:`TruncateAnswer.CLEAR`: the service removes everything the table contributed
  (e.g. inventory-projection's stock tables: every reservation gone, nothing reserved);
* :attr:`TruncateAnswer.NEEDS_RESNAPSHOT`: the service cannot tell what the table's
  rows meant for its state (orders, catalogue): the truncate record is dead-lettered
  with cause ``needs_resnapshot`` (:class:`~services.shared.errors.NeedsResnapshot`),
  and the alert ``AmbidexSourceTruncated`` (on :data:`METRIC`) tells the operator to
  rebuild the service's state from a fresh snapshot of the source.

Either way :data:`METRIC` (``ambidex_source_truncates_total{service, table, answer}``)
counts it, so a truncate never disappears without a trace.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter

from services.shared.changes import ChangeEvent, ChangeOp
from services.shared.errors import NeedsResnapshot
from services.shared.transactions import CompleteTransaction

METRIC = "ambidex_source_truncates_total"


class TruncateAnswer(StrEnum):
    CLEAR = "clear"
    """Remove every contribution of the table's rows (the service can)."""
    NEEDS_RESNAPSHOT = "needs_resnapshot"
    """Dead letter (cause needs_resnapshot) + alert: rebuild from a fresh snapshot."""


def topic_collection(topic: str) -> str:
    """``cdc.<db>.<table>`` -> ``<db>.<table>`` (the data collection it carries)."""
    prefix, _, collection = topic.partition(".")
    if prefix != "cdc" or collection.count(".") != 1:
        raise ValueError(f"{topic!r} is not a change topic cdc.<db>.<table>")
    return collection


@dataclass(frozen=True)
class TruncateAnswers:
    """One service's declared answer per consumed captured table (``db.table``)."""

    service: str
    answers: Mapping[str, TruncateAnswer]
    consumed: frozenset[str] = field(default_factory=frozenset)
    """The captured tables the service consumes: each must have an answer."""

    def __post_init__(self) -> None:
        missing = sorted(self.consumed - set(self.answers))
        if missing:
            raise ValueError(
                f"{self.service}: no declared TRUNCATE answer for {', '.join(missing)}"
            )

    @classmethod
    def for_topics(
        cls, service: str, answers: Mapping[str, TruncateAnswer], topics: Iterable[str]
    ) -> TruncateAnswers:
        """Answers checked against the change topics the service consumes."""
        consumed = frozenset(
            topic_collection(t) for t in topics if t.startswith("cdc.") and t.count(".") == 2
            and not t.endswith(".transaction")
        )
        return cls(service, answers, consumed)

    def answer(self, change: ChangeEvent) -> TruncateAnswer:
        """The answer for ``change``'s table; NEEDS_RESNAPSHOT for a table nobody
        declared (it cannot be folded, and it must not vanish)."""
        return self.answers.get(change.data_collection, TruncateAnswer.NEEDS_RESNAPSHOT)

    def error(self, change: ChangeEvent) -> NeedsResnapshot:
        """The dead letter's error for a truncate answered NEEDS_RESNAPSHOT."""
        return NeedsResnapshot(
            f"TRUNCATE of {change.data_collection} (committed "
            f"{change.commit_time.isoformat()}): every row was removed at once and "
            f"{self.service} cannot tell what that means for its state; rebuild it from "
            f"a fresh snapshot of {change.data_collection}"
        )


class TruncateCounter:
    """``ambidex_source_truncates_total{service, table, answer}`` on a service registry."""

    def __init__(self, registry: CollectorRegistry, service: str) -> None:
        self.service = service
        self.counter = Counter(
            METRIC,
            "TRUNCATEs of a captured table seen, by table and the service's answer "
            "(clear, needs_resnapshot: alert).",
            ("service", "table", "answer"),
            registry=registry,
        )

    def seen(self, change: ChangeEvent, answer: TruncateAnswer) -> None:
        self.counter.labels(self.service, change.data_collection, answer.value).inc()


def split_truncates(
    transaction: CompleteTransaction,
) -> tuple[CompleteTransaction, list[ChangeEvent]]:
    """``transaction`` without its truncates, and the truncates (for a service that
    answers them apart and applies the rest of the transaction as usual)."""
    truncates = [e for e in transaction.events if e.op is ChangeOp.TRUNCATE]
    if not truncates:
        return transaction, truncates
    kept = tuple(e for e in transaction.events if e.op is not ChangeOp.TRUNCATE)
    return replace(transaction, events=kept), truncates

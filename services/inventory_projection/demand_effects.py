"""What a step of demand signals does outside the state (I/O), inside inventory-projection.

:meth:`DemandEffects.apply` runs with the projection's effects, before the checkpoint
makes the step durable (a crash redoes it; each write is idempotent):

* surges ``raised`` / ``cleared`` to ``ambidex.demand-surges`` (key ``{"sku","warehouse"}``,
  at least once: consumers deduplicate on ``surge_id``), published BEFORE the rows are
  written; a surge the table already shows raised (or cleared) is not published again,
  so a replay from the beginning with the state gone raises no surge twice (a
  tombstone keeps its ``surge_id`` for this);
* ``erp_integration.supply_priority`` upserted (tombstoned when the surge clears) at
  the projection's write position (position-guarded: never below a newer row);
* ``crm_integration.feasibility_answer`` written at its request row's CRM position (a
  redelivered request writes nothing; a newer version replaces the answer).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import asyncpg

from services.demand_signals.emit import (
    ANSWER_TABLE,
    SUPPLY_PRIORITY_TABLE,
    SURGE_SCHEMA,
    SURGE_TOPIC,
    answer_row,
    supply_priority_key,
    supply_priority_row,
    surge_key,
    surge_record,
)
from services.demand_signals.surge import Surge
from services.inventory_projection.demand_signals import DemandStep
from services.shared.errors import BadInput
from services.shared.output_check import first_refused, publishable
from services.shared.position import SourcePosition
from services.shared.runtime import Service
from services.shared.sinks import DeleteSpec, PositionGuardedSink, SinkWrite, UpsertSpec

ANSWER_SPEC = UpsertSpec(
    ANSWER_TABLE,
    key_columns=("request_id",),
    value_columns=("crm_order_id", "verdict", "reason", "summary", "requested_date",
                   "earliest_ship_date", "warehouse_code", "lines", "as_of"),
)
PRIORITY_SPEC = UpsertSpec(
    SUPPLY_PRIORITY_TABLE,
    key_columns=("item_id", "warehouse_code"),
    value_columns=("warehouse_id", "sku", "surge_id", "priority", "shortfall", "needed_by",
                   "rate", "baseline", "projected", "supply", "lead_time_days", "reasons",
                   "evidence", "raised_at"),
)
#: a cleared surge's row keeps its identity (and its figures when it was written
#: raised): see DemandEffects.unseen. A row never written raised gets the id with its
#: tombstone, so a surge raised and cleared within one step is known cleared too.
PRIORITY_CLEARED = DeleteSpec(SUPPLY_PRIORITY_TABLE, PRIORITY_SPEC.key_columns,
                              kept_columns=("surge_id",))
KNOWN_SURGES = """
SELECT surge_id, deleted FROM erp_integration.supply_priority
WHERE surge_id = ANY($1::text[])"""


def answer_writes(step: DemandStep) -> list[SinkWrite]:
    writes: list[SinkWrite] = []
    for request_id, answer in sorted(step.outcome.answers.items()):
        position = step.positions[request_id]
        if answer is None:
            writes.append(ANSWER_SPEC.delete({"request_id": request_id}, position))
        else:
            writes.append(ANSWER_SPEC.upsert(answer_row(answer), position))
    return writes


def priority_writes(step: DemandStep, position: SourcePosition) -> list[SinkWrite]:
    writes: list[SinkWrite] = []
    for _, surge in sorted(step.outcome.priorities.items()):
        row = supply_priority_row(surge)
        if row is None:
            writes.append(PRIORITY_CLEARED.delete(supply_priority_key(surge), position,
                                                  {"surge_id": surge.surge_id}))
        else:
            writes.append(PRIORITY_SPEC.upsert(row, position))
    return writes


class DemandEffects:
    """The write-back and publishing of demand signals (the sinks once started)."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.crm: PositionGuardedSink | None = None
        self.erp: PositionGuardedSink | None = None
        self.erp_pool: asyncpg.Pool | None = None

    def started(self, crm_pool: asyncpg.Pool, erp_pool: asyncpg.Pool) -> None:
        service = self.service
        self.erp_pool = erp_pool
        self.crm = PositionGuardedSink(crm_pool, name="feasibility_answer",
                                       metrics=service.metrics, retry=service.retry)
        self.erp = PositionGuardedSink(erp_pool, name="supply_priority",
                                       metrics=service.metrics, retry=service.retry)

    async def apply(self, step: DemandStep, position: SourcePosition) -> None:
        """Everything the step decided, done and acknowledged (idempotent)."""
        assert self.crm is not None and self.erp is not None
        answers = answer_writes(step)
        priorities = priority_writes(step, position)
        # the surges first: a redo after a crash between the two finds the rows
        # written and must not skip an event that was never acknowledged
        published = await self.publish(step.outcome.events)
        await asyncio.gather(
            self.crm.apply(answers) if answers else _nothing(),
            self.erp.apply(priorities) if priorities else _nothing(),
        )
        metrics = self.service.metrics
        if step.folded:
            metrics.event("demand_signals", "applied", step.folded)
        if published:
            metrics.event(SURGE_TOPIC, "applied", published)
        if len(step.outcome.events) > published:
            metrics.event(SURGE_TOPIC, "skipped_stale", len(step.outcome.events) - published)
        if step.outcome.answers:
            metrics.event(ANSWER_TABLE, "applied", len(step.outcome.answers))
        # the feasibility latency: request commit (its last record in Kafka, for the
        # service's own share) -> answer written
        now = time.time()
        metrics.observe_end_to_end_lags(
            "feasibility_answer", [t.timestamp() for t in step.commit_times], now)
        metrics.observe_service_lags("feasibility_answer", step.appended_times, now)

    def check(self, step: DemandStep, *, prune: bool = False) -> BadInput | None:
        """The first surge its schema refuses (the kit's output check); ``prune``: leave
        every refused one out."""
        codec = self.service.codec
        events = step.outcome.events
        if not prune:
            return first_refused(codec, ((SURGE_SCHEMA, surge_record(s)) for s in events))
        step.outcome.events, refused = publishable(codec, SURGE_SCHEMA, events, surge_record)
        return refused

    async def unseen(self, events: Sequence[Surge]) -> list[Surge]:
        """The events the supply-priority table does not show yet: a surge raised is
        known once a row carries its id, a surge cleared once that row is a tombstone
        (a replay from the beginning with the state gone judges them all again)."""
        pool = self.erp_pool
        assert pool is not None
        ids = sorted({s.surge_id for s in events})

        async def fetch() -> list[asyncpg.Record]:
            return list(await pool.fetch(KNOWN_SURGES, ids))

        rows = await self.service.retry.call(
            fetch, check="sink:supply_priority", what="reading the surges already raised")
        known = {r["surge_id"]: bool(r["deleted"]) for r in rows}
        return [s for s in events
                if not (s.surge_id in known and (s.status == "raised" or known[s.surge_id]))]

    async def publish(self, events: Sequence[Surge]) -> int:
        """Publish the events not seen yet (acknowledged); how many."""
        if not events:
            return 0
        fresh = await self.unseen(events)
        if fresh:
            await self.service.require_publisher().publish_many(
                [(SURGE_TOPIC, SURGE_SCHEMA, surge_key(s), surge_record(s)) for s in fresh])
        return len(fresh)


async def _nothing() -> None:
    return None


__all__ = ["ANSWER_SPEC", "PRIORITY_SPEC", "DemandEffects"]

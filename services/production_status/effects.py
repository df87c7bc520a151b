"""What a step of production-status does outside the state (I/O), and its metrics.

:meth:`Effects.apply` is the service's *effects* for the kit's checkpoint: the CRM
write-back (``deploy/sql/crm/060_production_status.sql``: statuses, their lines and
triages through the position-guarded sink in ONE transaction, at the step's write
position; risk events inserted once per ``risk_id``), the records published (status
and triage keyed by CRM order / case, risk events), the dead letters, the metrics.
Each is idempotent, so a batch redone after a crash repeats them harmlessly: the guard
refuses a write at or below the stored position, a risk event is inserted once, the
topics are keyed (consumers keep the newest; risk events carry their id).
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
from prometheus_client import Counter, Gauge

from services.production_status import publish, writeback
from services.production_status.service_fold import Outcome, StatusFold
from services.shared.errors import BadInput
from services.shared.output_check import first_refused, publishable
from services.shared.runtime import Service
from services.shared.sinks import PositionGuardedSink, SinkWrite, UpsertSpec
from services.shared.transaction_fold import Applied, effects_of_step
from services.shared.truncates import TruncateCounter

STATUS_TOPIC = "ambidex.fulfilment-status"
RISK_TOPIC = "ambidex.delay-risks"
TRIAGE_TOPIC = "ambidex.case-triage"

STATUS_SPEC = UpsertSpec(writeback.FULFILMENT_STATUS, writeback.STATUS_KEY,
                         writeback.STATUS_COLUMNS)
LINE_SPEC = UpsertSpec(writeback.FULFILMENT_LINE, writeback.LINE_KEY, writeback.LINE_COLUMNS)
TRIAGE_SPEC = UpsertSpec(writeback.CASE_TRIAGE, writeback.TRIAGE_KEY, writeback.TRIAGE_COLUMNS)
INSERT_RISK = (
    f"INSERT INTO {writeback.DELAY_RISK_EVENT} ({', '.join(writeback.RISK_COLUMNS)}) "
    f"VALUES ({', '.join(f'${n}' for n in range(1, len(writeback.RISK_COLUMNS) + 1))}) "
    "ON CONFLICT (risk_id) DO NOTHING"
)


def outputs(out: Outcome) -> list[tuple[str, str, bytes, dict[str, Any]]]:
    """The records a step publishes: (topic, schema, key, record)."""
    items = [(STATUS_TOPIC, publish.FULFILMENT_STATUS, publish.topic_key(r["crm_order_id"]), r)
             for r in out.statuses]
    items += [(RISK_TOPIC, publish.DELAY_RISK, publish.topic_key(r["crm_order_id"]), r)
              for r in out.risks]
    items += [(TRIAGE_TOPIC, publish.CASE_TRIAGE, publish.topic_key(r["case_id"]), r)
              for r in out.triages]
    return items


class StatusMetrics:
    """Business metrics beside the platform ones (same registry, ``service`` label)."""

    def __init__(self, service: Service) -> None:
        registry, name = service.registry, service.name
        self.name = name
        self.orders = Gauge(
            "ambidex_fulfilment_orders", "CRM orders with a published status, by stage.",
            ("service", "stage"), registry=registry)
        self.risk_orders = Gauge(
            "ambidex_fulfilment_risk_orders",
            "CRM orders by their current delay-risk level (at_risk + late: at risk).",
            ("service", "level"), registry=registry)
        self.risks = Counter(
            "ambidex_delay_risks_total", "Delay-risk events published, raised or cleared.",
            ("service", "event", "reason"), registry=registry)
        self.triaged = Counter(
            "ambidex_cases_triaged_total", "Service cases triaged (published), by culprit.",
            ("service", "culprit"), registry=registry)
        self.identities = Counter(
            "ambidex_order_identities_folded_total", "Order identity records folded.",
            ("service",), registry=registry).labels(name)
        self._stages: set[str] = set()
        self._levels: set[str] = set()

    def counts(self, fold: StatusFold) -> None:
        stages, levels = fold.meta.stages, fold.meta.levels
        for stage in self._stages | set(stages):
            self.orders.labels(self.name, stage).set(stages.get(stage, 0))
        for level in self._levels | set(levels):
            self.risk_orders.labels(self.name, level).set(levels.get(level, 0))
        self._stages |= set(stages)
        self._levels |= set(levels)


class Effects:
    """The write-back and publishing of one worker (the pool and sink once started)."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.metrics = StatusMetrics(service)
        #: ``ambidex_source_truncates_total`` (the answers: .truncates)
        self.truncates = TruncateCounter(service.registry, service.name)
        self.pool: asyncpg.Pool | None = None
        self.sink: PositionGuardedSink | None = None

    def started(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.sink = PositionGuardedSink(pool, name="fulfilment", metrics=self.service.metrics,
                                        retry=self.service.retry)

    async def apply(self, step: Applied[Outcome], fold: StatusFold) -> None:
        """Everything ``step`` decided, done and acknowledged (idempotent)."""
        service = self.service
        out = step.outcome
        await effects_of_step(
            service, step, fold.held,
            (lambda: asyncio.gather(self.write_back(out), self.publish(out)))
            if out.writes_anything else None,
            truncates=self.truncates, stale=out.stale,
        )
        m = self.metrics
        for risk in out.risks:
            m.risks.labels(m.name, "cleared" if risk["cleared"] else "raised",
                           risk["reason"] or "none").inc()
        for triage in out.triages:
            m.triaged.labels(m.name, triage["culprit"]).inc()
        if out.identities:
            m.identities.inc(out.identities)
        m.counts(fold)
        fold.verdicts.report(service.metrics)
        service.metrics.set_table_rows("fulfilment_status", fold.published_orders())

    async def write_back(self, out: Outcome) -> None:
        position = out.position
        assert position is not None and self.sink is not None and self.pool is not None
        writes: list[SinkWrite] = []
        for record in out.statuses:
            writes.append(STATUS_SPEC.upsert(writeback.status_row(record), position))
            writes += [LINE_SPEC.upsert(row, position) for row in writeback.line_rows(record)]
        writes += [LINE_SPEC.delete({"crm_order_id": crm, "line_no": line_no}, position)
                   for crm, line_no in out.lines_removed]
        writes += [TRIAGE_SPEC.upsert(writeback.triage_row(r), position) for r in out.triages]
        writes += [TRIAGE_SPEC.delete({"case_id": case}, position)
                   for case in out.triages_removed]
        await self.sink.apply(writes)
        if out.risks:
            rows = [tuple(writeback.risk_row(r)[c] for c in writeback.RISK_COLUMNS)
                    for r in out.risks]
            pool = self.pool

            async def insert() -> None:
                await pool.executemany(INSERT_RISK, rows)

            await self.service.retry.call(insert, check="sink:fulfilment",
                                          what="delay-risk events")

    def check(self, step: Applied[Outcome], fold: StatusFold, *, prune: bool = False
              ) -> BadInput | None:
        """The first of the step's records its schema refuses (the kit's output check);
        ``prune``: leave every refused one out (not written back, not published)."""
        out = step.outcome
        codec = self.service.codec
        if not prune:
            return first_refused(codec, ((schema, r) for _, schema, _, r in outputs(out)))
        out.statuses, statuses = publishable(codec, publish.FULFILMENT_STATUS, out.statuses)
        out.risks, risks = publishable(codec, publish.DELAY_RISK, out.risks)
        out.triages, triages = publishable(codec, publish.CASE_TRIAGE, out.triages)
        return statuses or risks or triages

    async def publish(self, out: Outcome) -> None:
        await self.service.require_publisher().publish_many(outputs(out))
        if out.triages_removed:
            producer = self.service.producer
            assert producer is not None
            sent = [await producer.send(TRIAGE_TOPIC, value=None, key=publish.topic_key(case))
                    for case in out.triages_removed]
            await asyncio.gather(*sent)


__all__ = ["RISK_TOPIC", "STATUS_TOPIC", "TRIAGE_TOPIC", "Effects", "StatusMetrics"]

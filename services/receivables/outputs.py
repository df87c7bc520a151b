"""What a step of receivables does outside its state (I/O): the effects of an Outcome.

:meth:`Outputs.apply` is the service's *effects* for the kit's checkpoint, run before
the state and the source offsets are made durable (a crash redoes the batch, so every
one is idempotent), in the kit's order (:func:`effects_of_step`, as every stateful
service):

1. the dead letters, the truncates counted and the holding metrics;
2. the alerts: of the step's netted discrepancies, ``raised`` is published only for one
   the CRM's ``receivable_discrepancy`` table does not show open, ``resolved`` only for
   one it does (so a redone batch or a replay from the beginning does not raise an open
   cause twice), and the position records (compacted ``ambidex.receivable-position``,
   key = contract id, tombstone when the contract is gone) — published, acks awaited;
3. the six integration tables written with the position-guarded sink
   (:mod:`services.shared.sinks`) at the service's own write position (the figures
   derive from both databases, whose LSNs do not compare, as inventory's
   availability): the four ``crm_integration.receivable_*`` tables in one CRM
   transaction, the ERP's expected-receivables plan in one ERP transaction;
4. the end-to-end lag of what they made visible, the changes applied.

Publishing comes before the table write: what is published is decided against what the
table shows open, so a crash between them publishes an alert again (at least once),
never loses one.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import partial
from typing import Any

import asyncpg
from prometheus_client import Counter, Gauge

from services.receivables import tables
from services.receivables.effects import Outcome
from services.receivables.emit import (
    DISCREPANCY_SCHEMA,
    DISCREPANCY_TOPIC,
    POSITION_SCHEMA,
    POSITION_TOPIC,
    alerts,
    discrepancy_record,
    position_key,
    position_record,
)
from services.receivables.rules import Discrepancy, Kind
from services.receivables.source_fold import ReceivablesFold, Step
from services.shared.errors import BadInput
from services.shared.output_check import first_refused, publishable
from services.shared.position import SourcePosition
from services.shared.runtime import Service
from services.shared.sinks import PositionGuardedSink, SinkWrite, UpsertSpec
from services.shared.transaction_fold import effects_of_step
from services.shared.truncates import TruncateCounter


def _spec(table: str, row: dict[str, Any], *, tombstones: bool = True) -> UpsertSpec:
    keys = tables.KEYS[table]
    return UpsertSpec(table, keys, tuple(c for c in row if c not in keys), tombstones)


#: the sink's spec of each table, from the pure row builders' columns
POSITION = "crm_integration.receivable_position"
INSTALLMENT = "crm_integration.receivable_installment"
CUSTOMER = "crm_integration.receivable_customer"
DISCREPANCY = "crm_integration.receivable_discrepancy"
PLAN = "erp_integration.expected_receivable_plan"
EXPECTED = "erp_integration.expected_receivable"
CRM_TABLES = (POSITION, INSTALLMENT, CUSTOMER, DISCREPANCY)
ERP_TABLES = (PLAN, EXPECTED)

OPEN_ROWS = """
SELECT discrepancy_id, raised_at FROM crm_integration.receivable_discrepancy
WHERE discrepancy_id = ANY($1::text[]) AND NOT deleted"""


def write_position_sql(table: str) -> str:
    return f"SELECT coalesce(max(source_commit_lsn), 0) FROM {table}"


class ReceivablesMetrics:
    """receivables' business metrics (beside the platform ones)."""

    def __init__(self, service: Service) -> None:
        registry, name = service.registry, service.name

        def gauge(metric: str, doc: str, *labels: str) -> Gauge:
            return Gauge(metric, doc, ("service", *labels), registry=registry)

        self.changes_applied = Counter(
            "ambidex_receivables_changes_applied_total",
            "Source row changes folded (whole transactions; stale ones included).",
            ("service",), registry=registry).labels(name)
        self.discrepancies = Counter(
            "ambidex_receivables_discrepancies_total",
            "Discrepancy events published, by kind and event (raised, resolved).",
            ("service", "kind", "event"), registry=registry)
        self.open = gauge("ambidex_receivables_open_discrepancies",
                          "Open discrepancies in the state, by kind.", "kind")
        self.positions = Counter(
            "ambidex_receivables_positions_written_total",
            "Contract positions written back and published (tombstones included).",
            ("service",), registry=registry).labels(name)
        self.awaiting = gauge("ambidex_receivables_awaiting_verdicts",
                              "Installments naming an unknown contract, awaiting a verdict."
                              ).labels(name)
        self.unjudged = gauge("ambidex_receivables_unjudged_references",
                              "Installments released without a verdict since start."
                              ).labels(name)
        self.as_of = gauge("ambidex_receivables_as_of_timestamp_seconds",
                           "The as-of date of the figures (Unix seconds, 00:00 UTC)."
                           ).labels(name)
        self.name = name
        self._open: dict[str, int] = {k.value: 0 for k in Kind}
        #: what the last step did to the state's open discrepancies, until it is durable
        self._moving: dict[Kind, int] = {}

    def count_open(self, fold: ReceivablesFold) -> None:
        """The open discrepancies by kind, from the state (at start)."""
        self._open = {k.value: 0 for k in Kind}
        self._moving = {}
        for d in fold.core.open_discrepancies().values():
            self._open[d.kind.value] += 1
        for kind, n in self._open.items():
            self.open.labels(self.name, kind).set(n)

    def stepped(self, step: Step, fold: ReceivablesFold) -> None:
        """A step's effects are done (its state is made durable next)."""
        if step.applied:
            self.changes_applied.inc(step.applied)
        self.awaiting.set(fold.awaiting_verdicts)
        self.unjudged.set(fold.unjudged)
        as_of = fold.core.as_of
        self.as_of.set(datetime(as_of.year, as_of.month, as_of.day, tzinfo=UTC).timestamp())
        self._moving = dict(step.outcome.open_moved)

    async def committed(self, _: ReceivablesFold) -> None:
        """The step's state is durable: the open gauge follows it (the runner's
        ``after_commit``). Moved by what the fold did to the state, not by what was
        published: the alerts withheld while the CRM is behind were never counted up
        and their resolutions counted down (the gauge went negative in a replay), and
        the ones handed over once it is caught up counted again what the count at load
        had. Not before the commit: a batch redone after a failed commit would count
        twice."""
        for kind, n in self._moving.items():
            self._open[kind.value] += n
            self.open.labels(self.name, kind.value).set(self._open[kind.value])
        self._moving = {}


class Outputs:
    """The write-back and publishing of one worker (pools once started)."""

    def __init__(self, service: Service, metrics: ReceivablesMetrics) -> None:
        self.service = service
        self.metrics = metrics
        #: ``ambidex_source_truncates_total`` (the answers: .truncates)
        self.truncates = TruncateCounter(service.registry, service.name)
        self.crm: asyncpg.Pool | None = None
        self.erp: asyncpg.Pool | None = None
        self.crm_sink: PositionGuardedSink | None = None
        self.erp_sink: PositionGuardedSink | None = None
        self._position = 0

    async def started(self, crm: asyncpg.Pool, erp: asyncpg.Pool) -> None:
        """Open the sinks; never write below what the tables already hold (a replay
        from the beginning with a fresh state, another clock)."""
        service = self.service
        self.crm, self.erp = crm, erp
        self.crm_sink = PositionGuardedSink(crm, name="receivables-crm",
                                            metrics=service.metrics, retry=service.retry)
        self.erp_sink = PositionGuardedSink(erp, name="receivables-erp",
                                            metrics=service.metrics, retry=service.retry)
        highest = 0
        for pool, names in ((crm, CRM_TABLES), (erp, ERP_TABLES)):
            for table in names:
                highest = max(highest, int(await pool.fetchval(write_position_sql(table))))
        self._position = highest

    def next_position(self) -> SourcePosition:
        """The service's own write position: microseconds of the clock, and always above
        the last one."""
        self._position = max(time.time_ns() // 1000, self._position + 1)
        return SourcePosition(self._position, 0)

    async def apply(self, step: Step, fold: ReceivablesFold) -> None:
        """Everything ``step`` decided, done and acknowledged (idempotent)."""
        out = step.outcome
        as_of = fold.core.as_of
        await effects_of_step(
            self.service, step, fold.held,
            partial(self._writes, out, as_of) if out.writes_anything else None,
            truncates=self.truncates,
        )
        self.metrics.stepped(step, fold)

    async def _writes(self, out: Outcome, as_of: date) -> None:
        """Publish, then write back (see the module docstring for why in this order)."""
        shown = await self._shown(out)
        now = datetime.now(UTC)
        await self._publish(out, shown, as_of, now)
        position = self.next_position()
        await asyncio.gather(self._write_crm(out, shown, as_of, now, position),
                             self._write_erp(out, position))

    def check(self, step: Step, fold: ReceivablesFold, *, prune: bool = False
              ) -> BadInput | None:
        """The first of the step's records its schema refuses (the kit's output check);
        ``prune``: leave every refused one out (not written back, not published)."""
        out = step.outcome
        as_of, now = fold.core.as_of, datetime.now(UTC)
        positions = [(cid, p) for cid, p in out.contracts.items() if p is not None]
        alerts = [d for _, d in out.discrepancies.values() if d is not None]
        alerts += [b for b, a in out.discrepancies.values() if b is not None and a is None]
        codec = self.service.codec
        if not prune:
            return first_refused(codec, (
                *((POSITION_SCHEMA, position_record(p, as_of)) for _, p in positions),
                *((DISCREPANCY_SCHEMA, discrepancy_record(d, "raised", now)) for d in alerts)))
        kept, first = publishable(codec, POSITION_SCHEMA, positions,
                                  lambda item: position_record(item[1], as_of))
        published = {cid for cid, _ in kept}
        for cid, _ in positions:
            if cid not in published:
                del out.contracts[cid]
        fine, refused = publishable(codec, DISCREPANCY_SCHEMA, alerts,
                                    lambda d: discrepancy_record(d, "raised", now))
        shown = {d.identity for d in fine}
        for d in alerts:
            if d.identity not in shown:
                out.discrepancies.pop(d.identity, None)
        return first or refused

    async def _shown(self, out: Outcome) -> dict[str, datetime | None]:
        """The step's discrepancies the table shows open now, with when raised."""
        if not out.discrepancies:
            return {}
        assert self.crm is not None
        pool = self.crm
        rows = await self.service.retry.call(
            lambda: pool.fetch(OPEN_ROWS, list(out.discrepancies)),
            check="database:crm", what="reading the open discrepancies")
        return {r["discrepancy_id"]: r["raised_at"] for r in rows}

    async def _publish(self, out: Outcome, shown: dict[str, datetime | None], as_of: Any,
                       now: datetime) -> None:
        items: list[tuple[str, str, bytes, dict[str, Any]]] = []
        for key, record in alerts(out, shown, now):
            items.append((DISCREPANCY_TOPIC, DISCREPANCY_SCHEMA, key, record))
            self.metrics.discrepancies.labels(self.metrics.name, record["kind"],
                                              record["status"]).inc()
        tombstones: list[bytes] = []
        for contract_id, p in sorted(out.contracts.items()):
            if p is None:
                tombstones.append(position_key(contract_id))
            else:
                items.append((POSITION_TOPIC, POSITION_SCHEMA, position_key(contract_id),
                              position_record(p, as_of)))
        self.metrics.positions.inc(len(out.contracts))
        publisher = self.service.require_publisher()
        producer = self.service.producer
        assert producer is not None
        sent = [await producer.send(POSITION_TOPIC, value=None, key=k) for k in tombstones]
        await asyncio.gather(publisher.publish_many(items), *sent)

    async def _write_crm(self, out: Outcome, shown: dict[str, datetime | None], as_of: Any,
                         now: datetime, position: SourcePosition) -> None:
        writes: list[SinkWrite] = []

        def put(table: str, key: dict[str, Any], row: dict[str, Any] | None) -> None:
            if row is None:
                writes.append(SPECS[table].delete(key, position))
            else:
                writes.append(SPECS[table].upsert(row, position))

        for cid, p in out.contracts.items():
            put(POSITION, {"contract_id": cid}, None if p is None else tables.position_row(
                p, as_of))
        for (cid, seq), i in out.installments.items():
            put(INSTALLMENT, {"contract_id": cid, "seq": seq},
                None if i is None else tables.installment_row(i, as_of))
        for (account, currency), c in out.customers.items():
            put(CUSTOMER, {"account_id": account, "currency_code": currency},
                None if c is None else tables.customer_row(c, as_of))
        for identity, (_, after) in out.discrepancies.items():
            row = None
            if after is not None:
                row = {**tables.discrepancy_row(after), "raised_at": shown.get(identity) or now}
            put(DISCREPANCY, {"discrepancy_id": identity}, row)
        if writes:
            assert self.crm_sink is not None
            await self.crm_sink.apply(writes)

    async def _write_erp(self, out: Outcome, position: SourcePosition) -> None:
        writes: list[SinkWrite] = [SPECS[PLAN].upsert(tables.plan_header_row(h), position)
                                   for h in out.plan_headers.values()]
        for (cid, seq), e in out.plan.items():
            if e is None:
                writes.append(SPECS[EXPECTED].delete(
                    {"crm_contract_id": cid, "installment_seq": seq}, position))
            else:
                writes.append(SPECS[EXPECTED].upsert(tables.plan_row(e), position))
        if writes:
            assert self.erp_sink is not None
            await self.erp_sink.apply(writes)


def _specs() -> dict[str, UpsertSpec]:
    """Each table's columns, taken from the pure row builders (one source of truth)."""
    from services.receivables.effects import PlanEntry, PlanHeader
    from services.receivables.rules import (
        ContractPosition,
        CustomerPosition,
        InstallmentPosition,
    )

    z = date(2000, 1, 1)
    zero = Decimal(0)
    aging = (zero, zero, zero, zero)
    contract = ContractPosition(1, "", 1, "", "", zero, 0, zero, zero, zero, zero, zero, aging,
                                None, None)
    installment = InstallmentPosition(1, 1, 1, z, "", zero, zero, zero, zero, zero, None,
                                      False, None, ())
    customer = CustomerPosition(1, "", 0, zero, zero, zero, zero, zero, zero, aging, None, None)
    discrepancy = Discrepancy("x", Kind.PAYMENT_OVER, "", "", None, None)
    return {
        POSITION: _spec(POSITION, tables.position_row(contract, z)),
        INSTALLMENT: _spec(INSTALLMENT, tables.installment_row(installment, z)),
        CUSTOMER: _spec(CUSTOMER, tables.customer_row(customer, z)),
        DISCREPANCY: _spec(DISCREPANCY, {**tables.discrepancy_row(discrepancy),
                                         "raised_at": None}),
        PLAN: _spec(PLAN, tables.plan_header_row(PlanHeader(1, "", None, None, None, None)),
                    tombstones=False),
        EXPECTED: _spec(EXPECTED, tables.plan_row(PlanEntry(1, 1, 1, z, zero, "", False))),
    }


SPECS = _specs()


__all__ = ["SPECS", "Outputs", "ReceivablesMetrics"]

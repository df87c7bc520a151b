"""What a step of customer-value does outside the state (I/O), and its metrics.

:meth:`Effects.apply` is the service's *effects* for the kit's checkpoint: the dead
letters, then ``crm_integration.customer_value`` (deploy/sql/crm/080) through the
position-guarded sink in ONE transaction at the step's write position (a month that
emptied becomes a tombstone row), and the same figures on :data:`VALUE_TOPIC`
(compacted, key ``<account>:<YYYY-MM>:<currency>``, a Kafka tombstone for an emptied
month). Each is idempotent, so a batch redone after a crash repeats them harmlessly:
the guard refuses a write at or below the stored position, the topic is keyed
(consumers keep the newest), dead letters are deduplicated by origin.

:meth:`Effects.committed` (the runner's ``after_commit``) hands the step's figures and
risks to the observer once the checkpoint made them durable.
"""

from __future__ import annotations

import asyncio

import asyncpg
from prometheus_client import Counter, Gauge

from services.customer_value import emit
from services.customer_value.figures import month_start
from services.customer_value.observer import Update, ValueObserver
from services.customer_value.service_fold import Outcome, ValueFold
from services.shared.errors import BadInput
from services.shared.output_check import first_refused, publishable
from services.shared.runtime import Service
from services.shared.sinks import PositionGuardedSink, SinkWrite, UpsertSpec
from services.shared.transaction_fold import Applied, effects_of_step
from services.shared.truncates import TruncateCounter

VALUE_TOPIC = "ambidex.customer-value"
#: ``schemas/published/customer_value/v1.avsc``
SCHEMA_NAME = "customer_value"
TABLE = "crm_integration.customer_value"
KEY = ("account_id", "month", "currency_code")
SPEC = UpsertSpec(TABLE, KEY, tuple(c for c in emit.ROW_COLUMNS if c not in KEY))


class ValueMetrics:
    """Business metrics beside the platform ones (same registry, ``service`` label)."""

    def __init__(self, service: Service) -> None:
        registry, name = service.registry, service.name
        published = Counter(
            "ambidex_customer_values_published_total",
            "Customer-value figures published and written (one per account, month and "
            "currency changed), or emptied (a tombstone).",
            ("service", "kind"), registry=registry)
        self.figures = published.labels(name, "figures")
        self.emptied = published.labels(name, "emptied")
        self.positions = Counter(
            "ambidex_customer_value_positions_folded_total",
            "Receivable positions (ambidex.receivable-position) folded.",
            ("service",), registry=registry).labels(name)
        self.statuses = Counter(
            "ambidex_customer_value_statuses_folded_total",
            "Fulfilment statuses (ambidex.fulfilment-status) folded.",
            ("service",), registry=registry).labels(name)
        self.as_of = Gauge(
            "ambidex_customer_value_as_of_timestamp_seconds",
            "The as-of time of the figures: the older of the two databases' source "
            "times.", ("service",), registry=registry).labels(name)


class Effects:
    """The write-back and publishing of one worker (the sink once started)."""

    def __init__(self, service: Service, observer: ValueObserver | None = None) -> None:
        self.service = service
        self.observer = observer
        self.metrics = ValueMetrics(service)
        #: ``ambidex_source_truncates_total`` (the answers: .truncates)
        self.truncates = TruncateCounter(service.registry, service.name)
        self.sink: PositionGuardedSink | None = None
        #: the outcome of the step being committed (handed to the observer after)
        self._pending: Outcome | None = None

    def started(self, pool: asyncpg.Pool) -> None:
        self.sink = PositionGuardedSink(pool, name="customer_value",
                                        metrics=self.service.metrics,
                                        retry=self.service.retry)

    async def apply(self, step: Applied[Outcome], fold: ValueFold) -> None:
        """Everything ``step`` decided, done and acknowledged (idempotent)."""
        service = self.service
        out = step.outcome
        self._pending = None
        await effects_of_step(
            service, step, fold.held,
            (lambda: asyncio.gather(self.write_back(out), self.publish(out)))
            if out.values else None,
            truncates=self.truncates, stale=out.stale,
        )
        m = self.metrics
        emptied = sum(1 for v in out.values.values() if v is None)
        m.figures.inc(len(out.values) - emptied)
        m.emptied.inc(emptied)
        m.positions.inc(out.positions)
        m.statuses.inc(out.statuses)
        if out.as_of is not None:
            m.as_of.set(out.as_of.timestamp())
        self._pending = out

    async def committed(self, _: ValueFold) -> None:
        """After the checkpoint commit: the observer hears what the step published."""
        out, self._pending = self._pending, None
        if out is None or self.observer is None or not (out.values or out.risks):
            return
        self.observer.committed(Update(out.values, out.risks, out.as_of))

    async def write_back(self, out: Outcome) -> None:
        position = out.position
        assert position is not None and self.sink is not None
        writes: list[SinkWrite] = []
        for key, value in out.values.items():
            if value is None:
                account, month, currency = key
                writes.append(SPEC.delete({"account_id": account,
                                           "month": month_start(month),
                                           "currency_code": currency}, position))
            else:
                writes.append(SPEC.upsert(emit.row(value, out.as_of), position))
        await self.sink.apply(writes)

    def check(self, step: Applied[Outcome], fold: ValueFold, *, prune: bool = False
              ) -> BadInput | None:
        """The first of the step's records its schema refuses (the kit's output check:
        its transaction is then rejected whole instead of failing the effects);
        ``prune``: leave every refused one out (not written back, not published)."""
        out = step.outcome
        codec = self.service.codec
        present = [(key, value) for key, value in out.values.items() if value is not None]
        if not prune:
            return first_refused(
                codec, ((SCHEMA_NAME, emit.record(value, out.as_of)) for _, value in present))
        kept, first = publishable(codec, SCHEMA_NAME, present,
                                  lambda item: emit.record(item[1], out.as_of))
        published = {key for key, _ in kept}
        for key, _ in present:
            if key not in published:
                del out.values[key]
        return first

    async def publish(self, out: Outcome) -> None:
        items = [(VALUE_TOPIC, SCHEMA_NAME, emit.key(key), emit.record(value, out.as_of))
                 for key, value in out.values.items() if value is not None]
        await self.service.require_publisher().publish_many(items)
        gone = [key for key, value in out.values.items() if value is None]
        if gone:
            producer = self.service.producer
            assert producer is not None
            sent = [await producer.send(VALUE_TOPIC, value=None, key=emit.key(key))
                    for key in gone]
            await asyncio.gather(*sent)


__all__ = ["SCHEMA_NAME", "VALUE_TOPIC", "Effects", "ValueMetrics"]

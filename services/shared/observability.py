"""Metrics shared by every Ambidex service (health: :mod:`.health`, logs: :mod:`.logs`).

- :class:`ServiceMetrics` registers the platform metrics on a registry the service
  creates and passes in (no global registry, nothing registered at import); services
  add their business metrics to the same registry.
- :class:`EventLoopMonitor` measures how late the event loop runs a periodic timer
  (``ambidex_event_loop_lag_seconds``): work that does not give the loop back shows
  up there before probes and consumer heartbeats time out.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import time
from collections.abc import Iterable, Iterator
from typing import Final, Literal, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from services.shared.memory_metrics import MemoryCollector

# --------------------------------------------------------------------------- metrics

EventOutcome = Literal["applied", "skipped_stale", "dead_lettered"]
SinkOutcome = Literal["written", "stale"]
EVENT_OUTCOMES: Final = frozenset({"applied", "skipped_stale", "dead_lettered"})
SINK_OUTCOMES: Final = frozenset({"written", "stale"})

#: Source commit -> effect: 5 ms .. 60 s; finer from 50 ms to 1 s, where a live
#: service's median and p99 lie (a percentile read between 0.25 and 0.5 was a guess)
END_TO_END_LAG_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0,
    2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
)
#: How late the event loop runs a timer: 1 ms .. 30 s (above 0.1 s probes and consumer
#: heartbeats wait visibly; the consumer's session times out at 10 s).
EVENT_LOOP_LAG_BUCKETS: Final = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)
#: One sink transaction: 0.5 ms .. 10 s.
SINK_LATENCY_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)


class Appended(Protocol):
    """A consumed Kafka record: ``timestamp`` is when it reached Kafka (milliseconds)."""

    @property
    def timestamp(self) -> int: ...


def last_appended(records: Iterable[Appended]) -> float | None:
    """When the newest of ``records`` reached Kafka (Unix seconds; None for no record):
    for a source transaction's records, where the service's own lag starts
    (:meth:`ServiceMetrics.observe_service_lags`)."""
    newest = max((record.timestamp for record in records), default=None)
    return None if newest is None else newest / 1000


def _observe_ages(histogram: Histogram, stamps: Iterable[float], now: float | None) -> None:
    """How long ago each of ``stamps`` (Unix seconds) was, at ``now`` (a clock skew: 0)."""
    at = time.time() if now is None else now
    observe_many(histogram, [max(0.0, at - ts) for ts in stamps])


def observe_many(histogram: Histogram, amounts: Iterable[float]) -> None:
    """``histogram.observe(a)`` for every amount, with one locked increment per bucket
    and one for the sum instead of two per observation: a replay observes thousands of
    source transactions a batch, and ``observe`` one by one was ~2% of its CPU.

    Uses the client's bucket bounds and values (``_upper_bounds``, ``_buckets``,
    ``_sum``); without them (another client version) it falls back to ``observe``.
    ``tests/unit/test_observability.py`` checks both give the same exposition."""
    upper_bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if upper_bounds is None or buckets is None or total is None:
        for amount in amounts:
            histogram.observe(amount)
        return
    counts: dict[int, int] = {}
    observed = 0.0
    for amount in amounts:
        if amount != amount:  # NaN: no bucket takes it; leave it to the client
            histogram.observe(amount)
            continue
        # the first bucket whose bound is >= amount, as ``observe`` picks it
        index = bisect.bisect_left(upper_bounds, amount)
        counts[index] = counts.get(index, 0) + 1
        observed += amount
    if not counts:
        return
    total.inc(observed)
    for index, count in counts.items():
        buckets[index].inc(count)


class ServiceMetrics:
    """The platform metrics of one service, registered on ``registry``.

    Every metric carries a ``service`` label (so one Prometheus job can scrape all four
    services); the helper methods fill it in. Label values that come from a closed set
    (outcomes) are checked, so a typo cannot create a new time series.
    """

    def __init__(self, service: str, registry: CollectorRegistry) -> None:
        self.service = service
        self.registry = registry
        self.events_total = Counter(
            "ambidex_events_total",
            "Events consumed, by outcome (applied, skipped_stale, dead_lettered).",
            ("service", "topic", "outcome"),
            registry=registry,
        )
        self.dead_letters_total = Counter(
            "ambidex_dead_letters_total",
            "Events sent to the dead-letter topic, by kind of reason.",
            ("service", "reason_kind"),
            registry=registry,
        )
        self.end_to_end_lag_seconds = Histogram(
            "ambidex_end_to_end_lag_seconds",
            "Time from the source transaction's commit to its effect (write-back/publish).",
            ("service", "path"),
            buckets=END_TO_END_LAG_BUCKETS,
            registry=registry,
        )
        self.service_lag_seconds = Histogram(
            "ambidex_service_lag_seconds",
            "Time from the source transaction's last record in Kafka (its timestamp) to "
            "its effect: the service's own share of the end-to-end lag, capture excluded.",
            ("service", "path"),
            buckets=END_TO_END_LAG_BUCKETS,
            registry=registry,
        )
        self.consumer_lag_messages = Gauge(
            "ambidex_consumer_lag_messages",
            "Messages between the consumer's position and the partition's high watermark.",
            ("service", "topic", "partition"),
            registry=registry,
        )
        self.state_restore_seconds = Gauge(
            "ambidex_state_restore_seconds",
            "Time the last start took to rebuild the local state from its changelog (0: none).",
            ("service",),
            registry=registry,
        )
        self.state_restored_records = Gauge(
            "ambidex_state_restored_records",
            "Changelog records read by the last restore of the local state.",
            ("service",),
            registry=registry,
        )
        self.table_rows = Gauge(
            "ambidex_table_rows",
            "Keys in a state table of this worker (e.g. inventory-projection's availability).",
            ("service", "table"),
            registry=registry,
        )
        self.sink_latency_seconds = Histogram(
            "ambidex_sink_latency_seconds",
            "Duration of one sink transaction (one or more source transactions).",
            ("service", "sink"),
            buckets=SINK_LATENCY_BUCKETS,
            registry=registry,
        )
        self.sink_rows_total = Counter(
            "ambidex_sink_rows_total",
            "Rows handed to a sink, by outcome (written, stale = older than stored).",
            ("service", "sink", "outcome"),
            registry=registry,
        )
        self.last_source_commit_timestamp_seconds = Gauge(
            "ambidex_last_source_commit_timestamp_seconds",
            "Commit time (Unix seconds) of the newest source transaction processed.",
            ("service", "database"),
            registry=registry,
        )
        self.oldest_held_transaction_age_seconds = Gauge(
            "ambidex_oldest_held_transaction_age_seconds",
            "Seconds this process has held its oldest source transaction waiting for the "
            "rest of its records (0 when none); given up after AMBIDEX_MAX_HOLD_SECONDS of "
            "source time.",
            ("service", "database"),
            registry=registry,
        )
        self.held_transactions = Gauge(
            "ambidex_held_transactions",
            "Source transactions held waiting for the rest of their records.",
            ("service", "database"),
            registry=registry,
        )
        self.rejected_transactions_total = Counter(
            "ambidex_rejected_transactions_total",
            "Source transactions given up whole (every record to the dead letters), by "
            "cause (undecodable, inconsistent, incomplete, overflow, bad_row, "
            "unpublishable).",
            ("service", "database", "cause"),
            registry=registry,
        )
        self.outputs_refused_total = Counter(
            "ambidex_outputs_refused_total",
            "Outputs their schema refuses that no transaction of the step made (left "
            "out, not published; services/shared/output_check.py).",
            ("service",),
            registry=registry,
        )
        self.awaiting_verdicts = Gauge(
            "ambidex_awaiting_verdicts",
            "Rows naming a reference not known yet whose records are held for a verdict "
            "(dead-lettered, cause unknown_reference, once the grace has passed).",
            ("service",),
            registry=registry,
        )
        self.unjudged_references = Gauge(
            "ambidex_unjudged_references",
            "Rows naming an unknown reference released without a verdict since the start "
            "(more were waiting than the limit allows).",
            ("service",),
            registry=registry,
        )
        self.orphan_transactions_total = Counter(
            "ambidex_orphan_transactions_total",
            "Leftovers of source transactions applied before a restart, released unapplied.",
            ("service", "database"),
            registry=registry,
        )
        self.retries_total = Counter(
            "ambidex_retries_total",
            "Work retried because a database or the broker was unavailable (unavailable) "
            "or a concurrent writer won a race (conflict).",
            ("service", "kind"),
            registry=registry,
        )
        self.event_loop_lag_seconds = Histogram(
            "ambidex_event_loop_lag_seconds",
            "How late the event loop ran a timer due every 0.1 s: time it was blocked by "
            "work that did not give it back.",
            ("service",),
            buckets=EVENT_LOOP_LAG_BUCKETS,
            registry=registry,
        )
        self.event_loop_lag_max_seconds = Gauge(
            "ambidex_event_loop_lag_max_seconds",
            "The largest event-loop lag in the last minute.",
            ("service",),
            registry=registry,
        )
        self.memory = MemoryCollector(service)
        registry.register(self.memory)
        # process_resident_memory_bytes, CPU seconds, open files (a registry of our own
        # has none of prometheus_client's default collectors)
        ProcessCollector(registry=registry)
        self._last_commit: dict[str, float] = {}

    # -- helpers --------------------------------------------------------------------

    def event(self, topic: str, outcome: EventOutcome, count: int = 1) -> None:
        if outcome not in EVENT_OUTCOMES:
            raise ValueError(f"unknown event outcome {outcome!r}")
        self.events_total.labels(self.service, topic, outcome).inc(count)

    def dead_letter(self, reason_kind: str) -> None:
        """``reason_kind`` is a class of reasons (e.g. ``SchemaViolation``), not the text."""
        self.dead_letters_total.labels(self.service, reason_kind).inc()

    def observe_end_to_end_lag(
        self, path: str, source_commit_ts: float, now: float | None = None
    ) -> float:
        """Record ``now - source_commit_ts`` (Unix seconds) for ``path``; returns it."""
        lag = max(0.0, (time.time() if now is None else now) - source_commit_ts)
        self.end_to_end_lag_seconds.labels(self.service, path).observe(lag)
        return lag

    def observe_end_to_end_lags(
        self, path: str, source_commit_ts: Iterable[float], now: float | None = None
    ) -> None:
        """:meth:`observe_end_to_end_lag` for many commits (e.g. every source transaction
        of a batch): the labelled histogram is looked up once, not per observation."""
        _observe_ages(self.end_to_end_lag_seconds.labels(self.service, path),
                      source_commit_ts, now)

    def observe_service_lags(
        self, path: str, appended_ts: Iterable[float], now: float | None = None
    ) -> None:
        """``now`` minus each transaction's last record timestamp (Unix seconds) for
        ``path``: what the service itself took, Debezium's capture left out (the
        end-to-end lag minus it is the capture's share)."""
        _observe_ages(self.service_lag_seconds.labels(self.service, path), appended_ts, now)

    def retried(self, kind: str) -> None:
        self.retries_total.labels(self.service, kind).inc()

    def set_consumer_lag(self, topic: str, partition: int, lag: int) -> None:
        self.consumer_lag_messages.labels(self.service, topic, str(partition)).set(lag)

    def set_table_rows(self, table: str, rows: int) -> None:
        self.table_rows.labels(self.service, table).set(rows)

    def set_held_transactions(self, database: str, held: int, oldest_seconds: float) -> None:
        """How many source transactions of ``database`` are held, and for how long (clock
        seconds) the oldest one (see :mod:`services.shared.holding`)."""
        self.held_transactions.labels(self.service, database).set(held)
        self.oldest_held_transaction_age_seconds.labels(self.service, database).set(
            oldest_seconds
        )

    def transaction_rejected(self, database: str, cause: str) -> None:
        self.rejected_transactions_total.labels(self.service, database, cause).inc()

    def set_awaiting_verdicts(self, rows: int, unjudged: int) -> None:
        """How many rows await an unknown-reference verdict, and how many were released
        without one (services/shared/verdicts.py)."""
        self.awaiting_verdicts.labels(self.service).set(rows)
        self.unjudged_references.labels(self.service).set(unjudged)

    def state_restored(self, seconds: float, records: int) -> None:
        """A stateful service rebuilt its local state from the changelog at start."""
        self.state_restore_seconds.labels(self.service).set(seconds)
        self.state_restored_records.labels(self.service).set(records)

    def orphan_transactions(self, database: str, count: int) -> None:
        self.orphan_transactions_total.labels(self.service, database).inc(count)

    def source_commit_seen(self, database: str, commit_ts: float) -> None:
        """Advance the last-commit gauge of ``database`` (never moves it backwards)."""
        if commit_ts > self._last_commit.get(database, float("-inf")):
            self._last_commit[database] = commit_ts
            self.last_source_commit_timestamp_seconds.labels(self.service, database).set(
                commit_ts
            )

    def record_sink(self, sink: str, seconds: float, written: int, stale: int) -> None:
        self.sink_latency_seconds.labels(self.service, sink).observe(seconds)
        if written:
            self.sink_rows_total.labels(self.service, sink, "written").inc(written)
        if stale:
            self.sink_rows_total.labels(self.service, sink, "stale").inc(stale)

    @contextlib.contextmanager
    def sink_timer(self, sink: str) -> Iterator[None]:
        """Time a block into ``ambidex_sink_latency_seconds{sink}``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.sink_latency_seconds.labels(self.service, sink).observe(
                time.perf_counter() - start
            )


class EventLoopMonitor:
    """Measures event-loop lag: a task sleeps ``interval`` s and records how much later
    than due it woke up (``ambidex_event_loop_lag_seconds``, and the largest lag of the
    last ``window`` s in ``ambidex_event_loop_lag_max_seconds``). A loop blocked for
    9 s shows as one 9 s observation once it runs again (nothing can be recorded, or
    scraped, while it is blocked)."""

    def __init__(
        self, metrics: ServiceMetrics, *, interval: float = 0.1, window: float = 60.0
    ) -> None:
        self.interval = interval
        self.window = window
        self._histogram = metrics.event_loop_lag_seconds.labels(metrics.service)
        self._max = metrics.event_loop_lag_max_seconds.labels(metrics.service)
        # the largest lag of the current and of the previous window
        self._current = self._previous = 0.0
        self._window_start = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    def observe(self, lag: float, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if now - self._window_start >= self.window:
            self._previous = self._current if now - self._window_start < 2 * self.window else 0.0
            self._current = 0.0
            self._window_start = now
        self._current = max(self._current, lag)
        self._histogram.observe(lag)
        self._max.set(max(self._current, self._previous))

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            self.observe(max(0.0, loop.time() - due))

    def start(self) -> asyncio.Task[None]:
        """Start measuring on the running loop (call from inside it)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self.run(), name="event-loop-monitor"
            )
        return self._task

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

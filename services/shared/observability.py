"""Metrics, health endpoints and structured logs shared by every Ambidex service.

- :class:`ServiceMetrics` registers the platform metrics on a registry the service
  creates and passes in (no global registry, nothing registered at import); services
  add their business metrics to the same registry.
- :class:`HealthState` holds liveness (event loop ticking, no fatal error) and
  readiness (named checks, pushed with :meth:`HealthState.set_check` or probed on
  request with :meth:`HealthState.add_probe`, results cached for ``probe_cache``
  seconds): the broker (:func:`kafka_probe`), the databases (:func:`pool_probe`) and
  each batch source's consumer are asked live, never set once at start-up.
- :class:`EventLoopMonitor` measures how late the event loop runs a periodic timer
  (``ambidex_event_loop_lag_seconds``): work that does not give the loop back shows
  up there before probes and consumer heartbeats time out.
- :func:`start_observability_server` serves ``/metrics``, ``/healthz``, ``/readyz``.
- :func:`configure_logging` installs a JSON (or console) formatter that masks secrets,
  and a :class:`RepeatedLogFilter` so an outage's repeated client errors are logged once
  per interval with a count.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
import re
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal, TextIO

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from services.shared.resilience import RepeatGate

# --------------------------------------------------------------------------- metrics

EventOutcome = Literal["applied", "skipped_stale", "dead_lettered"]
SinkOutcome = Literal["written", "stale"]
EVENT_OUTCOMES: Final = frozenset({"applied", "skipped_stale", "dead_lettered"})
SINK_OUTCOMES: Final = frozenset({"written", "stale"})

#: Source commit -> effect: 5 ms .. 60 s.
END_TO_END_LAG_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
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
        self.consumer_lag_messages = Gauge(
            "ambidex_consumer_lag_messages",
            "Messages between the consumer's position and the partition's high watermark.",
            ("service", "topic", "partition"),
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
            "cause (undecodable, inconsistent, incomplete, overflow).",
            ("service", "database", "cause"),
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
        at = time.time() if now is None else now
        observe_many(
            self.end_to_end_lag_seconds.labels(self.service, path),
            [max(0.0, at - ts) for ts in source_commit_ts],
        )

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


# ---------------------------------------------------------------------------- health

Probe = Callable[[], Awaitable[tuple[bool, str]]]


@dataclass
class CheckStatus:
    ok: bool
    detail: str = ""
    since: float = field(default_factory=time.time)

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "detail": self.detail, "since": _iso(self.since)}


class HealthState:
    """Liveness and readiness of one service process.

    - Liveness fails once :meth:`record_fatal` was called, or when the watchdog
      started with :meth:`start_watchdog` has not ticked for ``stall_after`` seconds
      (the event loop was blocked).
    - Readiness needs liveness and every named check passing. Checks are declared with
      :meth:`expect` (failing until first reported), set with :meth:`set_check`, or
      probed on each request with :meth:`add_probe` (an async callable returning
      ``(ok, detail)``; a probe that raises or exceeds ``probe_timeout`` fails).
    """

    def __init__(
        self, *, stall_after: float = 30.0, probe_timeout: float = 2.0,
        probe_cache: float = 1.0,
    ) -> None:
        self.stall_after = stall_after
        self.probe_timeout = probe_timeout
        self.probe_cache = probe_cache
        self._checks: dict[str, CheckStatus] = {}
        self._probes: dict[str, Probe] = {}
        # per probe: when it was last asked and the answer (or the answer being awaited)
        self._probed: dict[str, tuple[float, asyncio.Future[tuple[bool, str]]]] = {}
        self._fatal: str | None = None
        self._last_tick: float | None = None
        self._watchdog: asyncio.Task[None] | None = None

    # -- checks ---------------------------------------------------------------------

    def expect(self, *names: str) -> None:
        for name in names:
            self._checks.setdefault(name, CheckStatus(False, "not reported yet"))

    def set_check(self, name: str, ok: bool, detail: str = "") -> None:
        current = self._checks.get(name)
        if current is not None and current.ok == ok:
            current.detail = detail
        else:
            self._checks[name] = CheckStatus(ok, detail)

    def add_probe(self, name: str, probe: Probe) -> None:
        self._probes[name] = probe
        self._probed.pop(name, None)

    def record_fatal(self, reason: str) -> None:
        """Something the process cannot recover from: liveness fails from now on."""
        if self._fatal is None:
            self._fatal = reason

    @property
    def fatal(self) -> str | None:
        return self._fatal

    # -- watchdog -------------------------------------------------------------------

    def start_watchdog(self, interval: float = 1.0) -> asyncio.Task[None]:
        """Tick every ``interval`` s on the running loop (call from inside the loop)."""
        self._last_tick = time.monotonic()

        async def tick() -> None:
            while True:
                self._last_tick = time.monotonic()
                await asyncio.sleep(interval)

        self._watchdog = asyncio.get_running_loop().create_task(tick(), name="health-watchdog")
        return self._watchdog

    def stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    # -- answers --------------------------------------------------------------------

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        checks: dict[str, Any] = {}
        checks["fatal_error"] = CheckStatus(self._fatal is None, self._fatal or "").as_json()
        if self._last_tick is not None:
            age = time.monotonic() - self._last_tick
            checks["event_loop"] = CheckStatus(
                age < self.stall_after, f"last tick {age:.1f}s ago"
            ).as_json()
        ok = all(c["ok"] for c in checks.values())
        return ok, {"status": "ok" if ok else "failing", "checks": checks}

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        live, _ = self.liveness()
        checks: dict[str, Any] = {"live": {"ok": live, "detail": "", "since": _iso(time.time())}}
        checks.update({name: status.as_json() for name, status in self._checks.items()})
        names = list(self._probes)
        results = await asyncio.gather(*(self._probe(n) for n in names))
        for name, (ok, detail) in zip(names, results, strict=True):
            self.set_check(name, ok, detail)
            checks[name] = self._checks[name].as_json()
        ok = all(c["ok"] for c in checks.values())
        return ok, {"status": "ok" if ok else "failing", "checks": checks}

    def _probe(self, name: str) -> asyncio.Future[tuple[bool, str]]:
        """The probe's answer, asked again once the cached one is ``probe_cache`` old;
        concurrent requests share one asking (a probe costs a round trip)."""
        now = time.monotonic()
        cached = self._probed.get(name)
        if cached is not None and (not cached[1].done() or now - cached[0] < self.probe_cache):
            return asyncio.shield(cached[1])
        future = asyncio.ensure_future(self._run_probe(self._probes[name]))
        self._probed[name] = (now, future)
        return asyncio.shield(future)

    async def _run_probe(self, probe: Probe) -> tuple[bool, str]:
        try:
            return await asyncio.wait_for(probe(), self.probe_timeout)
        except TimeoutError:
            return False, f"probe timed out after {self.probe_timeout}s"
        except Exception as exc:  # a failing probe is an answer, not a crash
            return False, mask_secrets(f"{type(exc).__name__}: {exc}")


def kafka_probe(client: Any) -> Probe:
    """Readiness of the broker connection: a metadata request over ``client`` (an
    ``AIOKafkaClient``, e.g. ``producer.client``) must be answered."""

    async def probe() -> tuple[bool, str]:
        metadata = await client.fetch_all_metadata()  # KafkaError: no broker answered
        return True, f"{len(metadata.brokers())} broker(s) answering"

    return probe


def pool_probe(pool: Any) -> Probe:
    """Readiness of a database: ``SELECT 1`` over a connection of ``pool`` (asyncpg)."""

    async def probe() -> tuple[bool, str]:
        await pool.fetchval("SELECT 1")
        return True, "answering"

    return probe


@dataclass
class ObservabilityServer:
    """A running ``/metrics`` + health server; ``port`` is the bound port."""

    runner: web.AppRunner
    host: str
    port: int

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    async def close(self) -> None:
        await self.runner.cleanup()


def observability_app(registry: CollectorRegistry, health: HealthState) -> web.Application:
    async def metrics(_: web.Request) -> web.Response:
        body = await asyncio.get_running_loop().run_in_executor(None, generate_latest, registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        ok, body = health.liveness()
        return web.json_response(body, status=200 if ok else 503)

    async def readyz(_: web.Request) -> web.Response:
        ok, body = await health.readiness()
        return web.json_response(body, status=200 if ok else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def start_observability_server(
    host: str, port: int, registry: CollectorRegistry, health: HealthState
) -> ObservabilityServer:
    """Serve ``/metrics``, ``/healthz``, ``/readyz`` on ``host:port`` (0 = a free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    runner = web.AppRunner(observability_app(registry, health), access_log=None)
    await runner.setup()
    site = web.SockSite(runner, sock)
    await site.start()
    return ObservabilityServer(runner=runner, host=host, port=sock.getsockname()[1])


# --------------------------------------------------------------------------- logging

_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s:/@?#'\"\\]*:)([^\s@/'\"\\]+)(@)")
_KV_PASSWORD = re.compile(
    r"""(?ix)
    ( (?:password|passwd|pwd|secret|api[_-]?key|token)
      [\\"']* \s* [=:] \s* [\\"']* )
    ( [^\s"',;&}\\]+ )
    """
)
_SECRET_KEY = re.compile(r"(?i)password|passwd|secret|token|api[_-]?key|dsn")
MASK: Final = "***"

# Attributes every LogRecord has; anything else came from ``extra=``.
_RECORD_ATTRS: Final = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__
) | {"message", "asctime", "service", "taskName"}


def mask_secrets(text: str) -> str:
    """Mask URL passwords (``scheme://user:PW@``) and ``password=PW``-like pairs."""
    text = _URL_PASSWORD.sub(rf"\1{MASK}\3", text)
    return _KV_PASSWORD.sub(rf"\1{MASK}", text)


def _mask_value(key: str, value: Any) -> Any:
    if isinstance(value, str):
        if _SECRET_KEY.search(key) and not key.endswith("_kind"):
            masked = mask_secrets(value)
            # A bare secret (no URL/kv shape) under a secret-looking key: hide it all.
            return masked if masked != value or "://" in value else MASK
        return mask_secrets(value)
    if isinstance(value, Mapping):
        return {str(k): _mask_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mask_value(key, v) for v in value]
    return value


class SecretMaskingFilter(logging.Filter):
    """Rewrites each record's message and string extras with secrets masked.

    Installed on the handler by :func:`configure_logging`; the formatters mask their
    final output again, so a secret in an exception text is caught too.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the record
            message = f"{record.msg!r} % {record.args!r}"
        record.msg = mask_secrets(message)
        record.args = None
        for key, value in list(record.__dict__.items()):
            if key not in _RECORD_ATTRS:
                record.__dict__[key] = _mask_value(key, value)
        return True


#: Loggers of the Kafka client libraries and the worker framework: during a broker
#: outage aiokafka alone logs hundreds of connection errors a second per client
THROTTLED_LOGGERS: Final = ("aiokafka", "kafka", "faust", "mode")


class RepeatedLogFilter(logging.Filter):
    """Lets a repeated warning/error through once per ``interval`` seconds, with the
    count of those suppressed in between (``repeated`` field, and in the message).

    A repeat is the same logger, level and message template (``record.msg`` before its
    arguments: "Unable connect to node with id %s: %s" is one message whatever the node
    and error). Applies to records of ``loggers`` (and their children) at WARNING and
    above; installed on the handler by :func:`configure_logging` (a filter on a logger
    would not see its children's records). ``interval=0`` lets everything through.
    """

    def __init__(
        self, interval: float, loggers: Iterable[str] = THROTTLED_LOGGERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.interval = interval
        self.prefixes = tuple(loggers)
        self._gate = RepeatGate(interval)
        self._clock = clock

    def _throttled(self, record: logging.LogRecord) -> bool:
        if self.interval <= 0 or record.levelno < logging.WARNING:
            return False
        name = record.name
        return any(name == p or name.startswith(p + ".") for p in self.prefixes)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._throttled(record):
            return True
        key = (record.name, record.levelno, str(record.msg))
        repeated = self._gate.admit(key, self._clock())
        if repeated is None:
            return False
        if repeated:
            record.repeated = repeated
            record.msg = (
                f"{record.msg} (and {repeated} more like this in the last "
                f"{self.interval:g}s)"
            )
        return True


class _ServiceFilter(logging.Filter):
    def __init__(self, service: str | None) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "service"):
            record.service = self.service
        return True


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z"
    )


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _RECORD_ATTRS}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, service, extras, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "service": getattr(record, "service", None),
        }
        for key, value in _extras(record).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exception"] = mask_secrets(self.formatException(record.exc_info))
        if record.stack_info:
            entry["stack"] = mask_secrets(self.formatStack(record.stack_info))
        return mask_secrets(json.dumps(entry, default=str, ensure_ascii=False))


class ConsoleFormatter(logging.Formatter):
    """``2024-05-01T12:00:00.000Z INFO  logger [service] message key=value``."""

    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        line = (
            f"{_iso(record.created)} {record.levelname:<7} {record.name}"
            f" [{getattr(record, 'service', None) or '-'}] {record.getMessage()}"
        )
        if extras:
            line += f"  {extras}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return mask_secrets(line)


_HANDLER_MARK: Final = "_ambidex_handler"


def configure_logging(
    format: Literal["json", "console"] = "json",
    level: str | int = "INFO",
    *,
    service: str | None = None,
    stream: TextIO | None = None,
    repeat_interval: float = 10.0,
) -> logging.Handler:
    """Install the Ambidex handler on the root logger (replacing a previous one).

    Returns the handler (tests read what it wrote through ``stream``).
    """
    if format not in ("json", "console"):
        raise ValueError(f"log format must be 'json' or 'console', not {format!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if format == "json" else ConsoleFormatter())
    handler.addFilter(RepeatedLogFilter(repeat_interval))
    handler.addFilter(_ServiceFilter(service))
    handler.addFilter(SecretMaskingFilter())
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _HANDLER_MARK, False):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    return handler

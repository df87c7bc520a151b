"""Metrics, health endpoints and structured logs (DESIGN.md invariant 7).

Protects: every platform metric is exposed with the agreed name and labels on the
service's own registry (no global state); /healthz and /readyz answer 200/503 with the
checks in JSON, on a port chosen by the OS; log lines are single JSON objects and never
carry a password.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from services.shared.health import HealthState, ObservabilityServer, start_observability_server
from services.shared.logs import configure_logging, mask_secrets
from services.shared.observability import (
    END_TO_END_LAG_BUCKETS,
    ServiceMetrics,
    last_appended,
    observe_many,
)

# ------------------------------------------------------------------------ metrics


def test_metrics_live_on_the_given_registry_only() -> None:
    r1, r2 = CollectorRegistry(), CollectorRegistry()
    ServiceMetrics("order-sync", r1)
    ServiceMetrics("order-sync", r2)  # no clash: nothing global
    with pytest.raises(ValueError):
        ServiceMetrics("order-sync", r1)  # same registry twice is a programming error


def test_the_service_lag_starts_at_the_newest_records_timestamp() -> None:
    records = [SimpleNamespace(timestamp=ms) for ms in (1_000_250, 1_000_900, 1_000_100)]
    assert last_appended(records) == 1_000.9  # milliseconds -> Unix seconds, the newest
    assert last_appended([]) is None


def test_metric_names_labels_and_values() -> None:
    registry = CollectorRegistry()
    m = ServiceMetrics("inventory-projection", registry)
    m.event("cdc.erp.stock_quant", "applied", 3)
    m.event("cdc.erp.stock_quant", "skipped_stale")
    m.dead_letter("SchemaViolation")
    m.observe_end_to_end_lag("stock->atp", source_commit_ts=100.0, now=100.25)
    m.observe_service_lags("stock->atp", [100.2, 100.26], now=100.25)  # a clock skew: 0
    m.set_consumer_lag("cdc.erp.stock_quant", 2, 17)
    m.set_table_rows("atp", 1200)
    m.record_sink("crm", 0.004, written=5, stale=2)
    m.source_commit_seen("erp", 1_700_000_000.5)
    m.source_commit_seen("erp", 1_600_000_000.0)  # older: ignored
    with m.sink_timer("erp"):
        pass
    svc = {"service": "inventory-projection"}
    get = registry.get_sample_value
    assert get("ambidex_events_total", {**svc, "topic": "cdc.erp.stock_quant",
                                        "outcome": "applied"}) == 3
    assert get("ambidex_events_total", {**svc, "topic": "cdc.erp.stock_quant",
                                        "outcome": "skipped_stale"}) == 1
    assert get("ambidex_dead_letters_total", {**svc, "reason_kind": "SchemaViolation"}) == 1
    lag = {**svc, "path": "stock->atp"}
    assert get("ambidex_end_to_end_lag_seconds_count", lag) == 1
    assert get("ambidex_end_to_end_lag_seconds_bucket", {**lag, "le": "0.25"}) == 1
    assert get("ambidex_end_to_end_lag_seconds_bucket", {**lag, "le": "0.1"}) == 0
    assert get("ambidex_service_lag_seconds_count", lag) == 2
    assert get("ambidex_service_lag_seconds_bucket", {**lag, "le": "0.005"}) == 1
    assert get("ambidex_service_lag_seconds_bucket", {**lag, "le": "0.05"}) == 2
    assert get("ambidex_consumer_lag_messages", {**svc, "topic": "cdc.erp.stock_quant",
                                                 "partition": "2"}) == 17
    assert get("ambidex_table_rows", {**svc, "table": "atp"}) == 1200
    assert get("ambidex_sink_rows_total", {**svc, "sink": "crm", "outcome": "written"}) == 5
    assert get("ambidex_sink_rows_total", {**svc, "sink": "crm", "outcome": "stale"}) == 2
    assert get("ambidex_sink_latency_seconds_count", {**svc, "sink": "crm"}) == 1
    assert get("ambidex_sink_latency_seconds_count", {**svc, "sink": "erp"}) == 1
    assert get("ambidex_last_source_commit_timestamp_seconds",
               {**svc, "database": "erp"}) == 1_700_000_000.5


def test_lag_buckets_span_5ms_to_60s() -> None:
    assert END_TO_END_LAG_BUCKETS[0] == 0.005 and END_TO_END_LAG_BUCKETS[-1] == 60.0
    assert list(END_TO_END_LAG_BUCKETS) == sorted(END_TO_END_LAG_BUCKETS)


def test_observe_many_exposes_what_observing_one_by_one_does() -> None:
    """The batched histogram update (bucket bounds hit exactly, beyond the last finite
    bound, zero, a NaN) leaves the same exposition as ``observe`` per amount."""
    amounts = [0.0, 0.005, 0.0051, *END_TO_END_LAG_BUCKETS, 61.0, 1e9, 0.2, 0.2, float("nan")]
    exposed = []
    for batched in (False, True):
        metrics = ServiceMetrics("svc", CollectorRegistry())
        histogram = metrics.end_to_end_lag_seconds.labels("svc", "p")
        if batched:
            observe_many(histogram, amounts)
        else:
            for amount in amounts:
                histogram.observe(amount)
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(
                generate_latest(metrics.registry).decode()
            )
            if family.name == "ambidex_end_to_end_lag_seconds"
            for s in family.samples
            if not s.name.endswith("_created")
        }
        exposed.append(samples)
    assert exposed[0] and repr(exposed[0]) == repr(exposed[1])  # repr: NaN == NaN


def test_unknown_outcome_is_refused() -> None:
    m = ServiceMetrics("x", CollectorRegistry())
    with pytest.raises(ValueError):
        m.event("t", "applyed")  # type: ignore[arg-type]


def test_services_add_business_metrics_on_the_same_registry() -> None:
    from prometheus_client import Counter

    registry = CollectorRegistry()
    ServiceMetrics("receivables", registry)
    Counter("ambidex_discrepancies", "x", ("service",), registry=registry).labels(
        "receivables"
    ).inc()
    names = {f.name for f in registry.collect()}
    assert {"ambidex_discrepancies", "ambidex_events"} <= names


# ------------------------------------------------------------------------- health


@pytest.fixture
async def served() -> AsyncIterator[tuple[ObservabilityServer, HealthState, ServiceMetrics]]:
    registry = CollectorRegistry()
    metrics = ServiceMetrics("order-sync", registry)
    health = HealthState(probe_timeout=0.2)
    server = await start_observability_server("127.0.0.1", 0, registry, health)
    try:
        yield server, health, metrics
    finally:
        await server.close()
        health.stop_watchdog()


async def _get(server: ObservabilityServer, path: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session, session.get(server.url + path) as resp:
        return resp.status, resp.headers["Content-Type"], await resp.text()


async def test_port_zero_binds_a_free_port(
    served: tuple[ObservabilityServer, HealthState, ServiceMetrics],
) -> None:
    server, _, _ = served
    assert server.port > 0
    assert server.url == f"http://127.0.0.1:{server.port}"


async def test_metrics_endpoint_serves_prometheus_text(
    served: tuple[ObservabilityServer, HealthState, ServiceMetrics],
) -> None:
    server, _, metrics = served
    metrics.event("cdc.crm.orders", "dead_lettered")
    status, content_type, body = await _get(server, "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body)}
    sample = next(s for s in families["ambidex_events"].samples if s.name.endswith("_total"))
    assert sample.labels == {"service": "order-sync", "topic": "cdc.crm.orders",
                             "outcome": "dead_lettered"}
    assert sample.value == 1


async def test_liveness_fails_after_a_fatal_error(
    served: tuple[ObservabilityServer, HealthState, ServiceMetrics],
) -> None:
    server, health, _ = served
    status, _, body = await _get(server, "/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    health.record_fatal("rocksdb corrupted")
    status, _, body = await _get(server, "/healthz")
    data = json.loads(body)
    assert status == 503 and data["status"] == "failing"
    assert data["checks"]["fatal_error"] == {
        "ok": False, "detail": "rocksdb corrupted", "since": data["checks"]["fatal_error"]["since"]
    }


async def test_liveness_fails_when_the_loop_stops_ticking(
    served: tuple[ObservabilityServer, HealthState, ServiceMetrics],
) -> None:
    server, health, _ = served
    health.stall_after = 0.2
    health.start_watchdog(interval=0.05)
    await asyncio.sleep(0.1)
    assert (await _get(server, "/healthz"))[0] == 200
    health.stop_watchdog()  # simulates a loop that no longer runs our ticker
    await asyncio.sleep(0.3)
    status, _, body = await _get(server, "/healthz")
    assert status == 503 and json.loads(body)["checks"]["event_loop"]["ok"] is False


async def test_readiness_lists_checks_and_needs_all_of_them(
    served: tuple[ObservabilityServer, HealthState, ServiceMetrics],
) -> None:
    server, health, _ = served
    health.expect("kafka", "database", "assignment")
    status, content_type, body = await _get(server, "/readyz")
    data: dict[str, Any] = json.loads(body)
    assert status == 503 and content_type.startswith("application/json")
    assert set(data["checks"]) == {"live", "kafka", "database", "assignment"}
    assert data["checks"]["kafka"]["detail"] == "not reported yet"

    health.set_check("kafka", True, "3 brokers")
    health.set_check("assignment", True, "6 partitions")

    async def database_probe() -> tuple[bool, str]:
        return True, "select 1 ok"

    health.add_probe("database", database_probe)
    status, _, body = await _get(server, "/readyz")
    data = json.loads(body)
    assert status == 200, data
    assert data["status"] == "ok"
    assert data["checks"]["database"]["detail"] == "select 1 ok"

    health.set_check("kafka", False, "no brokers")
    status, _, body = await _get(server, "/readyz")
    assert status == 503 and json.loads(body)["checks"]["kafka"]["detail"] == "no brokers"


async def test_failing_or_hanging_probe_is_not_ready_and_masks_secrets(
    served: tuple[ObservabilityServer, HealthState, ServiceMetrics],
) -> None:
    server, health, _ = served

    async def broken() -> tuple[bool, str]:
        raise ConnectionError("cannot reach postgresql://app:hunter2@db:5432/erp")

    async def hangs() -> tuple[bool, str]:
        await asyncio.sleep(10)
        return True, ""

    health.add_probe("database", broken)
    health.add_probe("kafka", hangs)
    status, _, body = await _get(server, "/readyz")
    data = json.loads(body)
    assert status == 503
    assert "hunter2" not in body
    assert data["checks"]["database"]["ok"] is False
    assert "ConnectionError" in data["checks"]["database"]["detail"]
    assert "timed out" in data["checks"]["kafka"]["detail"]


async def test_fatal_error_also_makes_it_unready(
    served: tuple[ObservabilityServer, HealthState, ServiceMetrics],
) -> None:
    server, health, _ = served
    health.record_fatal("boom")
    assert (await _get(server, "/readyz"))[0] == 503


# ------------------------------------------------------------------------ logging


@pytest.fixture
def log_stream() -> io.StringIO:
    return io.StringIO()


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Any:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_the_standard_fields_and_extras(log_stream: io.StringIO) -> None:
    from decimal import Decimal

    configure_logging("json", "INFO", service="order-sync", stream=log_stream)
    log = logging.getLogger("ambidex.test")
    log.debug("hidden")
    log.info("applied %d rows", 3, extra={"topic": "cdc.crm.orders", "amount": Decimal("1.10")})
    (line,) = _lines(log_stream)
    assert line["level"] == "INFO"
    assert line["logger"] == "ambidex.test"
    assert line["message"] == "applied 3 rows"
    assert line["service"] == "order-sync"
    assert line["topic"] == "cdc.crm.orders"
    assert line["amount"] == "1.10"  # exact, as text
    assert line["ts"].endswith("Z") and "T" in line["ts"]


def test_exception_is_one_string_field_on_one_line(log_stream: io.StringIO) -> None:
    configure_logging("json", "INFO", service="s", stream=log_stream)
    try:
        raise RuntimeError("kaput\nsecond line")
    except RuntimeError:
        logging.getLogger("x").exception("failed")
    assert len(log_stream.getvalue().splitlines()) == 1
    (line,) = _lines(log_stream)
    assert isinstance(line["exception"], str)
    assert "RuntimeError: kaput" in line["exception"]


SECRETS = [
    "connecting to postgresql://ambidex_app:hunter2@db:5432/crm",
    "dsn=postgres://u:hunter2@h/db",
    "PGPASSWORD=hunter2 psql",
    "host=db user=app password=hunter2 dbname=erp",
    'config {"password": "hunter2"}',
]


@pytest.mark.parametrize("message", SECRETS)
def test_secrets_are_masked_in_json_logs(log_stream: io.StringIO, message: str) -> None:
    configure_logging("json", "INFO", service="s", stream=log_stream)
    logging.getLogger("x").info(message)
    logging.getLogger("x").info("via args %s", message)
    logging.getLogger("x").info("via extra", extra={"detail": message, "db_password": "hunter2"})
    try:
        raise ValueError(message)
    except ValueError:
        logging.getLogger("x").exception("with traceback")
    assert "hunter2" not in log_stream.getvalue()
    assert "***" in log_stream.getvalue()
    assert len(_lines(log_stream)) == 4  # masking never breaks the JSON


@pytest.mark.parametrize("message", SECRETS)
def test_secrets_are_masked_in_console_logs(log_stream: io.StringIO, message: str) -> None:
    configure_logging("console", "INFO", service="s", stream=log_stream)
    logging.getLogger("x").warning(message, extra={"k": 1})
    text = log_stream.getvalue()
    assert "hunter2" not in text and "WARNING" in text and "[s]" in text and "k=1" in text


def test_mask_secrets_keeps_harmless_text() -> None:
    text = "order 42 confirmed at http://localhost:8083/connectors user=app"
    assert mask_secrets(text) == text


def test_configure_logging_replaces_its_previous_handler(log_stream: io.StringIO) -> None:
    other = io.StringIO()
    configure_logging("json", "INFO", stream=other)
    configure_logging("json", "WARNING", stream=log_stream)
    logging.getLogger("x").warning("once")
    assert other.getvalue() == ""
    assert len(_lines(log_stream)) == 1
    with pytest.raises(ValueError):
        configure_logging("xml", "INFO")  # type: ignore[arg-type]

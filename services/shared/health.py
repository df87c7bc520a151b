"""Health of a service: liveness, readiness and the endpoints that serve them.

- :class:`HealthState` holds liveness (event loop ticking, no fatal error) and
  readiness (named checks, pushed with :meth:`HealthState.set_check` or probed on
  request with :meth:`HealthState.add_probe`, results cached for ``probe_cache``
  seconds): the broker (:func:`kafka_probe`), the databases (:func:`pool_probe`) and
  each batch source's consumer are asked live, never set once at start-up.
- :func:`start_observability_server` serves ``/metrics``, ``/healthz``, ``/readyz``.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from services.shared.logs import iso_time, mask_secrets

Probe = Callable[[], Awaitable[tuple[bool, str]]]


@dataclass
class CheckStatus:
    ok: bool
    detail: str = ""
    since: float = field(default_factory=time.time)

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "detail": self.detail, "since": iso_time(self.since)}


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
        now = iso_time(time.time())
        checks: dict[str, Any] = {"live": {"ok": live, "detail": "", "since": now}}
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
    return await serve_app(observability_app(registry, health), host, port)


async def serve_app(app: web.Application, host: str, port: int) -> ObservabilityServer:
    """Serve ``app`` on ``host:port`` (0 = a free port; the bound one is returned)."""
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
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.SockSite(runner, sock)
    await site.start()
    return ObservabilityServer(runner=runner, host=host, port=sock.getsockname()[1])

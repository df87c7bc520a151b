"""Session fixtures: the real stack, started once and shared by every integration test.

Tests that need fresh state create fresh topics, consumer groups and database rows;
none of them restarts the stack. Set AMBIDEX_TEST_KEEP_STACK=1 to leave the stack
running (and its state directory in place) after the session, for debugging.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from ambidex.stack.config import StackConfig
from ambidex.stack.local import LocalStack, StackAddresses
from ambidex.stack.schema_registry import registry_environment


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # integration tests live in tests/integration; mark them so `-m "not integration"`
    # gives the fast unit run
    for item in items:
        if "tests/integration" in str(item.path):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def stack_state_dir() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="ambidex-test-"))
    directory.chmod(0o755)  # PostgreSQL runs as its own user and must reach its data
    yield directory
    if not os.environ.get("AMBIDEX_TEST_KEEP_STACK"):
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
async def local_stack(
    stack_state_dir: Path, request: pytest.FixtureRequest
) -> AsyncIterator[LocalStack]:
    """Kafka (KRaft), Connect with Debezium, CRM and ERP PostgreSQL, reference schemas.

    The broker gets its SASL/SCRAM listener, authorizer and users only when the session
    holds a test marked ``secured_kafka``; every other client stays on the plain listener.
    """
    started = time.monotonic()

    def progress(message: str) -> None:
        print(f"[stack {time.monotonic() - started:5.1f}s] {message}", flush=True)

    secured = any(item.get_closest_marker("secured_kafka") for item in request.session.items)
    config = StackConfig.from_env().ephemeral(stack_state_dir, secured=secured)
    stack = LocalStack(config, progress=progress)
    try:
        await stack.up(seed=True)
        # the test process reads the stack's topics as its services do: registry-framed
        # values resolve their schema ids with the stack's registry (dead-letter tools too)
        os.environ.update(registry_environment(config))
        yield stack
    finally:
        if not os.environ.get("AMBIDEX_TEST_KEEP_STACK"):
            await stack.down()


@pytest.fixture(scope="session")
def stack(local_stack: LocalStack) -> StackAddresses:
    return local_stack.addresses


@pytest.fixture
def unique() -> str:
    """A short unique suffix for topics, consumer groups and business keys of one test."""
    return uuid.uuid4().hex[:10]


async def wait_until(predicate: object, *, timeout: float = 60.0, interval: float = 0.2) -> None:
    """Poll until the (sync or async) predicate is true; fails with the timeout reached.

    Used to wait for asynchronous effects, never to assert on timing.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate() if callable(predicate) else predicate
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout:.0f}s")
        await asyncio.sleep(interval)


@pytest.fixture(scope="session")
def fresh_database(local_stack: LocalStack) -> Callable[[str, str], Awaitable[str]]:
    """Factory: a new, empty database in the stack's CRM or ERP cluster (admin DSN).

    For tests that need a whole database of their own (schema scripts, sinks) without
    starting another PostgreSQL; these databases are not captured by the connectors.
    """
    import asyncpg

    async def create(cluster: str, prefix: str) -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        server = local_stack.postgres[cluster]
        connection = await asyncpg.connect(server.admin_dsn("postgres"))
        try:
            await connection.execute(f'CREATE DATABASE "{name}"')
        finally:
            await connection.close()
        return server.admin_dsn(name)

    return create


class ServiceProcess:
    """One service running as its own OS process against the test stack, as in production.

    ``kill()`` is SIGKILL (no shutdown hooks, offsets not committed), ``start()`` starts
    it again with the same settings and state directory.
    """

    def __init__(
        self, name: str, stack: LocalStack, environment: dict[str, str], *,
        label: str | None = None,
    ) -> None:
        self.name = name
        self.stack = stack
        self.environment = environment
        self.log_path = stack.config.logs_dir / f"test-{label or name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.environment['AMBIDEX_METRICS_PORT']}"

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ambidex.cli", "run", self.name],
                env={**os.environ, **self.environment},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    async def wait_ready(self, timeout: float = 120.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient() as client:
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    raise AssertionError(f"{self.name} exited: {self.log_tail()}")
                try:
                    if (await client.get(f"{self.metrics_url}/readyz")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.3)
        raise AssertionError(f"{self.name} not ready after {timeout:.0f}s: {self.log_tail()}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="session")
def session_services() -> dict[str, ServiceProcess]:
    """The session's service processes by name, as ``service_process`` started them
    (running, stopped or killed since): for a test that must run without one of them."""
    return {}


@pytest.fixture(scope="session")
def service_process(
    local_stack: LocalStack, session_services: dict[str, ServiceProcess]
) -> Iterator[Callable[[str], ServiceProcess]]:
    """Factory: start a service (once per session and name) as a real process."""
    from ambidex.stack.config import _free_ports

    running = session_services

    def start(name: str) -> ServiceProcess:
        if name not in running:
            metrics, dashboard = _free_ports(2)
            environment = {
                **local_stack.service_environment(name, secured=False),
                "AMBIDEX_METRICS_PORT": str(metrics),
                # customer-value's dashboard (other services ignore it)
                "AMBIDEX_CUSTOMER_VALUE_DASHBOARD_PORT": str(dashboard),
                "AMBIDEX_LOG_FORMAT": "json",
            }
            running[name] = ServiceProcess(name, local_stack, environment)
            running[name].start()
        return running[name]

    yield start
    for process in running.values():
        process.stop()

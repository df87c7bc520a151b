"""Session fixtures: the real stack, started once and shared by every integration test.

Tests that need fresh state create fresh topics, consumer groups and database rows;
none of them restarts the stack. Set AMBIDEX_TEST_KEEP_STACK=1 to leave the stack
running (and its state directory in place) after the session, for debugging.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from ambidex.stack.config import StackConfig
from ambidex.stack.local import LocalStack, StackAddresses


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
async def local_stack(stack_state_dir: Path) -> AsyncIterator[LocalStack]:
    """Kafka (KRaft), Connect with Debezium, CRM and ERP PostgreSQL, reference schemas."""
    started = time.monotonic()

    def progress(message: str) -> None:
        print(f"[stack {time.monotonic() - started:5.1f}s] {message}", flush=True)

    stack = LocalStack(StackConfig.from_env().ephemeral(stack_state_dir), progress=progress)
    try:
        await stack.up(seed=True)
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

"""Invariant: `ambidex stack up` on a running stack starts only what is down. With Connect
killed and a workload writing to both databases, two `stack up` bring Connect and both
connectors back while no DDL statement reaches the live CRM or ERP database (PostgreSQL
logs every DDL statement during the test), no migration is applied again (the records
and their applied_at are unchanged), the running broker keeps its process, and the
workload's transactions all succeed."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator

import asyncpg
import pytest

from ambidex.stack.local import DATABASES, LocalStack
from ambidex.stack.processes import DetachedProcess, pid_alive
from ambidex.stack.status import gather_status
from ambidex.workload import run_workload
from tests.conftest import wait_until

pytestmark = pytest.mark.integration

#: "<time> [<pid>] <user>@<database> LOG:  statement: <sql>" (log_line_prefix of the stack)
CANARY = "stack restart test"
STATEMENT = re.compile(r"\] (?P<user>\S+)@(?P<database>\S+) LOG:  statement: (?P<sql>.*)")


async def _admin(local_stack: LocalStack, database: str) -> asyncpg.Connection:
    return await asyncpg.connect(local_stack.addresses.admin_dsn(database))


async def _migrations(local_stack: LocalStack) -> dict[str, list[tuple[object, ...]]]:
    found = {}
    for database in DATABASES:
        connection = await _admin(local_stack, database)
        try:
            rows = await connection.fetch(
                "SELECT version, name, checksum, applied_at"
                " FROM ambidex_meta.schema_migrations ORDER BY version"
            )
        finally:
            await connection.close()
        found[database] = [tuple(row) for row in rows]
    return found


@pytest.fixture
async def ddl_logged(local_stack: LocalStack) -> AsyncIterator[dict[str, int]]:
    """Both servers log every DDL statement while the test runs; yields log offsets."""
    offsets = {}
    for database in DATABASES:
        offsets[database] = local_stack.postgres[database].log_file.stat().st_size
        connection = await _admin(local_stack, database)
        try:
            await connection.execute("ALTER SYSTEM SET log_statement = 'ddl'")
            await connection.execute("SELECT pg_reload_conf()")
        finally:
            await connection.close()
    yield offsets
    for database in DATABASES:
        connection = await _admin(local_stack, database)
        try:
            await connection.execute("ALTER SYSTEM RESET log_statement")
            await connection.execute("SELECT pg_reload_conf()")
        finally:
            await connection.close()


def _ddl_since(local_stack: LocalStack, offsets: dict[str, int]) -> list[str]:
    statements = []
    for database, offset in offsets.items():
        with local_stack.postgres[database].log_file.open("rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
        for line in text.splitlines():
            match = STATEMENT.search(line)
            # services create their own tracking tables as ambidex_app: not the stack's
            if match and match["database"] in DATABASES and match["user"] != "ambidex_app":
                statements.append(f"{match['user']}@{match['database']}: {match['sql']}")
    return statements


async def _stack_up(local_stack: LocalStack) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ambidex.cli", "stack", "up", "--no-services",
        "--workload-rate", "0",
        env={**os.environ, **local_stack.config.environment()},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    text = output.decode(errors="replace")
    assert process.returncode == 0, text
    return text


# restarting Connect took over 3 minutes on the shared 2-core machine
@pytest.mark.timeout(1200)
async def test_up_on_a_running_stack_restarts_connect_and_runs_no_ddl(
    local_stack: LocalStack, ddl_logged: dict[str, int]
) -> None:
    applied_before = await _migrations(local_stack)
    assert all(applied_before.values())
    kafka_pid = local_stack.kafka.pid()
    connect = DetachedProcess("connect", local_stack.config)
    dead_connect = connect.pid()
    assert dead_connect is not None
    os.kill(dead_connect, signal.SIGKILL)
    await wait_until(lambda: not pid_alive(dead_connect), timeout=30)

    for database in DATABASES:  # a canary: proves the log shows DDL when there is some
        connection = await _admin(local_stack, database)
        try:
            await connection.execute(f"COMMENT ON SCHEMA ambidex_meta IS '{CANARY}'")
        finally:
            await connection.close()

    stop = asyncio.Event()
    addresses = local_stack.addresses
    workload = asyncio.create_task(
        run_workload(
            addresses.crm_admin_dsn, addresses.erp_admin_dsn,
            rate=40, duration=float("inf"), seed=23, stop=stop,
        )
    )
    try:
        await asyncio.sleep(1)  # the workload's transactions are under way
        first = await _stack_up(local_stack)
        second = await _stack_up(local_stack)
    finally:
        stop.set()
        summary = await workload

    assert _ddl_since(local_stack, ddl_logged) == [
        f"postgres@{database}: COMMENT ON SCHEMA ambidex_meta IS '{CANARY}'"
        for database in DATABASES
    ]
    assert await _migrations(local_stack) == applied_before
    assert "0 migrations applied now" in first and "0 migrations applied now" in second
    assert "already seeded" in second
    assert "ambidex-crm unchanged, left running" in second
    assert local_stack.kafka.pid() == kafka_pid
    assert connect.pid() not in (None, dead_connect)
    assert summary.total_failed == 0, summary.error_samples
    assert summary.total_completed > 0
    status = await gather_status(local_stack, sample_seconds=0.2)
    assert status.healthy, status.connectors

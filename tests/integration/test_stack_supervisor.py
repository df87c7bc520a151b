"""Invariant: a service the local stack starts is supervised as Kubernetes would run it —
SIGKILLed, it comes back by itself and ready, its restart counted in `stack status` —
and the status of a stack probes the metrics port that stack recorded for the service
(not a fixed port another stack on the machine may hold). Stopping the supervisor stops
the service with it; `start_services` on a running service leaves it alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest

from ambidex.stack.local import LocalStack
from ambidex.stack.ports import recorded_ports
from ambidex.stack.processes import DetachedProcess, pid_alive
from ambidex.stack.status import ComponentStatus, gather_status
from tests.conftest import wait_until

pytestmark = pytest.mark.integration

SERVICE = "order-sync"


async def _component(local_stack: LocalStack) -> ComponentStatus:
    status = await gather_status(local_stack, sample_seconds=0.1)
    return next(c for c in status.components if c.name == SERVICE)


@pytest.fixture
async def supervised(local_stack: LocalStack) -> AsyncIterator[DetachedProcess]:
    supervisor = DetachedProcess(SERVICE, local_stack.config)
    assert supervisor.pid() is None, "the stack's order-sync is already running"
    local_stack.start_services([SERVICE])
    yield supervisor
    await supervisor.terminate()


# the session stack's start counts against the first test that uses it
@pytest.mark.timeout(900)
async def test_a_killed_service_comes_back_ready_and_the_restart_is_counted(
    local_stack: LocalStack, supervised: DetachedProcess
) -> None:
    port = recorded_ports(local_stack.config.state_dir)[SERVICE]

    last: list[ComponentStatus] = []

    async def ready() -> bool:
        last[:] = [await _component(local_stack)]
        return last[0].running and last[0].detail.startswith("ready")

    async def until_ready() -> None:
        try:
            await wait_until(ready, timeout=120)
        except AssertionError:
            log = supervised.log_file
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"
            raise AssertionError(f"{SERVICE} not ready: {last}; its log ends:\n{tail}") from None

    await until_ready()
    first = await _component(local_stack)
    assert first.address == f"http://{local_stack.config.host}:{port}/metrics"
    assert first.restarts == 0
    assert first.pid is not None and first.pid != supervised.pid()

    os.kill(first.pid, signal.SIGKILL)
    await wait_until(lambda: not pid_alive(first.pid or 0), timeout=30)
    await until_ready()
    again = await _component(local_stack)
    assert again.pid != first.pid and again.restarts == 1
    assert "killed by SIGKILL" in again.detail

    supervisor_pid = supervised.pid()
    assert local_stack.start_services([SERVICE]) == {}  # running: left alone
    assert supervised.pid() == supervisor_pid

    result = subprocess.run(
        [sys.executable, "-m", "ambidex.cli", "stack", "status", "--json"],
        env={**os.environ, **local_stack.config.environment()},
        capture_output=True, text=True, timeout=120, check=False,
    )
    status = json.loads(result.stdout)
    shown = next(c for c in status["components"] if c["name"] == SERVICE)
    assert (shown["running"], shown["restarts"], shown["pid"]) == (True, 1, again.pid)
    assert status["addresses"][f"{SERVICE}_metrics_url"] == again.address

    service_pid = again.pid
    assert await supervised.terminate()
    assert service_pid is not None and not pid_alive(service_pid)
    assert not (await _component(local_stack)).running

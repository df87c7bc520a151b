"""What the benchmarks share: a private stack, and a service run as its own process.

:func:`start_private_stack` brings up a whole stack (seeded) on free ports in a fresh
temporary directory. :class:`BenchedService` starts ``ambidex run <service>`` with the
given environment on a free metrics port, waits for ``/readyz``, samples its resident
memory (keeping the peak) and CPU time from ``/proc``, reads its ``/metrics`` and stops
it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import httpx

from ambidex.stack.config import StackConfig, _free_ports
from ambidex.stack.local import LocalStack
from bench.cpus import OwnCore, waited_for_cpu


class BenchedService:
    def __init__(
        self,
        name: str,
        environment: Mapping[str, str],
        log_path: Path,
        command: Sequence[str] | None = None,
    ) -> None:
        self.name = name
        #: what runs the service (``ambidex run <name>`` unless a harness wraps it)
        self.command = list(command or [sys.executable, "-m", "ambidex.cli", "run", name])
        self.port, self.dashboard_port = _free_ports(2)
        self.environment = {
            # customer-value's dashboard, unless given (other services ignore it)
            "AMBIDEX_CUSTOMER_VALUE_DASHBOARD_PORT": str(self.dashboard_port),
            **environment,
            "AMBIDEX_METRICS_PORT": str(self.port),
        }
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.peak_rss = 0.0

    def start(self) -> None:
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                self.command,
                env={**os.environ, **self.environment},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self, timeout: float = 120) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    async def wait_ready(self, timeout: float = 1800) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient() as client:
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"{self.name} exited, see {self.log_path}")
                self.sample_rss()
                try:
                    response = await client.get(f"http://127.0.0.1:{self.port}/readyz")
                    if response.status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f}s")

    def rss_mb(self) -> float:
        """Resident memory now (MB); NaN when the process is gone."""
        if self.process is None:
            return float("nan")
        try:
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return float("nan")

    def sample_rss(self) -> float:
        """Read the RSS now and keep the peak (:attr:`peak_rss`) of the samples."""
        rss = self.rss_mb()
        if rss == rss:  # not NaN
            self.peak_rss = max(self.peak_rss, rss)
        return rss

    def cpu_seconds(self) -> float:
        """User + system CPU time the process has used so far."""
        if self.process is None:
            return 0.0
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def waited_for_cpu(self) -> float:
        """Seconds its threads have been runnable but not running (:mod:`bench.cpus`)."""
        return 0.0 if self.process is None else waited_for_cpu(self.process.pid)

    def own_core(self, stack_dir: Path) -> OwnCore:
        """Put the process alone on one core, the rest of the run (the stack under
        ``stack_dir``, the load, the bench) on the others; the placement, applied."""
        assert self.process is not None, "start the service first"
        placement = OwnCore(self.process.pid, stack_dir)
        placement.apply()
        return placement

    async def metrics(self) -> str:
        async with httpx.AsyncClient(timeout=30) as client:
            return (await client.get(f"http://127.0.0.1:{self.port}/metrics")).text


async def start_private_stack(
    progress: Callable[[str], None], *, connect_plugins: Sequence[str] = ()
) -> tuple[LocalStack, Path]:
    """A seeded stack on free ports in a new temporary directory (the caller stops it
    and removes the directory). A start that fails stops what did start (e.g. both
    PostgreSQL servers) and removes the directory before the error goes on.
    ``connect_plugins``: optional Connect plugins (``ambidex.stack.jars.OPTIONAL_PLUGINS``)."""
    state_dir = Path(tempfile.mkdtemp(prefix="ambidex-bench-"))
    state_dir.chmod(0o755)
    config = StackConfig.from_env().ephemeral(state_dir)
    if connect_plugins:
        config = replace(config, connect_plugins=tuple(connect_plugins))
    stack = LocalStack(config, progress=progress)
    try:
        await stack.up(seed=True)
    except BaseException:
        await stack.down()
        shutil.rmtree(state_dir, ignore_errors=True)
        raise
    return stack, state_dir


T = TypeVar("T")


def run_bench(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` where SIGTERM (``kill``, a CI timeout) cancels it as Ctrl-C
    does, so the bench's ``finally`` stops every server it started (a killed
    million-change run left its stack running); exits 130 when interrupted."""

    async def guarded() -> T:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await main

    try:
        return asyncio.run(guarded())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted: everything the bench started is stopped", file=sys.stderr)
        sys.exit(130)


def positive(text: str) -> float:
    """An argparse type: a number above zero (a phase of no seconds measures nothing)."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text}: must be above zero")
    return value


def reproduce_line(module: str) -> str:
    """The command that reproduces this run (module and the arguments given)."""
    return f"uv run python -m {module} " + " ".join(sys.argv[1:])

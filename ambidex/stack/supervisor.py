"""Restart a local-stack service whenever it exits, with CrashLoop-style backoff.

Each service of the local stack runs under its own supervisor process (what the
``run/<name>.pid`` file names), as a pod's container runs under the kubelet with
``restartPolicy: Always``: when the service exits, for whatever reason, it is started
again after 1 s, then 2 s, 4 s, ... up to a cap; a run that lasted ``reset_after``
seconds resets the delay. The restart count, the last exit and the current state are
kept in ``run/<name>.supervisor.json`` for ``stack status``.

The service runs in its own process group (the supervisor alone signals it, once) and
dies with its supervisor (``PR_SET_PDEATHSIG``), so stopping or killing the supervisor
never leaves an unsupervised service behind. SIGTERM to the supervisor stops the
service gracefully (SIGKILL after ``stop_grace`` seconds) and ends the supervisor.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    initial: float = 1.0
    factor: float = 2.0
    maximum: float = 60.0
    #: a run at least this long counts as healthy: the next crash starts from ``initial``
    reset_after: float = 60.0

    def delay(self, consecutive_crashes: int) -> float:
        """Seconds to wait before start number ``consecutive_crashes`` + 1."""
        if consecutive_crashes < 1:
            return 0.0
        return float(min(self.maximum, self.initial * self.factor ** (consecutive_crashes - 1)))

    def crashes_after(self, consecutive_crashes: int, ran_seconds: float) -> int:
        """The consecutive-crash count once a run of ``ran_seconds`` has ended."""
        return 1 if ran_seconds >= self.reset_after else consecutive_crashes + 1


def state_file(state_dir: Path, name: str) -> Path:
    return state_dir / "run" / f"{name}.supervisor.json"


def read_state(state_dir: Path, name: str) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads(state_file(state_dir, name).read_text())
    except (OSError, ValueError):
        return None
    return state


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class Supervisor:
    def __init__(
        self,
        name: str,
        command: Sequence[str],
        state_dir: Path,
        policy: BackoffPolicy,
        *,
        stop_grace: float = 25.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.command = list(command)
        self.path = state_file(state_dir, name)
        self.policy = policy
        self.stop_grace = stop_grace
        self.clock = clock
        self.restarts = 0
        self.last_exit: dict[str, Any] | None = None
        self.child: subprocess.Popen[bytes] | None = None
        self.stopping = False

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        crashes = 0
        while not self.stopping:
            started = self.clock()
            self.child = subprocess.Popen(
                self.command, process_group=0, preexec_fn=_die_with_parent
            )
            self._write("running", pid=self.child.pid)
            self._log("started", pid=self.child.pid, restarts=self.restarts)
            returncode = self._wait_child()
            if self.stopping:
                break
            ran = self.clock() - started
            crashes = self.policy.crashes_after(crashes, ran)
            delay = self.policy.delay(crashes)
            self.last_exit = {
                "reason": describe_exit(returncode),
                "returncode": returncode,
                "at": _now(),
                "ran_seconds": round(ran, 1),
            }
            self._log("exited; restarting", level="WARNING", restart_in=delay, **self.last_exit)
            self._write("backoff", restart_in=delay, restart_at=time.time() + delay)
            self._sleep(delay)
            if not self.stopping:
                self.restarts += 1
        self._write("stopped")
        self._log("stopped")
        return 0

    def _on_stop(self, _signum: int, _frame: object) -> None:
        if self.stopping:
            return
        self.stopping = True
        if self.child is not None and self.child.poll() is None:
            os.killpg(self.child.pid, signal.SIGTERM)

    def _wait_child(self) -> int:
        assert self.child is not None
        while True:
            try:  # short waits: a stop request must be able to start the grace period
                returncode = self.child.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                returncode = None
            if returncode is not None:
                return returncode
            if self.stopping and self._stop_deadline_passed():
                os.killpg(self.child.pid, signal.SIGKILL)

    _stop_requested_at: float | None = None

    def _stop_deadline_passed(self) -> bool:
        if self._stop_requested_at is None:
            self._stop_requested_at = self.clock()
        return self.clock() - self._stop_requested_at > self.stop_grace

    def _sleep(self, seconds: float) -> None:
        deadline = self.clock() + seconds
        while not self.stopping and self.clock() < deadline:
            time.sleep(min(0.2, max(0.0, deadline - self.clock())))

    def _write(self, state: str, **extra: Any) -> None:
        document = {
            "name": self.name,
            "supervisor_pid": os.getpid(),
            "state": state,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "updated_at": _now(),
            **extra,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(document) + "\n")
        temporary.replace(self.path)

    def _log(self, message: str, *, level: str = "INFO", **fields: Any) -> None:
        record = {
            "time": _now(),
            "level": level,
            "logger": "ambidex.supervisor",
            "service": self.name,
            "message": f"{self.name} {message}",
            **fields,
        }
        print(json.dumps(record), file=sys.stdout, flush=True)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")

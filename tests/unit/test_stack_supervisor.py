"""Invariant: a supervised local-stack process is restarted whenever it exits, after a
delay that doubles per consecutive crash up to a cap and starts over after a healthy
run (CrashLoopBackOff), with every restart counted in its state file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ambidex.stack.supervisor import BackoffPolicy, describe_exit, read_state


def test_delays_double_up_to_the_cap() -> None:
    policy = BackoffPolicy(initial=1.0, factor=2.0, maximum=10.0)
    assert [policy.delay(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_a_healthy_run_starts_the_backoff_over() -> None:
    policy = BackoffPolicy(reset_after=60.0)
    assert policy.crashes_after(5, ran_seconds=3.0) == 6
    assert policy.crashes_after(5, ran_seconds=61.0) == 1


def test_exits_are_described_for_people() -> None:
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"
    assert describe_exit(3) == "exit code 3"


def _wait_for(predicate: object, timeout: float = 120.0) -> None:
    # generous: starting ``ambidex.cli`` took 20-30 s on a loaded 2-core machine
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met")


def test_a_process_that_keeps_exiting_is_restarted_and_counted(tmp_path: Path) -> None:
    """The real supervisor process around a command that exits at once."""
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "ambidex.cli", "stack", "supervise", "flaky",
         "--backoff=0.05", "--backoff-max=0.2", "--", sys.executable, "-c", "raise SystemExit(3)"],
        env={**os.environ, "AMBIDEX_STATE_DIR": str(tmp_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_for(lambda: (read_state(tmp_path, "flaky") or {}).get("restarts", 0) >= 3)
        state = read_state(tmp_path, "flaky")
        assert state is not None and state["last_exit"]["reason"] == "exit code 3"
    finally:
        supervisor.send_signal(signal.SIGTERM)
        output, _ = supervisor.communicate(timeout=30)
    assert supervisor.returncode == 0
    assert (read_state(tmp_path, "flaky") or {})["state"] == "stopped"
    lines = [json.loads(line) for line in output.decode().splitlines() if line.startswith("{")]
    assert any(line["message"] == "flaky exited; restarting" for line in lines)


def test_stopping_the_supervisor_stops_its_process_once(tmp_path: Path) -> None:
    marker = tmp_path / "terms"
    child = (
        "import signal, sys, time, pathlib\n"
        f"p = pathlib.Path({str(marker)!r})\n"
        "def stop(*_):\n"
        "    p.write_text(p.read_text() + 'x' if p.exists() else 'x'); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "(p.parent / 'ready').touch()\n"
        "time.sleep(60)\n"
    )
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "ambidex.cli", "stack", "supervise", "calm", "--",
         sys.executable, "-c", child],
        env={**os.environ, "AMBIDEX_STATE_DIR": str(tmp_path)},
        stdout=subprocess.DEVNULL,
    )
    try:
        _wait_for((tmp_path / "ready").exists)
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=30) == 0
    finally:
        if supervisor.poll() is None:  # a failed wait must not leave it restarting forever
            supervisor.kill()
            supervisor.wait()
    assert marker.read_text() == "x"
    assert (read_state(tmp_path, "calm") or {})["restarts"] == 0

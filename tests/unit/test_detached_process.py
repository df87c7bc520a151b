"""Invariant: a Python command the local stack starts detached (a supervisor, a service,
the workload) imports this project's packages even though it runs in the state
directory, whose ``services/<name>/`` state directories Python would otherwise take for
the ``services`` package (the supervisor died at import once receivables had run)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from ambidex.stack.config import StackConfig
from ambidex.stack.processes import DetachedProcess


def _exit_code(pid: int) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    raise AssertionError(f"pid {pid} still running")


def test_a_python_command_in_the_state_directory_imports_the_project(tmp_path: Path) -> None:
    (tmp_path / "services" / "receivables" / "state").mkdir(parents=True)
    config = StackConfig(state_dir=tmp_path, cache_dir=tmp_path / "cache")
    process = DetachedProcess("probe", config)
    pid = process.spawn([
        sys.executable, "-c",
        "import services.receivables.reconcile_cli, ambidex.cli; print('imported')",
    ])
    code = _exit_code(pid)
    assert code == 0, process.log_file.read_text()
    assert "imported" in process.log_file.read_text()

"""bench/cpus.py: the "own core" placement reaches every process it names, with its
threads, and leaves the service's tree out of the rest; the wait-for-a-core figure
comes from the kernel's scheduler statistics of the process's own threads."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from bench.cpus import mentioning, pin, tree, waited_for_cpu

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux only")


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A child with a grandchild, its command line naming a marker."""
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import subprocess, sys, time; "
         "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
         "time.sleep(60)  # ambidex-cpus-marker"])
    try:
        for _ in range(100):  # until the grandchild exists
            if len(tree(child.pid)) == 2:
                break
            subprocess.run(["sleep", "0.05"], check=True)
        yield child
    finally:
        for pid in tree(child.pid) - {child.pid}:
            os.kill(pid, 9)
        child.kill()
        child.wait()


def test_a_tree_holds_the_children_and_their_children(sleeper: subprocess.Popen[bytes]
                                                      ) -> None:
    below = tree(sleeper.pid)
    assert sleeper.pid in below and len(below) == 2
    assert sleeper.pid in tree(os.getpid())


def test_processes_are_found_by_their_command_line(sleeper: subprocess.Popen[bytes]) -> None:
    assert sleeper.pid in mentioning("ambidex-cpus-marker")
    assert not mentioning("ambidex-no-process-says-this-" + "x" * 8)


def test_pinning_moves_every_thread_of_every_process(sleeper: subprocess.Popen[bytes]) -> None:
    one = {min(os.sched_getaffinity(0))}
    pin(tree(sleeper.pid), one)
    for pid in tree(sleeper.pid):
        for thread in os.listdir(f"/proc/{pid}/task"):
            assert os.sched_getaffinity(int(thread)) == one


def test_the_wait_for_a_core_is_a_non_negative_figure_and_zero_for_a_gone_process(
        sleeper: subprocess.Popen[bytes]) -> None:
    assert waited_for_cpu(os.getpid()) >= 0.0
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert waited_for_cpu(gone.pid) == 0.0

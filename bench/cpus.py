"""Where a benchmark's processes run, and how long they waited for a CPU.

On the 2-core development machine the service under test shares both cores with
PostgreSQL, Kafka, Connect and the load generator; on Kubernetes it has its own CPU
request. Two tools keep the two apart in a benchmark's figures:

- :func:`waited_for_cpu` reads the kernel's scheduler statistics (``schedstat``: time
  spent runnable on a run queue, not running) summed over a process's threads, so a
  latency can be split into "the service worked" and "the service waited for a core";
- :class:`OwnCore` pins the service (every thread, and what it starts later) to one core
  and every other process the benchmark started, and the benchmark itself, to the
  others: the service alone on a core, as a pod with a whole-core CPU request placed
  by the static CPU manager would be. The rest of the stack then has one core less.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path


def _threads(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:  # gone
        return []


def _children() -> dict[int, list[int]]:
    """Every process's children, from ``/proc/<pid>/stat``'s parent field."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry))
    return children


def tree(root: int) -> set[int]:
    """``root`` and every process below it."""
    children, found, todo = _children(), set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo += children.get(pid, [])
    return found


def pin(pids: Iterable[int], cpus: set[int]) -> None:
    """Every thread of ``pids`` on ``cpus`` (threads and children started later inherit
    their creator's affinity)."""
    for pid in pids:
        for thread in _threads(pid):
            with contextlib.suppress(OSError):  # exited meanwhile
                os.sched_setaffinity(thread, cpus)


def waited_for_cpu(pid: int) -> float:
    """Seconds the process's threads (those alive now) spent runnable but not running;
    0.0 when the kernel keeps no scheduler statistics."""
    waited = 0
    for thread in _threads(pid):
        try:
            waited += int(Path(f"/proc/{pid}/task/{thread}/schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return waited / 1e9


def mentioning(text: str) -> set[int]:
    """Processes whose command line holds ``text`` (e.g. PostgreSQL servers, which
    ``pg_ctl`` leaves without a parent, found by their data directory)."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if text.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.add(int(entry))
            except OSError:
                continue
    return found


class OwnCore:
    """The service's process tree alone on the last core; everything else this
    benchmark started (the stack's processes, found below this process or by the
    stack's directory in their command line) and the benchmark itself on the others."""

    def __init__(self, service_pid: int, stack_dir: Path) -> None:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            raise RuntimeError("--own-core needs at least two cores")
        self.service_pid, self.stack_dir = service_pid, stack_dir
        self.core, self.others = {cpus[-1]}, set(cpus[:-1])

    def _everything(self) -> set[int]:
        found = tree(os.getpid())
        for pid in mentioning(str(self.stack_dir)):
            found |= tree(pid)
        return found

    def apply(self) -> None:
        """Pin the processes running now (their later threads and children inherit it:
        new PostgreSQL backends the postmaster's, so one call once the stack is up
        holds)."""
        service = tree(self.service_pid)
        pin(self._everything() - service, self.others)
        pin(service, self.core)

    def undo(self) -> None:
        """Every process of the run on every core again."""
        pin(self._everything(), self.core | self.others)

    def describe(self) -> str:
        return (f"the service alone on core {min(self.core)}, the stack and the load on "
                f"core(s) {', '.join(map(str, sorted(self.others)))}")

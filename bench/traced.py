"""Run one service under tracemalloc (a benchmark harness, not used in production).

    python -m bench.traced <service> <report-file> [interval-seconds] [warm-up-seconds]

Runs the service exactly as ``ambidex run <service>`` does; a daemon thread starts
:mod:`tracemalloc` after the warm-up (tracebacks of ``AMBIDEX_TRACE_FRAMES`` frames, 4
unless set; tracing from the start slowed a service's start-up several times over on
a busy machine), takes a baseline snapshot and then, every interval, rewrites
``<report-file>`` with: the traced total, the garbage collector's counts per
generation, the object types that grew most in number since the baseline, and the
allocation sites (by traceback) that grew most.
``bench.soak --tracemalloc`` starts the services this way. Tracing costs CPU and
memory of its own: RSS figures of a traced run are not comparable to a plain one.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import time
import tracemalloc
from collections import Counter
from pathlib import Path

#: traceback depth (AMBIDEX_TRACE_FRAMES): deeper is more telling and much slower
FRAMES = int(os.environ.get("AMBIDEX_TRACE_FRAMES", "4"))
TOP = 25


def _type_counts() -> Counter[str]:
    return Counter(type(o).__qualname__ for o in gc.get_objects())


def _report(path: Path, baseline: tracemalloc.Snapshot, types0: Counter[str], began: float) -> None:
    snapshot = tracemalloc.take_snapshot().filter_traces(
        (tracemalloc.Filter(False, tracemalloc.__file__),)
    )
    current, peak = tracemalloc.get_traced_memory()
    types = _type_counts()
    grown = sorted(((types[t] - types0.get(t, 0), t) for t in types), reverse=True)[:TOP]
    lines = [
        f"after {time.monotonic() - began:.0f}s: traced {current / 2**20:.1f} MiB "
        f"(peak {peak / 2**20:.1f}), gc counts {gc.get_count()}, "
        f"objects per generation {[len(gc.get_objects(g)) for g in range(3)]}, "
        f"frozen {gc.get_freeze_count()}",
        "",
        "object types grown in number since the baseline:",
        *(f"  {n:+10,d}  {t}" for n, t in grown if n > 0),
        "",
        "allocation sites grown since tracing started (by traceback):",
    ]
    for stat in snapshot.compare_to(baseline, "traceback")[:TOP]:
        lines.append(f"  {stat.size_diff / 1024:+10.1f} KiB  {stat.count_diff:+9,d} blocks")
        lines.extend(f"      {line}" for line in stat.traceback.format(most_recent_first=True))
    path.write_text("\n".join(lines) + "\n")


def _watch(path: Path, interval: float, warm_up: float) -> None:
    began = time.monotonic()
    time.sleep(warm_up)
    tracemalloc.start(FRAMES)
    baseline = tracemalloc.take_snapshot()
    types0 = _type_counts()
    path.write_text(f"tracing since {warm_up:.0f}s\n")
    while True:
        time.sleep(interval)
        try:
            _report(path, baseline, types0, began)
        except Exception as error:  # a report that fails must not stop the service
            path.write_text(f"report failed: {error!r}\n")


def _collect(path: Path, interval: float, warm_up: float) -> None:
    """``AMBIDEX_TRACE_MODE=gc``: no tracing; every interval, what a full collection
    finds unreachable (cyclic garbage the generational thresholds left behind) and
    how long it took, appended to the report."""
    began = time.monotonic()
    time.sleep(warm_up)
    with path.open("a") as out:
        while True:
            time.sleep(interval)
            sizes = [len(gc.get_objects(g)) for g in range(3)]
            counts = gc.get_count()
            started = time.perf_counter()
            unreachable = gc.collect()
            out.write(
                f"after {time.monotonic() - began:.0f}s: objects per generation {sizes}, "
                f"gc counts {counts}; a full collection found {unreachable:,} unreachable "
                f"objects in {1000 * (time.perf_counter() - started):.0f} ms\n"
            )
            out.flush()


def main() -> None:
    service, report = sys.argv[1], Path(sys.argv[2])
    interval = float(sys.argv[3]) if len(sys.argv) > 3 else 60.0
    warm_up = float(sys.argv[4]) if len(sys.argv) > 4 else 180.0
    watch = _collect if os.environ.get("AMBIDEX_TRACE_MODE") == "gc" else _watch
    threading.Thread(target=watch, args=(report, interval, warm_up), daemon=True).start()
    from ambidex.cli import main as cli

    cli(["run", service])


if __name__ == "__main__":
    main()

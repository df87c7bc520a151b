"""Soak: every service's memory over a long run of the sample workload at a high rate.

Not a test: it prints figures and the command that reproduces them.

    uv run python -m bench.soak                          # 60 minutes at 100 operations/s
    uv run python -m bench.soak --minutes 15 --rate 60   # a shorter trend
    uv run python -m bench.soak --tracemalloc            # find what grows (slower)

``--late-start 5`` starts the services only after five minutes of workload: they work
through that backlog while the workload goes on, and the samples show what a backlog
makes them hold (``held``: source transactions open, waiting for their other records).

A private stack (seeded, free ports) with inventory-projection and order-sync each as
its own process (``ambidex run <service>``, as in production), and the sample workload
(:mod:`ambidex.workload`: CRM sales, amendments, cancellations, ERP stock, reservations,
production, shipping, invoicing) at ``--rate`` operations per second for ``--minutes``.
Every ``--interval`` seconds each service's resident memory (``VmRSS`` of
``/proc/<pid>/status``), its consumer lag (sum of ``ambidex_consumer_lag_messages``) and
the events it applied (``ambidex_events_total{outcome="applied"}``) are sampled and a
progress line printed, with where the memory is (:mod:`services.shared.memory_metrics`):
the C heap in use and kept free, the state store (memtables, block cache, table
readers) and Python's allocated blocks. At the end: the table of samples, the memory
breakdown every ten minutes, and per service the growth per hour of each (least
squares) over the samples after ``--warm-up`` minutes (the first minutes fill caches,
pools and RocksDB's memtables): a leak grows the heap in use beyond the state store, a
cache filling to its cap stops.

``--tracemalloc`` runs each service under :mod:`bench.traced`: every interval a report
of the allocation sites and object types that grew since the end of the warm-up is
written to ``<report dir>/soak-<service>-tracemalloc.txt``. Tracing has a cost of its
own (CPU and memory): compare RSS only between runs of the same kind.

Everything started is stopped at the end, on failure and on Ctrl-C; the services' logs
are kept in the report directory.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from ambidex.stack.local import LocalStack
from ambidex.workload import WorkloadProgress, run_workload
from bench.common import BenchedService, reproduce_line, start_private_stack
from bench.stats import least_squares_slope
from services.registry import SERVICE_MODULES

SERVICES = tuple(SERVICE_MODULES)


def log(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


@dataclass
class Sample:
    minute: float
    operations: int
    rss: dict[str, float] = field(default_factory=dict)
    lag: dict[str, float] = field(default_factory=dict)
    applied: dict[str, float] = field(default_factory=dict)
    #: source transactions held open (waiting for their other records), both databases
    held: dict[str, float] = field(default_factory=dict)
    #: per service, MB by part (MEMORY_PARTS)
    memory: dict[str, dict[str, float]] = field(default_factory=dict)


#: where the memory is, by the name the report gives it (MB; Python's in k blocks)
MEMORY_PARTS: dict[str, tuple[str, str]] = {
    "heap in use": ("ambidex_c_heap_bytes", 'state="in_use"'),
    "heap free": ("ambidex_c_heap_bytes", 'state="free"'),
    "state store": ("ambidex_state_store_memory_bytes", ""),
    "python kblocks": ("ambidex_python_allocated_blocks", ""),
}


def memory_parts(text: str) -> dict[str, float]:
    parts = {}
    for part, (name, label) in MEMORY_PARTS.items():
        amount = metric_sum(text, name, label)
        parts[part] = amount / 1000 if part == "python kblocks" else amount / 1e6
    return parts


def metric_sum(text: str, name: str, label: str = "") -> float:
    """Sum of every series of ``name`` (those with ``label`` in their labels)."""
    total = 0.0
    for line in text.splitlines():
        if (line.startswith(name + "{") or line.startswith(name + " ")) and label in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def growth_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of ``(minute, MB)`` points, in MB per hour (NaN if < 2)."""
    return least_squares_slope([(x, y) for x, y in points if y == y]) * 60


def service_under_soak(
    stack: LocalStack, name: str, reports: Path, traced: bool, interval: float, warm_up: float
) -> BenchedService:
    environment = {
        **stack.config.environment(),
        **stack.service_environment(name),
        "AMBIDEX_LOG_LEVEL": "WARNING",
    }
    command = None
    if traced:
        command = [
            sys.executable,
            "-m",
            "bench.traced",
            name,
            str(reports / f"soak-{name}-tracemalloc.txt"),
            str(interval),
            str(warm_up),
        ]
    return BenchedService(name, environment, stack.config.logs_dir / f"soak-{name}.log", command)


async def sample(services: list[BenchedService], minute: float, operations: int) -> Sample:
    taken = Sample(minute, operations)
    for service in services:
        if service.process is None:
            continue  # a late start (--late-start): not started yet
        if service.process.poll() is not None:
            raise RuntimeError(f"{service.name} exited, see {service.log_path}")
        taken.rss[service.name] = service.sample_rss()
        try:
            text = await service.metrics()
        except Exception:  # a busy or restarting service: keep the RSS, skip the rest
            taken.lag[service.name] = taken.applied[service.name] = float("nan")
            taken.held[service.name] = float("nan")
            continue
        taken.lag[service.name] = metric_sum(text, "ambidex_consumer_lag_messages")
        taken.applied[service.name] = metric_sum(text, "ambidex_events_total", 'outcome="applied"')
        taken.held[service.name] = metric_sum(text, "ambidex_held_transactions")
        taken.memory[service.name] = memory_parts(text)
    return taken


def progress_line(s: Sample, minutes: float) -> str:
    parts = [f"{s.minute:5.1f}/{minutes:.0f} min  {s.operations:,} operations"]
    for name in s.rss:
        parts.append(
            f"{name} RSS {s.rss[name]:.0f} MB lag {s.lag[name]:,.0f} applied "
            f"{s.applied[name]:,.0f} held {s.held.get(name, math.nan):,.0f}"
        )
    return " | ".join(parts)


def part_growth(samples: list[Sample], name: str, part: str) -> float:
    return growth_per_hour(
        [(s.minute, s.memory.get(name, {}).get(part, math.nan)) for s in samples]
    )


def print_breakdown(samples: list[Sample], names: list[str], every: float = 10.0) -> None:
    """Where each service's memory was, at the samples nearest every ``every`` minutes."""
    chosen: list[Sample] = []
    for s in samples:
        if not chosen or s.minute >= chosen[-1].minute + every or s is samples[-1]:
            chosen.append(s)
    print("  memory breakdown (MB; Python's allocated blocks in thousands):")
    print(f"  {'min':>6} {'service':<22} {'RSS':>7}" + "".join(f" {p:>15}" for p in MEMORY_PARTS))
    for s in chosen:
        for name in names:
            parts = s.memory.get(name, {})
            print(
                f"  {s.minute:6.1f} {name:<22} {s.rss.get(name, math.nan):7.1f}"
                + "".join(f" {parts.get(p, math.nan):15.1f}" for p in MEMORY_PARTS)
            )


ORDER_TABLES = {
    "crm": ("crm.sales_order", "crm.sales_order_line"),
    "erp": ("erp.sales_order", "erp.sales_order_line"),
}


async def order_rows(stack: LocalStack) -> dict[str, int]:
    """Rows of the order tables at the end (what per-order state would grow with)."""
    counts: dict[str, int] = {}
    for database, dsn in (
        ("crm", stack.addresses.crm_admin_dsn),
        ("erp", stack.addresses.erp_admin_dsn),
    ):
        connection = await asyncpg.connect(dsn)
        try:
            for table in ORDER_TABLES[database]:
                counts[table] = int(await connection.fetchval(f"SELECT count(*) FROM {table}"))
        finally:
            await connection.close()
    return counts


def print_report(
    samples: list[Sample],
    names: list[str],
    warm_up: float,
    args: argparse.Namespace,
    progress: WorkloadProgress | None,
    command: str,
    rows: dict[str, int],
) -> None:
    print()
    print(
        f"Ambidex soak: sample workload at {args.rate:g} operations/s for {args.minutes:g} min "
        f"(one machine, {os.cpu_count()} cores){' under tracemalloc' if args.tracemalloc else ''}"
    )
    if progress is not None:
        print(
            f"  workload: {progress.completed:,} operations done ({progress.achieved_rate:.1f}/s),"
            f" {progress.skipped:,} skipped, {progress.failed:,} failed,"
            f" {progress.row_changes:,} row changes"
        )
    if rows:
        print("  order rows at the end: " + ", ".join(f"{t} {n:,}" for t, n in rows.items()))
    header = f"  {'min':>6} {'operations':>11}"
    for name in names:
        header += f"  {name[:20] + ' RSS MB':>27} {'lag':>7} {'applied':>9} {'held':>6}"
    print(header)
    for s in samples:
        line = f"  {s.minute:6.1f} {s.operations:11,d}"
        for name in names:
            line += (
                f"  {s.rss.get(name, math.nan):27.1f} {s.lag.get(name, math.nan):7,.0f}"
                f" {s.applied.get(name, math.nan):9,.0f} {s.held.get(name, math.nan):6,.0f}"
            )
        print(line)
    print_breakdown(samples, names)
    after = [s for s in samples if s.minute >= warm_up]
    for name in names:
        points = [(s.minute, s.rss.get(name, math.nan)) for s in after]
        if len(points) < 2:
            print(f"  {name}: too few samples after the {warm_up:g} min warm-up to fit")
            continue
        parts = ", ".join(f"{part} {part_growth(after, name, part):+.1f}" for part in MEMORY_PARTS)
        print(
            f"  {name}: RSS {points[0][1]:.0f} -> {points[-1][1]:.0f} MB from minute "
            f"{points[0][0]:.1f} to {points[-1][0]:.1f}; fitted growth "
            f"{growth_per_hour(points):+.1f} MB/h after the {warm_up:g} min warm-up "
            f"({parts} per hour)"
        )
    print(f"  reproduce: {command}")


async def soak(args: argparse.Namespace) -> None:
    reports = Path(args.report_dir)
    reports.mkdir(parents=True, exist_ok=True)
    warm_up = args.warm_up if args.warm_up is not None else min(5.0, args.minutes / 4)
    stack, state_dir = await start_private_stack(log)
    services = [
        service_under_soak(stack, name, reports, args.tracemalloc, args.interval, warm_up * 60)
        for name in args.services
    ]
    samples: list[Sample] = []
    rows: dict[str, int] = {}
    last: list[WorkloadProgress] = []
    stop = asyncio.Event()
    workload: asyncio.Task[object] | None = None
    async def start_services() -> None:
        for service in services:
            service.start()
        for service in services:
            await service.wait_ready()
            log(f"{service.name}: ready (pid {service.process.pid if service.process else '?'})")

    try:
        if not args.late_start:
            await start_services()
        addresses = stack.addresses
        log(f"workload: {args.rate:g} operations/s for {args.minutes:g} min (seed {args.seed})")
        workload = asyncio.create_task(
            run_workload(
                addresses.crm_admin_dsn,
                addresses.erp_admin_dsn,
                rate=args.rate,
                duration=args.minutes * 60,
                seed=args.seed,
                progress=last.append,
                stop=stop,
                progress_interval=5.0,
            )
        )
        started = time.monotonic()
        while True:
            done = workload.done()
            minute = (time.monotonic() - started) / 60
            operations = last[-1].completed if last else 0
            del last[:-1]
            samples.append(await sample(services, minute, operations))
            log(progress_line(samples[-1], args.minutes))
            if done:
                workload.result()  # a workload that failed fails the soak
                rows = await order_rows(stack)
                break
            if args.late_start and minute >= args.late_start and services[0].process is None:
                # started, not awaited: a service catches up before it is ready, and
                # the catching up is what the samples are for
                log(f"starting the services behind a {minute:.1f}-minute backlog")
                for service in services:
                    service.start()
            if minute >= args.minutes:
                # behind its rate (a busy machine) the workload would run on until it
                # has dispatched minutes x rate operations: the soak is wall time
                stop.set()
            await asyncio.wait({workload}, timeout=args.interval)
    finally:
        stop.set()
        if workload is not None and not workload.done():
            await asyncio.gather(workload, return_exceptions=True)
        for service in services:
            service.stop(timeout=60)
            if service.log_path.exists():
                shutil.copy(service.log_path, reports / service.log_path.name)
        log(f"service logs kept in {reports}")
        await stack.down()
        shutil.rmtree(state_dir, ignore_errors=True)
        if samples:  # also what an interrupted run got so far
            print_report(
                samples,
                list(args.services),
                warm_up,
                args,
                last[-1] if last else None,
                reproduce_line("bench.soak"),
                rows,
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=60.0, help="workload duration")
    parser.add_argument("--rate", type=float, default=100.0, help="operations per second")
    parser.add_argument("--seed", type=int, default=7, help="workload seed")
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between samples")
    parser.add_argument(
        "--warm-up",
        type=float,
        default=None,
        help="minutes left out of the growth fit (default: a quarter of the run, at most 5)",
    )
    parser.add_argument("--services", nargs="+", default=list(SERVICES), choices=SERVICES)
    parser.add_argument(
        "--late-start",
        type=float,
        default=0.0,
        help="start the services only after this many minutes of workload: they catch up "
        "a backlog while the workload goes on (what a backlog makes them hold)",
    )
    parser.add_argument("--tracemalloc", action="store_true", help="run services traced")
    parser.add_argument(
        "--report-dir",
        default=str(Path(tempfile.gettempdir()) / "ambidex-soak"),
        help="where service logs and tracemalloc reports are kept",
    )
    args = parser.parse_args()

    async def run() -> None:
        task = asyncio.current_task()
        assert task is not None
        # SIGTERM stops everything like Ctrl-C does (the finally above)
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        await soak(args)

    try:
        asyncio.run(run())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("soak interrupted: everything it started is stopped", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()

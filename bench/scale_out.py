"""order-sync scaled out: confirmed CRM orders/s into the ERP with 1, 2 and 4 workers,
each held to the same CPU share (issue 16's target: 4 workers >= 3x one).

Not a test: it prints figures and the command that reproduces them.

    uv run python -m bench.scale_out                                  # 1, 2, 4 workers
    uv run python -m bench.scale_out --orders 3000 --cpu-share 0.05 --workers 1 2 4

How the share is held: each worker process is put into its own cgroup of the ``cpu``
controller with a CFS quota of ``--cpu-share`` of one core (cgroup v1
``cpu.cfs_quota_us`` over ``cpu.cfs_period_us``; cgroup v2 ``cpu.max``), the same for
every worker, so N workers get N shares and the 2-core machine (which also runs both
PostgreSQL servers, Kafka, Connect and the router) is not what limits them. The run
fails when no cgroup can be created (root and a mounted ``cpu`` controller needed).

One private stack; order-sync split as ADR 0003 step 3 has it
(``AMBIDEX_ORDER_SYNC_ROLE``): one router (unconstrained; it also runs the ERP -> CRM
direction) and N workers on ``route.order-sync`` (12 partitions). Per N: N workers are
started, put into their cgroups once ready, and left to join their group (a worker joining while the
others work makes the group rebalance and redo batches: not what is measured); with the
router stopped, ``--orders`` confirmed CRM orders (3-5 lines, one CRM transaction each)
are committed and captured; then the router starts and routes them, and the run lasts
until every one of them has its ERP order. The rate is taken between the 10th and the
90th percentile of the ERP orders' commit times (``erp.sales_order.created_at``), so
the router's start is not counted; the whole drain (from the router's start) is
printed beside it. The workers' CPU seconds over the drain give the CPU an order
(constant if the work really is shared, not repeated).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import time
from pathlib import Path

import asyncpg

from ambidex.stack.local import LocalStack
from bench.common import BenchedService, reproduce_line, run_bench, start_private_stack
from bench.order_sync import _catalogue, _count_synced, _drive, _wait_captured

CGROUP_ROOTS = (Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup"))


def log(message: str) -> None:
    print(f"  {time.strftime('%H:%M:%S')} {message}", flush=True)


class CpuShare:
    """A cgroup holding processes to ``share`` of one core (CFS quota)."""

    def __init__(self, name: str, share: float) -> None:
        self.path: Path | None = None
        period = 100_000
        quota = max(1_000, int(period * share))
        for root in CGROUP_ROOTS:
            if (root / "cpu.cfs_quota_us").exists():  # v1 cpu controller
                path = root / name
                path.mkdir(exist_ok=True)
                (path / "cpu.cfs_period_us").write_text(str(period))
                (path / "cpu.cfs_quota_us").write_text(str(quota))
            elif (root / "cgroup.controllers").exists() and "cpu" in (
                    root / "cgroup.controllers").read_text().split():  # v2
                path = root / name
                path.mkdir(exist_ok=True)
                (path / "cpu.max").write_text(f"{quota} {period}")
            else:
                continue
            self.path = path
            return
        raise RuntimeError("no cgroup cpu controller to hold a worker's share (needs root)")

    def add(self, pid: int) -> None:
        assert self.path is not None
        (self.path / "cgroup.procs").write_text(str(pid))

    def remove(self) -> None:
        if self.path is not None:
            for attempt in range(50):
                try:
                    self.path.rmdir()
                    return
                except OSError:  # processes still leaving
                    time.sleep(0.1 * (attempt + 1))


def _order_sync(stack: LocalStack, role: str, log_path: Path) -> BenchedService:
    return BenchedService("order-sync", {
        **stack.config.environment(),
        **stack.service_environment("order-sync"),
        "AMBIDEX_LOG_LEVEL": "WARNING",
        "AMBIDEX_ORDER_SYNC_ROLE": role,
    }, log_path)


async def _steady_rate(erp_dsn: str, orders: list[int]) -> float:
    """Orders/s between the 10th and 90th percentile of the ERP orders' commit times."""
    erp = await asyncpg.connect(erp_dsn)
    try:
        times = sorted(r["created_at"] for r in await erp.fetch(
            "SELECT created_at FROM erp.sales_order WHERE crm_order_id = ANY($1::bigint[])",
            orders))
    finally:
        await erp.close()
    low, high = times[len(times) // 10], times[(len(times) * 9) // 10]
    return float(len(times) * 0.8 / max((high - low).total_seconds(), 1e-6))


async def run_with(stack: LocalStack, workers: int, args: argparse.Namespace, seed: int,
                   catalogue: tuple[list[int], str, int]) -> tuple[float, float, float]:
    """(orders/s steady, orders/s over the whole drain, CPU ms an order) draining
    ``args.orders`` orders with ``workers`` workers, each held to ``args.cpu_share`` of a
    core."""
    products, warehouse, account = catalogue
    addresses = stack.addresses
    logs = stack.config.logs_dir
    shares = [CpuShare(f"ambidex-bench-worker-{n}", args.cpu_share) for n in range(workers)]
    running = [_order_sync(stack, "worker", logs / f"bench-worker-{n}.log")
               for n in range(workers)]
    router = _order_sync(stack, "router", logs / "bench-router.log")
    try:
        for worker in running:
            worker.start()
        # started unconstrained (Python's start under a 0.05-core quota is a minute of
        # waiting, not work), held to the share once ready, before any order is routed
        await asyncio.gather(*(w.wait_ready(timeout=args.timeout) for w in running))
        for worker, share in zip(running, shares, strict=True):
            assert worker.process is not None
            share.add(worker.process.pid)
        await asyncio.sleep(args.settle)  # the group's last rebalance done
        orders = await _drive(addresses.crm_admin_dsn, products, warehouse, account,
                              count=args.orders, rate=None, seconds=None, seed=seed)
        await _wait_captured(stack, orders)
        log(f"{workers} worker(s) ready; {len(orders):,} orders committed and captured")
        cpu_before = sum(w.cpu_seconds() for w in running)
        started = time.monotonic()
        router.start()
        while await _count_synced(addresses.erp_admin_dsn, orders) < len(orders):
            if time.monotonic() - started > args.timeout:
                raise RuntimeError(f"{workers} worker(s) did not sync {len(orders)} orders "
                                   f"in {args.timeout:.0f}s")
            for process in (*running, router):
                if process.process is not None and process.process.poll() is not None:
                    raise RuntimeError(f"order-sync exited, see {process.log_path}")
            await asyncio.sleep(0.2)
        seconds = time.monotonic() - started
        cpu = sum(w.cpu_seconds() for w in running) - cpu_before
    finally:
        router.stop()
        for worker in running:
            worker.stop()
        for share in shares:
            share.remove()
    drain = len(orders) / seconds
    steady = await _steady_rate(addresses.erp_admin_dsn, orders)
    log(f"{workers} worker(s): {len(orders):,} orders in {seconds:.1f}s ({drain:,.0f}/s from "
        f"the router's start, {steady:,.0f}/s steady; CPU {cpu * 1000 / len(orders):.2f} ms "
        f"an order)")
    return steady, drain, cpu * 1000 / len(orders)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--orders", type=int, default=3000, help="orders drained per run")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--cpu-share", type=float, default=0.05,
                        help="each worker's CPU quota, in cores")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--settle", type=float, default=15,
                        help="seconds the workers' group is left to settle before the run")
    args = parser.parse_args()
    CpuShare("ambidex-bench-probe", args.cpu_share).remove()  # fail early without cgroups
    stack, state_dir = await start_private_stack(log)
    results: dict[int, tuple[float, float, float]] = {}
    try:
        catalogue = await _catalogue(stack)
        for n, workers in enumerate(args.workers):
            results[workers] = await run_with(stack, workers, args, seed=n, catalogue=catalogue)
    finally:
        await stack.down()
        shutil.rmtree(state_dir, ignore_errors=True)

    print()
    print(f"Ambidex order-sync scale-out benchmark (one machine, {os.cpu_count()} cores; "
          f"each worker held to {args.cpu_share:g} of a core by a cgroup CFS quota)")
    one = results.get(1)
    for workers, (rate, drain, cpu_ms) in sorted(results.items()):
        times = f"  {rate / one[0]:4.2f}x one worker" if one else ""
        print(f"  {workers} worker(s)  {rate:8,.0f} orders/s steady ({drain:,.0f}/s over the "
              f"whole drain)  CPU {cpu_ms:5.2f} ms an order{times}")
    if one and 4 in results:
        print(f"  target: 4 workers >= 3x one: {results[4][0] / one[0]:.2f}x")
    print(f"  reproduce: {reproduce_line('bench.scale_out')}")


if __name__ == "__main__":
    run_bench(main())

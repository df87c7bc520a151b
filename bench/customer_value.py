"""customer-value benchmark: replay rate and worker RSS beside inventory-projection's
replay of the same workload in the same run (issue 14's target: at least as fast).

Not a test: it prints figures and the command that reproduces them.

    uv run python -m bench.customer_value                      # 120 s of workload
    uv run python -m bench.customer_value --seconds 300 --rate 300

A private stack on free ports. The sample workload (``ambidex workload run``: CRM users
and ERP processes, costs included) runs for ``--seconds`` at ``--rate`` operations a
second while order-sync, receivables and production-status run, so the topics hold
what a day of real traffic leaves: every CRM and ERP change captured by Debezium, the
receivables' positions and the fulfilment statuses customer-value also folds. Then,
with nothing else running, inventory-projection and customer-value each replay their
topics from the beginning with an empty state, one after the other; each rate is its
source records (change topics, and customer-value's two published topics) / time from
its first committed offset to caught up. Afterwards ``ambidex reconcile
customer-value``'s comparison says whether the replay's figures are right.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import time
from pathlib import Path

from ambidex.stack.local import LocalStack
from ambidex.workload import run_workload
from ambidex.workload.runner import WorkloadProgress
from bench.common import BenchedService, reproduce_line, run_bench, start_private_stack
from bench.replay import LoopWatch, log, offsets, partitions_of, replay_group
from services.customer_value.app import CHANGE_TOPICS as VALUE_TOPICS
from services.customer_value.reconcile_cli import compare as reconcile_value
from services.customer_value.service_fold import PUBLISHED_TOPICS
from services.inventory_projection.app import CHANGE_TOPICS as INVENTORY_TOPICS

FEEDERS = ("order-sync", "receivables", "production-status")


def _service(stack: LocalStack, name: str, state_dir: Path) -> BenchedService:
    return BenchedService(name, {
        **stack.service_environment(name), "AMBIDEX_LOG_LEVEL": "WARNING",
        "AMBIDEX_TABLE_STATE_DIR": str(state_dir / f"services-{name}"),
    }, stack.config.logs_dir / f"bench-{name}.log")


async def caught_up(bootstrap: str, name: str, topics: tuple[str, ...],
                    timeout: float = 900) -> None:
    """Until the service's group has committed the end of ``topics``."""
    partitions = await partitions_of(bootstrap, topics)
    group = f"ambidex-{name}.changes"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        end = await offsets(bootstrap, None, partitions)
        if await offsets(bootstrap, group, partitions) >= end:
            return
        await asyncio.sleep(2)
    raise RuntimeError(f"{name} did not catch up in {timeout:.0f}s")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--seconds", type=float, default=120.0, help="workload duration")
    parser.add_argument("--rate", type=float, default=200.0, help="operations a second")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    stack, state_dir = await start_private_stack(log)
    bootstrap = stack.addresses.kafka_bootstrap
    feeders = [_service(stack, name, state_dir) for name in FEEDERS]
    inventory = _service(stack, "inventory-projection", state_dir)
    value = _service(stack, "customer-value", state_dir)
    value_watch, inventory_watch = LoopWatch(value), LoopWatch(inventory)
    try:
        for feeder in feeders:
            feeder.start()
        for feeder in feeders:
            await feeder.wait_ready()
        log(f"workload: {args.rate:g} operations/s for {args.seconds:g}s")
        last = [0.0]

        def progress(p: WorkloadProgress) -> None:
            if time.monotonic() - last[0] > 15:
                last[0] = time.monotonic()
                log(f"workload: {p.completed:,} operations, {p.row_changes:,} row changes")

        summary = await run_workload(stack.addresses.crm_admin_dsn,
                                     stack.addresses.erp_admin_dsn, rate=args.rate,
                                     duration=args.seconds, seed=args.seed, progress=progress)
        log(f"workload done: {summary.total_completed:,} operations")
        await asyncio.sleep(10)  # the last changes captured
        await caught_up(bootstrap, "receivables", ("cdc.erp.payment",))
        await caught_up(bootstrap, "production-status", ("cdc.erp.shipment",))
        for feeder in feeders:
            feeder.stop()
        inv = await replay_group(bootstrap, inventory, group="ambidex-inventory-projection.changes",
                                 topics=INVENTORY_TOPICS, watch=inventory_watch,
                                 label="inventory-projection")
        inventory.stop()
        run = await replay_group(bootstrap, value, group="ambidex-customer-value.changes",
                                 topics=(*VALUE_TOPICS, *PUBLISHED_TOPICS), watch=value_watch,
                                 label="customer-value")
        rss, peak = value.rss_mb(), value.peak_rss
        await asyncio.sleep(3)  # the last step's rows written
        report = await reconcile_value(stack.addresses.crm_admin_dsn,
                                       stack.addresses.erp_admin_dsn, {})
        lost = value_watch.session_lost()
    finally:
        for service in (*feeders, inventory, value):
            service.stop()
        await stack.down()
        shutil.rmtree(state_dir, ignore_errors=True)

    print()
    print(f"Ambidex customer-value replay benchmark (one machine, {os.cpu_count()} cores)")
    paired = run.first_rate is not None and inv.first_rate is not None
    rate = run.first_rate if paired and run.first_rate else run.start_rate
    inv_rate = inv.first_rate if paired and inv.first_rate else inv.start_rate
    basis = "from the first commit" if paired else "from the process start"
    print(f"  customer-value        {rate:10,.0f} changes/s {basis} ({run.changes:,} source "
          f"records: CDC changes, positions, statuses; CPU {run.cpu_us:.0f} µs a change); RSS "
          f"{rss:.0f} MB after, peak sampled {peak:.0f} MB")
    print(f"  inventory-projection  {inv_rate:10,.0f} changes/s {basis} ({inv.changes:,} CDC "
          f"changes of the same workload; CPU {inv.cpu_us:.0f} µs a change)")
    print(f"  customer-value / inventory {rate / inv_rate:6.2f}  (target >= 1)")
    print(f"  reconcile after the replay: {report.summary} "
          f"({'agrees' if not report.failing({}) else 'DIFFERS'})")
    print(f"  event loop: longest stall {value_watch.longest * 1000:,.0f} ms; group session "
          f"{'survived' if not lost else f'LOST ({lost} log lines)'}")
    print(f"  reproduce: {reproduce_line('bench.customer_value')}")


if __name__ == "__main__":
    run_bench(main())

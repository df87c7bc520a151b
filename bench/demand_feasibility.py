"""demand signals benchmark: feasibility request commit -> answer visible in the CRM.

Not a test: it prints figures and the command that reproduces them.

    uv run python -m bench.demand_feasibility          # private stack
    ... --rate 100 --seconds 60 --workload-rate 20

A private seeded stack; inventory-projection (which runs demand signals) as its own
process; the sample workload (``ambidex/workload``: quotes, orders, stock, production,
promotions ...) at ``--workload-rate`` operations/s throughout. Then ``--rate``
feasibility requests a second for ``--seconds`` (each its own CRM transaction, three
proposed lines of a confirmed order), while a poller reads
``crm_integration.feasibility_answer`` every 20 ms: per request, the latency is the
time the poller first sees its answer minus ``crm.feasibility_request.created_at`` (the
committing transaction's start: it includes the commit itself, and up to 20 ms of
polling). The service's own histogram (``ambidex_end_to_end_lag_seconds{path=
"feasibility_answer"}``: source commit -> answer written) is printed as a cross-check.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import shutil
import sys
import time
from datetime import datetime

import asyncpg

from ambidex.stack.local import LocalStack
from ambidex.workload.runner import run_workload
from bench.common import BenchedService, reproduce_line, run_bench, start_private_stack
from bench.order_sync import histogram_quantiles

SERVICE = "inventory-projection"


class Worker(BenchedService):
    def __init__(self, stack: LocalStack, log: os.PathLike[str]) -> None:
        super().__init__(SERVICE, {
            **stack.config.environment(), **stack.service_environment(SERVICE),
            "AMBIDEX_LOG_LEVEL": "WARNING"}, log)  # type: ignore[arg-type]

    async def lag_buckets(self) -> dict[float, float]:
        buckets: dict[float, float] = {}
        for line in (await self.metrics()).splitlines():
            if (line.startswith("ambidex_end_to_end_lag_seconds_bucket")
                    and '"feasibility_answer"' in line):
                le = line.split('le="')[1].split('"')[0]
                buckets[float("inf") if le == "+Inf" else float(le)] = float(
                    line.rsplit(" ", 1)[1])
        return buckets


async def _orders(crm_dsn: str) -> list[tuple[int, list[tuple[int, int]]]]:
    """Confirmed CRM orders with their (line_no, product) pairs."""
    conn = await asyncpg.connect(crm_dsn)
    try:
        rows = await conn.fetch(
            """SELECT o.id, array_agg(l.line_no ORDER BY l.line_no) AS nos,
                      array_agg(l.product_id ORDER BY l.line_no) AS products
               FROM crm.sales_order o JOIN crm.sales_order_line l ON l.order_id = o.id
               WHERE o.state IN ('confirmed', 'amended') AND o.warehouse_code IS NOT NULL
               GROUP BY o.id ORDER BY o.id LIMIT 500""")
    finally:
        await conn.close()
    return [(r["id"], list(zip(r["nos"], r["products"], strict=True))) for r in rows]


async def _ask(pool: asyncpg.Pool, rate: float, seconds: float,
               orders: list[tuple[int, list[tuple[int, int]]]],
               asked: dict[int, datetime]) -> None:
    rng = random.Random(7)
    start = time.monotonic()
    count = int(rate * seconds)

    async def one(i: int) -> None:
        await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        order_id, lines = rng.choice(orders)
        proposed = [{"line_no": n, "product_id": p, "quantity": str(rng.randint(1, 40))}
                    for n, p in lines[:3]]
        row = await pool.fetchrow(
            "INSERT INTO crm.feasibility_request (sales_order_id, lines, requested_by)"
            " VALUES ($1, $2::jsonb, 'bench') RETURNING id, created_at",
            order_id, json.dumps(proposed))
        assert row is not None
        asked[row["id"]] = row["created_at"]

    await asyncio.gather(*(one(i) for i in range(count)))


async def _poll(pool: asyncpg.Pool, asked: dict[int, datetime], seen: dict[int, float],
                done: asyncio.Event) -> None:
    while True:
        waiting = [i for i in asked if i not in seen]
        if waiting:
            rows = await pool.fetch(
                "SELECT request_id FROM crm_integration.feasibility_answer"
                " WHERE request_id = ANY($1::bigint[]) AND verdict IS NOT NULL", waiting)
            now = time.time()
            for r in rows:
                seen[r["request_id"]] = now
        elif done.is_set():
            return
        await asyncio.sleep(0.02)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--rate", type=float, default=100, help="requests a second")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--workload-rate", type=float, default=20)
    args = parser.parse_args()

    stack, state_dir = await start_private_stack(lambda m: print(f"  stack: {m}",
                                                                 file=sys.stderr))
    worker = Worker(stack, state_dir / "inventory-projection.log")
    addresses = stack.addresses
    stop = asyncio.Event()
    asked: dict[int, datetime] = {}
    seen: dict[int, float] = {}
    try:
        worker.start()
        await worker.wait_ready()
        workload = asyncio.create_task(run_workload(
            addresses.crm_admin_dsn, addresses.erp_admin_dsn, rate=args.workload_rate,
            duration=math.inf, seed=11, stop=stop))
        await asyncio.sleep(20)  # the workload under way, the backlog of the seed read
        orders = await _orders(addresses.crm_admin_dsn)
        if not orders:
            raise RuntimeError("no confirmed CRM order with a warehouse to ask about")
        before = await worker.lag_buckets()
        pool = await asyncpg.create_pool(addresses.crm_admin_dsn, min_size=4, max_size=16)
        assert pool is not None
        done = asyncio.Event()
        print(f"asking {args.rate:.0f} requests/s for {args.seconds:.0f}s", file=sys.stderr)
        poller = asyncio.create_task(_poll(pool, asked, seen, done))
        began = time.monotonic()
        await _ask(pool, args.rate, args.seconds, orders, asked)
        achieved = len(asked) / (time.monotonic() - began)
        done.set()
        await asyncio.wait_for(poller, timeout=120)
        quantiles = histogram_quantiles(before, await worker.lag_buckets())
        await pool.close()
        stop.set()
        summary = await workload
        cpu = worker.cpu_seconds()
    finally:
        stop.set()
        worker.stop()
        await stack.down()
        shutil.rmtree(state_dir, ignore_errors=True)

    latencies = sorted((seen[i] - asked[i].timestamp()) * 1000 for i in asked if i in seen)

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))]

    print()
    print(f"Ambidex feasibility benchmark (one machine, {os.cpu_count()} cores, whole stack, "
          f"workload {summary.total_completed:,} operations meanwhile)")
    print(f"  requests                   {len(asked):,} at {achieved:.0f}/s "
          f"(offered {args.rate:.0f}/s), {len(latencies):,} answered")
    print(f"  commit -> answer visible   p50 {pct(0.5):.0f} ms, p99 {pct(0.99):.0f} ms, "
          f"max {latencies[-1]:.0f} ms   (target p99 <= 1000 ms)")
    print(f"  service histogram          p50 <= {quantiles['p50_le']} s, "
          f"p99 <= {quantiles['p99_le']} s (bucket bounds)")
    print(f"  worker CPU                 {cpu:.0f} s, RSS max {worker.peak_rss:,.0f} MB")
    print(f"reproduce: {reproduce_line('bench.demand_feasibility')}")


if __name__ == "__main__":
    run_bench(main())

"""customer-value's dashboard: page load with many customers, and a record applied ->
its figure served (no stack: the view and the web app, fed synthetic records).

Not a test: it prints figures and the command that reproduces them.

    uv run python -m bench.customer_value_dashboard                  # 10,000 x 12 months
    uv run python -m bench.customer_value_dashboard --customers 2000 --months 6 --no-browser
    uv run python -m bench.customer_value_dashboard --screenshot /tmp/dashboard.png
    uv run python -m bench.customer_value_dashboard --stack --samples 200   # end to end

With ``--stack``: a private stack (seeded) and ``ambidex run customer-value`` as its own
process; a CRM order confirmed (committed) at a time, each for one of 20 fresh
accounts, and its revenue read from the dashboard's ``/api/customers/<id>`` every 10 ms:
source commit -> figure on the dashboard, through Debezium, Kafka, the service's step,
its checkpoint and the observer.

The dashboard runs in its own thread and event loop (as in the service process); the
benchmark asks it over HTTP. Server time is the time of a whole HTTP request from this
process (localhost); browser time is headless Chromium's navigation start -> load event
end (``tests/browser.py``; skipped without Debian's chromium and chromium-driver).
"Applied -> served" applies one changed record in the dashboard's loop and then asks
``/api/customers/<id>`` until the new figure is in the answer. Account names come from
memory here (in the service from the CRM database: one indexed query per page).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

import httpx

from services.customer_value.dashboard.feed import load, packed
from services.customer_value.dashboard.server import start_dashboard
from services.customer_value.dashboard.view import DashboardView
from services.customer_value.figures import CustomerValue
from services.customer_value.risks import AccountRisks, OrderRisk
from services.shared.health import ObservabilityServer

T = TypeVar("T")


def record(account: int, month: str, currency: str, rng: random.Random,
           revenue: Decimal | None = None) -> CustomerValue:
    def amount(high: int) -> Decimal:
        return Decimal(rng.randrange(0, high * 100)) / 100

    bucket: dict[str, dict[str, Any]] = {
        "crm.sales_order": {"rows": rng.randrange(1, 5),
                            "revenue_booked": revenue if revenue is not None else amount(50_000)},
        "erp.shipment_line": {"rows": 3, "cost_of_goods": amount(30_000)},
        "erp.production_order": {"rows": 2, "production_standard": amount(5_000),
                                 "production_actual": amount(5_500)},
        "erp.quality_inspection": {"rows": rng.randrange(0, 2), "rework": amount(800)},
        "erp.shipment": {"rows": 2, "freight": amount(900)},
        "crm.service_case": {"rows": rng.randrange(0, 3)},
    }
    return CustomerValue.of(account, month, currency, bucket, [account])


def records(customers: int, months: int, rng: random.Random) -> Iterator[CustomerValue]:
    """Every customer in EUR over ``months`` months; one in ten also in USD; made one at
    a time as iterated, as the service's state hands them (``Shell.snapshot``)."""
    for account in range(1, customers + 1):
        for month in range(1, months + 1):
            yield record(account, f"2026-{month:02d}", "EUR", rng)
            if account % 10 == 0:
                yield record(account, f"2026-{month:02d}", "USD", rng)


class MemoryAccounts:
    async def names(self, account_ids: Sequence[int]) -> Mapping[int, str]:
        return {a: f"Customer {a} <GmbH & Co>" for a in account_ids}


class Served:
    """The dashboard on its own loop in a thread, as in the service process."""

    def __init__(self, view: DashboardView) -> None:
        self.view = view
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: ObservabilityServer = self.call(
            start_dashboard(view, MemoryAccounts(), "127.0.0.1", 0))

    def call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def in_loop(self, function: Callable[[], T]) -> T:
        async def run() -> T:
            return function()
        return self.call(run())  # type: ignore[no-any-return]

    def close(self) -> None:
        self.call(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        lines = status.read().splitlines()
    for line in lines:
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (f"p50 {statistics.median(ordered):7.1f} ms  p99 {p99:7.1f} ms  "
            f"max {ordered[-1]:7.1f} ms")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--months", type=int, default=12)
    parser.add_argument("--requests", type=int, default=30, help="per page, server time")
    parser.add_argument("--loads", type=int, default=5, help="per page, in the browser")
    parser.add_argument("--changes", type=int, default=300, help="applied -> served samples")
    parser.add_argument("--no-browser", action="store_true")
    parser.add_argument("--screenshot", help="save a screenshot of the overview page here")
    parser.add_argument("--stack", action="store_true",
                        help="source commit -> dashboard figure on a private stack")
    parser.add_argument("--samples", type=int, default=200, help="with --stack")
    args = parser.parse_args(argv)
    if args.stack:
        asyncio.run(end_to_end(args.samples))
        print("\nreproduce: uv run python -m bench.customer_value_dashboard "
              + " ".join(argv if argv is not None else sys.argv[1:]))
        return
    rng = random.Random(14)

    started = time.perf_counter()
    base_rss = rss_mb()
    # as the observer takes the service's snapshot at start: each record packed as read
    made = packed(records(args.customers, args.months, rng))
    count = len(made)
    view = DashboardView()
    for account in range(1, args.customers + 1, 7):  # one in seven with an open delay risk
        view.set_risks(AccountRisks(account, {"at_risk": 1}, (OrderRisk(
            account, f"SO{account:07d}", "at_risk", "qc_overdue", "in_quality_control",
            None, None),)))
    loaded = time.perf_counter()
    before = rss_mb()
    asyncio.run(load(view, made, datetime.now(UTC)))
    done = time.perf_counter()
    del made
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{count:,} records ({args.customers:,} customers x {args.months} months, "
          f"one in ten also in USD): made and packed in {loaded - started:.1f} s, loaded "
          f"into the view in {done - loaded:.2f} s ({(done - loaded) / count * 1e6:.1f} µs "
          f"a record); the view holds them in {rss_mb() - before:.0f} MB (resident memory "
          f"grown); process RSS {base_rss:.0f} MB before, {rss_mb():.0f} MB after, peak "
          f"{peak:.0f} MB")

    served = Served(view)
    base = served.server.url
    middle = args.customers // 2
    last_page = -(-args.customers // 50)
    paths = ["/", "/top?by=revenue&page=1&size=25", f"/top?by=margin&page={last_page}&size=50",
             f"/customers/{middle}", "/api/overview",
             f"/api/top?by=margin&page={last_page // 2}&size=50", f"/api/customers/{middle}"]
    print(f"\nserver time, {args.requests} requests a page over HTTP (localhost):")
    with httpx.Client(base_url=base) as client:
        for path in paths:
            samples = []
            for _ in range(args.requests):
                t0 = time.perf_counter()
                response = client.get(path)
                samples.append((time.perf_counter() - t0) * 1000)
                assert response.status_code == 200, (path, response.status_code)
            print(f"  {path:42} {len(response.content) / 1024:6.0f} KiB  {percentiles(samples)}")

        # a record applied in the dashboard's loop -> the figure in /api/customers/<id>
        latencies = []
        for n in range(args.changes):
            account = rng.randrange(1, args.customers + 1)
            revenue = Decimal(1_000_000 + n) + Decimal("0.25")
            changed = record(account, f"2026-{rng.randrange(1, args.months + 1):02d}", "EUR",
                             rng, revenue)
            t0 = time.perf_counter()
            served.in_loop(lambda changed=changed: served.view.commit([changed]))  # type: ignore[misc]
            while True:
                body = client.get(f"/api/customers/{account}").json()
                months = body["currencies"][0]["months"]
                if any(m["month"] == changed.month
                       and m["figures"]["revenue_booked"] == str(revenue) for m in months):
                    break
            latencies.append((time.perf_counter() - t0) * 1000)
        print(f"\napplied -> served ({args.changes} changes, each a record applied then "
              f"/api/customers/<id> read until it shows it): {percentiles(latencies)}")

    per_change = []
    for _ in range(5):
        batch = [record(rng.randrange(1, args.customers + 1),
                        f"2026-{rng.randrange(1, args.months + 1):02d}", "EUR", rng)
                 for _ in range(2000)]
        t0 = time.perf_counter()
        served.in_loop(lambda batch=batch: served.view.commit(batch))  # type: ignore[misc]
        per_change.append((time.perf_counter() - t0) / len(batch) * 1e6)
    print(f"one record applied (commits of 2,000): {statistics.median(per_change):.1f} µs")

    if not args.no_browser:
        browse(base, paths, args)
    served.close()
    print("\nreproduce: uv run python -m bench.customer_value_dashboard "
          + " ".join(argv if argv is not None else sys.argv[1:]))


def browse(base: str, paths: list[str], args: argparse.Namespace) -> None:
    from tests.browser import headless_chromium, load_ms, missing

    why = missing()
    if why is not None:
        print(f"\nbrowser: skipped, {why}")
        return
    driver = headless_chromium()
    try:
        print(f"\nfull load in headless Chromium ({args.loads} loads a page, navigation "
              "start -> load event end):")
        for path in (p for p in paths if not p.startswith("/api/")):
            load_ms(driver, base + path)  # warm: the browser's own start-up is not the page's
            samples = [load_ms(driver, base + path) for _ in range(args.loads)]
            print(f"  {path:42} {percentiles(samples)}")
        if args.screenshot:
            for path, suffix in (("/", ""), (paths[3], "-customer")):
                driver.get(base + path)
                shot = args.screenshot.replace(".png", f"{suffix}.png")
                driver.save_screenshot(shot)
                print(f"screenshot: {shot}")
    finally:
        driver.quit()


async def end_to_end(samples: int) -> None:
    import shutil

    import asyncpg

    from bench.common import BenchedService, start_private_stack

    stack, state_dir = await start_private_stack(lambda line: print(line, flush=True))
    service = BenchedService("customer-value", {
        **stack.service_environment("customer-value", secured=False),
        "AMBIDEX_LOG_LEVEL": "WARNING",
        "AMBIDEX_TABLE_STATE_DIR": str(state_dir / "services-bench"),
    }, stack.config.logs_dir / "bench-customer-value.log")
    latencies: list[float] = []
    try:
        service.start()
        await service.wait_ready(timeout=300)
        crm = await asyncpg.connect(stack.addresses.crm_admin_dsn)
        base = f"http://127.0.0.1:{service.dashboard_port}"
        accounts = [int(await crm.fetchval(
            """INSERT INTO crm.account (name, country_code, currency_code)
               VALUES ($1, 'DE', 'EUR') RETURNING id""", f"bench {n}")) for n in range(20)]
        booked = dict.fromkeys(accounts, Decimal(0))
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            for n in range(samples):
                account = accounts[n % len(accounts)]
                amount = Decimal(100 + n) + Decimal("0.50")
                booked[account] += amount
                t0 = time.perf_counter()
                await crm.execute(
                    """INSERT INTO crm.sales_order (account_id, state, currency_code,
                           amount_total, confirmed_at)
                       VALUES ($1, 'confirmed', 'EUR', $2, now())""", account, amount)
                while True:
                    response = await client.get(f"/api/customers/{account}")
                    if response.status_code == 200 and any(
                            part["totals"]["figures"]["revenue_booked"] == str(booked[account])
                            for part in response.json()["currencies"]):
                        break
                    if time.perf_counter() - t0 > 60:
                        raise RuntimeError(f"account {account} not shown after 60 s")
                    await asyncio.sleep(0.01)
                latencies.append((time.perf_counter() - t0) * 1000)
        await crm.close()
    finally:
        service.stop()
        await stack.down()
        shutil.rmtree(state_dir, ignore_errors=True)
    print(f"\nsource commit -> dashboard figure ({samples} CRM orders confirmed one at a "
          f"time, read every 10 ms): {percentiles(latencies)}")


if __name__ == "__main__":
    main()

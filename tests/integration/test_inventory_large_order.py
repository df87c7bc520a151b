"""A 5,000-line order against the real stack (issue 9, case 1): inventory-projection and
order-sync stay responsive and the projection comes out exact.

Invariants shown here, on a fresh item, warehouse, product and account:

* One CRM order of 5,000 lines inserted in one statement (the issue's SQL), the ERP
  order order-sync makes of it, and a reservation of every ERP line in one statement
  are folded to the exact pending CRM demand and available-to-promise, per warehouse
  and overall, equal to the batch recomputation from both databases.
* While that is folded, ``/healthz`` and ``/metrics`` of both services answer: polled
  throughout, each request given a generous 5 s (a liveness check, not a timing
  benchmark). Before the fix the fold of such an order walked every line of the order
  for every line and blocked the event loop for minutes, so the probes timed out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

import asyncpg
import httpx
import pytest

from ambidex.stack.local import StackAddresses
from services.inventory_projection.available_to_promise import AvailabilityKey
from services.inventory_projection.recompute import (
    diff_availability,
    read_projection,
    recompute_availability,
)
from tests.conftest import ServiceProcess, wait_until

# the whole flow (5,000 lines through order-sync and back) on a shared 2-core machine
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

LINES = 5_000
ON_HAND = 100_000
PROBE_TIMEOUT = 5.0

# the statement, with the fixture's account, warehouse and product
LARGE_ORDER = """
WITH o AS (INSERT INTO crm.sales_order (account_id,state,currency_code,warehouse_code,confirmed_at)
           VALUES ($1,'confirmed','EUR',$2,now()) RETURNING id)
INSERT INTO crm.sales_order_line (order_id,line_no,product_id,quantity,unit_price,discount_pct)
SELECT o.id, g, $3, 1 + g % 7, 10.00 + (g % 13) * 0.37, g % 5 FROM o, generate_series(1,$4) g
RETURNING order_id"""

PENDING = """
SELECT on_hand, reserved, pending_crm_demand, available_to_promise
FROM crm_integration.availability
WHERE item_id = $1 AND warehouse_code = $2 AND NOT deleted"""


@dataclass(frozen=True)
class Fixture:
    sku: str
    item_id: int
    product_id: int
    warehouse_id: int
    warehouse_code: str
    account_id: int


async def new_fixture(stack: StackAddresses, tag: str) -> Fixture:
    crm = await asyncpg.connect(stack.crm_admin_dsn)
    erp = await asyncpg.connect(stack.erp_admin_dsn)
    try:
        sku, code = f"BIG-{tag}", f"WB-{tag}"
        item_id = await erp.fetchval(
            """INSERT INTO erp.item (sku, name, currency_code) VALUES ($1, $1, 'EUR')
               RETURNING id""",
            sku,
        )
        warehouse_id = await erp.fetchval(
            "INSERT INTO erp.warehouse (code, name) VALUES ($1, $1) RETURNING id", code
        )
        await erp.execute(
            "INSERT INTO erp.stock_quant (item_id, warehouse_id, quantity) VALUES ($1, $2, $3)",
            item_id,
            warehouse_id,
            ON_HAND,
        )
        product_id = await crm.fetchval(
            """INSERT INTO crm.product (sku, name, list_price, currency_code)
               VALUES ($1, $1, 10, 'EUR') RETURNING id""",
            sku,
        )
        account_id = await crm.fetchval(
            """INSERT INTO crm.account (name, street, city, postal_code, country_code,
                   vat_number, currency_code)
               VALUES ($1, 'Hauptstrasse 1', 'Bern', '3000', 'CH', $2, 'EUR') RETURNING id""",
            f"Large Order {tag}",
            f"CHE-{tag}",
        )
    finally:
        await crm.close()
        await erp.close()
    return Fixture(sku, item_id, product_id, warehouse_id, code, account_id)


@dataclass
class Prober:
    """Polls /healthz and /metrics of the services until stopped; keeps every failure."""

    processes: list[ServiceProcess]
    answered: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=PROBE_TIMEOUT) as client:
            while not self._stop.is_set():
                for process in self.processes:
                    for path in ("/healthz", "/metrics"):
                        url = f"{process.metrics_url}{path}"
                        try:
                            response = await client.get(url)
                        except httpx.HTTPError as error:
                            self.failures.append(f"{process.name} {path}: {error!r}")
                            continue
                        if response.status_code != 200:
                            self.failures.append(
                                f"{process.name} {path}: {response.status_code} {response.text}"
                            )
                        else:
                            self.answered += 1
                await asyncio.sleep(0.25)

    def stop(self) -> None:
        self._stop.set()


async def largest_lag(process: ServiceProcess) -> str:
    """The service's largest event-loop lag of the last minute (for failure messages)."""
    try:
        async with httpx.AsyncClient(timeout=PROBE_TIMEOUT) as client:
            text = (await client.get(f"{process.metrics_url}/metrics")).text
    except httpx.HTTPError as error:
        return f"{process.name}: /metrics {error!r}"
    lines = [x for x in text.splitlines() if x.startswith("ambidex_event_loop_lag_max_seconds")]
    return f"{process.name}: {lines}"


def figures_are(
    stack: StackAddresses, fx: Fixture, want: tuple[int, int, int, int], seen: list[object]
) -> Callable[[], object]:
    expected = tuple(Decimal(v) for v in want)

    async def check() -> bool:
        crm = await asyncpg.connect(stack.crm_admin_dsn)
        try:
            row = await crm.fetchrow(PENDING, fx.item_id, fx.warehouse_code)
        finally:
            await crm.close()
        seen.append(None if row is None else tuple(row))
        return row is not None and tuple(row) == expected

    return check


async def test_a_5000_line_order_is_folded_exactly_while_the_services_answer(
    service_process: Callable[[str], ServiceProcess], stack: StackAddresses, unique: str
) -> None:
    processes = [service_process("inventory-projection"), service_process("order-sync")]
    for process in processes:
        if process.process is None or process.process.poll() is not None:
            process.start()
        await process.wait_ready()
    fx = await new_fixture(stack, unique)
    seen: list[object] = []
    await wait_until(figures_are(stack, fx, (ON_HAND, 0, 0, ON_HAND), seen), timeout=120)

    ordered = sum(1 + g % 7 for g in range(1, LINES + 1))
    reserved_per_line = 1
    pending_after = ordered - LINES * reserved_per_line
    prober = Prober(processes)
    probing = asyncio.create_task(prober.run())
    started = time.monotonic()

    def progress(message: str) -> None:
        print(f"[large order {time.monotonic() - started:6.1f}s] {message}", flush=True)

    crm = await asyncpg.connect(stack.crm_admin_dsn)
    erp = await asyncpg.connect(stack.erp_admin_dsn)
    try:
        rows = await crm.fetch(LARGE_ORDER, fx.account_id, fx.warehouse_code, fx.product_id, LINES)
        assert len(rows) == LINES
        crm_order_id = rows[0]["order_id"]
        progress(f"CRM order {crm_order_id} of {LINES} lines inserted")
        # the CRM lines are pending demand
        want = (ON_HAND, 0, ordered, ON_HAND - ordered)
        await wait_until(figures_are(stack, fx, want, seen), timeout=600, interval=1.0)
        progress(f"CRM lines folded: {seen[-1]}")

        # order-sync makes the ERP order with all its lines
        async def erp_order() -> int | None:
            row = await erp.fetchrow(
                """SELECT o.id, count(l.id) AS lines FROM erp.sales_order o
                   LEFT JOIN erp.sales_order_line l ON l.order_id = o.id
                   WHERE o.crm_order_id = $1 GROUP BY o.id""",
                crm_order_id,
            )
            return int(row["id"]) if row is not None and row["lines"] == LINES else None

        await wait_until(erp_order, timeout=600, interval=1.0)
        erp_order_id = await erp_order()
        progress(f"ERP order {erp_order_id} made by order-sync")
        # the ERP reserves one unit of every line, in one statement: 5,000 ERP line
        # changes of one order, each covering its CRM line
        updated = await erp.execute(
            "UPDATE erp.sales_order_line SET qty_reserved = $2 WHERE order_id = $1",
            erp_order_id,
            reserved_per_line,
        )
        assert updated == f"UPDATE {LINES}"
        want = (ON_HAND, 0, pending_after, ON_HAND - pending_after)
        await wait_until(figures_are(stack, fx, want, seen), timeout=600, interval=1.0)
        progress(f"ERP reservations folded: {seen[-1]}; {prober.answered} probes answered")
        progress(f"largest event-loop lag: {[await largest_lag(p) for p in processes]}")
    except AssertionError as error:
        lags = [await largest_lag(p) for p in processes]
        tails = "\n".join(p.log_tail(15) for p in processes)
        raise AssertionError(
            f"{error}; last figures {seen[-1:]}; lag {lags}; probe failures "
            f"{prober.failures[:5]}\n{tails}"
        ) from None
    finally:
        prober.stop()
        await probing
        await crm.close()
        await erp.close()

    assert prober.failures == [], prober.failures[:10]
    assert prober.answered > 0
    # per warehouse and overall, what a recomputation from both databases says
    keys = {AvailabilityKey(fx.item_id, fx.warehouse_id), AvailabilityKey(fx.item_id, None)}
    recomputed = await recompute_availability(stack.crm_admin_dsn, stack.erp_admin_dsn)
    projected = await read_projection(stack.crm_admin_dsn)
    assert keys <= set(projected)
    assert diff_availability(
        {k: projected[k] for k in keys}, {k: recomputed[k] for k in keys}
    ) == []

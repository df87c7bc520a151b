"""order-sync scaled out (ADR 0003 step 3) against the real stack: a router and
one, two or three workers give the same ERP orders, with workers killed and added mid-run.

Invariants (DESIGN.md 1, 3, 6; issue 16): the same CRM input (the same orders, created
several per CRM transaction, confirmed several per transaction, some amended) leaves,
order for order, identical ERP orders whether one, two or three workers apply the
router's slices — exactly one ERP order per CRM order, with exactly the CRM order's
lines — and none of that changes when a worker is killed with SIGKILL in the middle
(its uncommitted slices redone by the others, then by itself when it comes back), nor
when a third worker joins mid-run and the first is then killed for good. Each worker
that is up while orders are confirmed takes part (it creates ERP orders), so the
comparison is between 1, 2 and 3 workers, not between 1 and 1.

The session's single-role order-sync (started by the order-sync modules before this
one) is stopped for the test: it reads the same CRM changes as the router, one hop
closer, and created about half of the ERP orders itself on a loaded machine, leaving a
worker none (that, not the group's rebalance, is why "the second worker got no work
within 120 s" in the full suite). The router replays what earlier modules left, the
5,000-line order of ``test_inventory_large_order.py`` among them: its slice is larger
than one Kafka record and goes as parts (the router used to exit on it: the phase-1
failure of the full suite). A router that exits fails the test at once, with its log.
"""

from __future__ import annotations

import random
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import pytest

from ambidex.stack.config import _free_ports
from ambidex.stack.local import LocalStack, StackAddresses
from tests.conftest import ServiceProcess, wait_until
from tests.integration.conftest import Dbs
from tests.integration.support import metric
from tests.integration.test_order_sync import SERVICE, Catalogue, catalogue, new_account
from tests.integration.test_order_sync_recovery import (
    _assert_exactly_one_erp_order_each,
    _random_lines,
)

ORDERS = 240
#: orders per CRM transaction when drafting, confirming and amending
DRAFTED_TOGETHER, CONFIRMED_TOGETHER, AMENDED_TOGETHER = 3, 5, 2
CREATES = 'ambidex_order_sync_orders_total{outcome="create"}'


def role_process(local_stack: LocalStack, role: str, label: str) -> ServiceProcess:
    """An order-sync process of ``role`` (router or worker) with its own metrics port and
    state directory."""
    environment = {
        **local_stack.service_environment(SERVICE, secured=False),
        "AMBIDEX_ORDER_SYNC_ROLE": role,
        "AMBIDEX_METRICS_PORT": str(_free_ports(1)[0]),
        "AMBIDEX_TABLE_STATE_DIR": str(local_stack.config.state_dir / label),
        "AMBIDEX_LOG_FORMAT": "json",
    }
    return ServiceProcess(SERVICE, local_stack, environment, label=label)


async def draft_orders(crm: asyncpg.Connection, account: int, cat: Catalogue, seed: str
                       ) -> list[int]:
    """``ORDERS`` draft orders, ``DRAFTED_TOGETHER`` per CRM transaction; the same lines
    for the same seed."""
    rng = random.Random(seed)
    orders: list[int] = []
    for start in range(0, ORDERS, DRAFTED_TOGETHER):
        async with crm.transaction():
            for _ in range(start, min(start + DRAFTED_TOGETHER, ORDERS)):
                order_id = int(await crm.fetchval(
                    """INSERT INTO crm.sales_order (account_id, state, currency_code,
                           requested_date, warehouse_code, amount_total)
                       VALUES ($1, 'draft', 'EUR', current_date + 14, $2, 0) RETURNING id""",
                    account, cat.warehouse_code))
                await crm.executemany(
                    """INSERT INTO crm.sales_order_line (order_id, line_no, product_id,
                           quantity, unit_price) VALUES ($1, $2, $3, $4, $5)""",
                    [(order_id, no, product, Decimal(q), Decimal(p))
                     for no, product, q, p in _random_lines(rng, cat)])
                orders.append(order_id)
    return orders


async def confirm(crm: asyncpg.Connection, orders: list[int], *,
                  meanwhile: Callable[[int], Awaitable[None]] | None = None) -> None:
    """Confirm every order, ``CONFIRMED_TOGETHER`` per CRM transaction; ``meanwhile(n)``
    after each transaction (n: orders confirmed so far)."""
    for start in range(0, len(orders), CONFIRMED_TOGETHER):
        await crm.execute(
            """UPDATE crm.sales_order SET state = 'confirmed', confirmed_at = now()
               WHERE id = ANY($1::bigint[])""", orders[start:start + CONFIRMED_TOGETHER])
        if meanwhile is not None:
            await meanwhile(start + CONFIRMED_TOGETHER)


async def amend(crm: asyncpg.Connection, erp: asyncpg.Connection, orders: list[int],
                router: ServiceProcess) -> None:
    """Once every order is in the ERP: amend every fourth (a line's quantity and the
    header's version, ``AMENDED_TOGETHER`` orders per transaction), wait for them."""
    await settled(router, lambda: _count(erp, orders, "TRUE", len(orders)))
    amended = orders[::4]
    for start in range(0, len(amended), AMENDED_TOGETHER):
        together = amended[start:start + AMENDED_TOGETHER]
        async with crm.transaction():
            await crm.execute(
                """UPDATE crm.sales_order_line SET quantity = quantity + 1
                   WHERE order_id = ANY($1::bigint[]) AND line_no = 1""", together)
            await crm.execute(
                """UPDATE crm.sales_order SET state = 'amended', version = 2
                   WHERE id = ANY($1::bigint[])""", together)
    await settled(router, lambda: _count(erp, amended, "crm_order_version = 2", len(amended)))


def alive(process: ServiceProcess) -> None:
    """Fails at once, with the process's log, when it has exited (a wait would only
    time out)."""
    if process.process is not None and process.process.poll() is not None:
        raise AssertionError(f"{process.log_path.name} exited: {process.log_tail()}")


async def settled(router: ServiceProcess, predicate: Callable[[], Awaitable[bool]],
                  timeout: float = 300) -> None:
    """Wait for ``predicate`` while the router is up."""
    async def check() -> bool:
        alive(router)
        return await predicate()
    await wait_until(check, timeout=timeout)


async def _count(erp: asyncpg.Connection, orders: list[int], condition: str,
                 wanted: int) -> bool:
    found = await erp.fetchval(
        f"SELECT count(*) FROM erp.sales_order WHERE crm_order_id = ANY($1::bigint[]) "
        f"AND {condition}", orders)
    return bool(found == wanted)


async def assigned(worker: ServiceProcess) -> bool:
    """Whether the worker holds route partitions (its readiness names how many: a
    worker is ready in the group before the rebalance gives it any)."""
    async with httpx.AsyncClient() as client:
        body = (await client.get(f"{worker.metrics_url}/readyz")).json()
    detail = body.get("checks", {}).get("source:worker", {}).get("detail", "")
    found = re.search(r"(\d+) partition", detail)
    return found is not None and int(found.group(1)) > 0


async def start_worker(worker: ServiceProcess) -> None:
    """Start a worker and wait until the group gave it route partitions."""
    worker.start()
    await worker.wait_ready()
    await wait_until(lambda: assigned(worker), timeout=120)


@pytest.fixture
async def without_single_order_sync(
    session_services: dict[str, ServiceProcess],
) -> AsyncIterator[None]:
    """The session's order-sync of role ``single`` stopped for the test (started again
    after it): it would apply the same CRM changes as the workers (module docstring)."""
    single = session_services.get(SERVICE)
    running = single is not None and single.process is not None \
        and single.process.poll() is None
    if single is not None and running:
        single.stop()
    try:
        yield
    finally:
        if single is not None and running:
            single.start()


async def erp_image(erp: asyncpg.Connection, orders: list[int]) -> list[Any]:
    """The ERP orders of ``orders``, in the orders' creation order, without their ids."""
    headers = {r["crm_order_id"]: r for r in await erp.fetch(
        """SELECT id, crm_order_id, customer_id, state, currency_code, warehouse_id,
                  crm_order_version, amount_total
           FROM erp.sales_order WHERE crm_order_id = ANY($1::bigint[])""", orders)}
    lines: dict[int, list[tuple[Any, ...]]] = {}
    for r in await erp.fetch(
            """SELECT order_id, line_no, item_id, quantity, unit_price, discount_pct
               FROM erp.sales_order_line WHERE order_id = ANY($1::bigint[])
               ORDER BY order_id, line_no""", [h["id"] for h in headers.values()]):
        lines.setdefault(r["order_id"], []).append(tuple(r.values())[1:])
    return [
        (h["customer_id"], h["state"], h["currency_code"], h["warehouse_id"],
         h["crm_order_version"], h["amount_total"], lines.get(h["id"], []))
        for h in (headers[o] for o in orders)
    ]


async def test_one_two_and_three_workers_killed_and_added_give_identical_erp_orders(
    local_stack: LocalStack, dbs: Dbs, stack: StackAddresses, unique: str,
    without_single_order_sync: None,
) -> None:
    crm, erp = dbs
    cat = await catalogue(stack)
    account = await new_account(crm, unique)
    router = role_process(local_stack, "router", f"router-{unique}")
    first, second, third = (
        role_process(local_stack, "worker", f"worker{n}-{unique}") for n in (1, 2, 3))
    try:
        router.start()
        await router.wait_ready()
        await start_worker(first)

        # one worker: it creates every ERP order (at least: a new router group replays
        # what earlier tests of the session left, a leftover may be created too)
        before = await metric(first, CREATES)
        alone = await draft_orders(crm, account, cat, seed=unique)
        await confirm(crm, alone)
        await amend(crm, erp, alone, router)
        await _assert_exactly_one_erp_order_each(crm, erp, cat, alone)
        assert await metric(first, CREATES) - before >= len(alone)
        one_worker = await erp_image(erp, alone)

        # two workers, the second killed mid-run (once it has created orders: the first
        # 40 confirmed orders fall on both workers' partitions) and started again
        await start_worker(second)
        before = await metric(first, CREATES)
        together = await draft_orders(crm, account, cat, seed=unique)

        async def kill_the_second(confirmed: int) -> None:
            if confirmed == CONFIRMED_TOGETHER * 8:
                await wait_until(lambda: metric(second, CREATES), timeout=120)
                second.kill()  # its uncommitted slices are redone by the first

        await confirm(crm, together, meanwhile=kill_the_second)
        await settled(router, lambda: _count(erp, together, "TRUE", len(together)))
        assert await metric(first, CREATES) > before
        await start_worker(second)  # its partitions move back to it
        await amend(crm, erp, together, router)
        await _assert_exactly_one_erp_order_each(crm, erp, cat, together)
        assert await erp_image(erp, together) == one_worker

        # three workers: a third joins mid-run, then the first is killed for good
        before = await metric(second, CREATES)
        three = await draft_orders(crm, account, cat, seed=unique)

        async def add_the_third_kill_the_first(confirmed: int) -> None:
            if confirmed == CONFIRMED_TOGETHER * 8:
                await start_worker(third)
            elif confirmed == CONFIRMED_TOGETHER * 24:
                first.kill()  # its partitions go to the second and the third

        await confirm(crm, three, meanwhile=add_the_third_kill_the_first)
        await settled(router, lambda: _count(erp, three, "TRUE", len(three)))
        assert await metric(third, CREATES) > 0
        assert await metric(second, CREATES) > before
        await amend(crm, erp, three, router)
        await _assert_exactly_one_erp_order_each(crm, erp, cat, three)
        assert await erp_image(erp, three) == one_worker
    finally:
        for process in (third, second, first, router):
            process.stop()

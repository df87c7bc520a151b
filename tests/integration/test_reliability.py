"""Outages of the ERP database, the broker and Connect cost time, never orders or services.

Invariants (issue 9, cases 4 and 5; DESIGN.md 1 and 3): while CRM orders are being
confirmed, the ERP database stopped for 60 s (``pg_ctl stop -m fast``), the broker
killed (SIGKILL) and restarted, or Connect killed and restarted, leave

* every confirmed CRM order with exactly one ERP order equal to it (lines, products,
  quantities, prices), checked over both databases independently of the services;
* order-sync and inventory-projection running (an outage is retried, never a reason
  to exit), also an order-sync restarted while the ERP database is down;
* ``/readyz`` failing while the ERP database (order-sync) or the broker (every service)
  is gone, and answering 200 again once it is back.

The drills share the session's stack and restore what they broke before returning.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import httpx
import pytest

from ambidex.connectors import ConnectClient, load_connectors
from ambidex.stack.local import LocalStack, StackAddresses
from tests.conftest import ServiceProcess, wait_until
from tests.integration.conftest import running_service
from tests.integration.support import kill_component
from tests.integration.test_order_sync import Catalogue, catalogue, new_account, new_order
from tests.integration.test_order_sync_recovery import (
    _assert_exactly_one_erp_order_each,
    _random_lines,
)

SERVICES = ("order-sync", "inventory-projection")

# an outage of a minute, the catch-up behind it, and a stack start for the first drill
pytestmark = pytest.mark.timeout(900)


def _say(message: str) -> None:
    print(f"[drill {time.strftime('%H:%M:%S')}] {message}", flush=True)


@pytest.fixture
async def services(
    service_process: Callable[[str], ServiceProcess],
) -> dict[str, ServiceProcess]:
    return {name: await running_service(service_process, name) for name in SERVICES}


async def _ready(process: ServiceProcess) -> bool:
    try:
        async with httpx.AsyncClient(timeout=5.0) as client:
            return (await client.get(f"{process.metrics_url}/readyz")).status_code == 200
    except httpx.HTTPError:
        return False


async def _not_ready(process: ServiceProcess) -> bool:
    return not await _ready(process)


def _alive(process: ServiceProcess) -> bool:
    return process.process is not None and process.process.poll() is None


class Confirmations:
    """Confirms new CRM orders (3-5 lines each) one after another until stopped."""

    def __init__(self, pool: asyncpg.Pool, account: int, cat: Catalogue, seed: str) -> None:
        self.pool = pool
        self.account = account
        self.cat = cat
        self.rng = random.Random(seed)
        self.orders: list[int] = []
        self._stop = asyncio.Event()

    async def confirm(self) -> None:
        async with self.pool.acquire() as conn:
            self.orders.append(await new_order(
                conn, self.account, _random_lines(self.rng, self.cat),
                warehouse_code=self.cat.warehouse_code,
            ))

    async def run(self) -> None:
        touched = 0
        while not self._stop.is_set():
            await self.confirm()
            if len(self.orders) % 5 == 0:
                # an account change too, as in the sample workload: order-sync re-decides
                # that account's rejected orders and syncs its ERP customer
                touched += 1
                async with self.pool.acquire() as conn:
                    await conn.execute(
                        "UPDATE crm.account SET city = $2 WHERE id = $1",
                        self.account, f"Bern {touched % 2}",
                    )
            await asyncio.sleep(0.05)

    async def burst(self, count: int, concurrency: int = 4) -> None:
        """``count`` more confirmations at once: order-sync is busy when it breaks."""
        semaphore = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with semaphore:
                await self.confirm()

        await asyncio.gather(*(one() for _ in range(count)))

    def stop(self) -> None:
        self._stop.set()


@contextlib.asynccontextmanager
async def confirming(
    stack: StackAddresses, unique: str
) -> AsyncIterator[Confirmations]:
    cat = await catalogue(stack)
    pool = await asyncpg.create_pool(stack.crm_admin_dsn, min_size=1, max_size=6)
    assert pool is not None
    try:
        async with pool.acquire() as conn:
            account = await new_account(conn, unique)
        confirmations = Confirmations(pool, account, cat, unique)
        task = asyncio.create_task(confirmations.run())
        try:
            yield confirmations
        finally:
            confirmations.stop()
            await task
    finally:
        await pool.close()


async def _synced(erp: asyncpg.Connection, orders: list[int]) -> int:
    return int(await erp.fetchval(
        "SELECT count(DISTINCT crm_order_id) FROM erp.sales_order "
        "WHERE crm_order_id = ANY($1::bigint[])",
        orders,
    ))


async def _connectors_running(local_stack: LocalStack) -> None:
    """Every connector and task RUNNING (a task that failed in the outage restarted)."""
    async with ConnectClient(local_stack.config.connect_url) as client:
        for connector in load_connectors(local_stack.connector_values()):

            async def running(name: str = connector.name) -> bool:
                status = await client.status(name)
                if status is not None and status.running:
                    return True
                await client.restart_failed(name)
                return False

            await wait_until(running, timeout=180, interval=2.0)


async def _drill(
    stack: StackAddresses,
    local_stack: LocalStack,
    services: dict[str, ServiceProcess],
    unique: str,
    *,
    break_it: Callable[[], Awaitable[None]],
    mend_it: Callable[[], Awaitable[None]],
    outage_seconds: float,
    unready: tuple[str, ...],
    busy: bool = False,
    meanwhile: Callable[[], None] | None = None,
) -> dict[str, list[dict[str, object]]]:
    """Confirm orders through an outage and check the invariants of the module; returns
    per service the log entries of the Kafka client libraries written meanwhile."""
    erp = await asyncpg.connect(stack.erp_admin_dsn)
    crm = await asyncpg.connect(stack.crm_admin_dsn)
    try:
        async with confirming(stack, unique) as confirmations:

            async def some_synced() -> bool:
                return await _synced(erp, list(confirmations.orders)) >= 20

            await wait_until(some_synced, timeout=120)
            if busy:  # break it while order-sync is writing a backlog into the ERP
                synced = await _synced(erp, list(confirmations.orders))
                await confirmations.burst(1500)

                async def writing() -> bool:
                    return await _synced(erp, list(confirmations.orders)) >= synced + 100

                await wait_until(writing, timeout=120, interval=0.05)
            await erp.close()
            _say(f"breaking it; {len(confirmations.orders)} orders confirmed so far")
            log_offsets = {name: p.log_path.stat().st_size for name, p in services.items()}
            await break_it()
            for name in unready:  # readiness follows the outage
                await wait_until(lambda p=services[name]: _not_ready(p), timeout=60)
                _say(f"{name} not ready")
            if meanwhile is not None:
                meanwhile()
            await asyncio.sleep(outage_seconds)
            for name, process in services.items():
                assert _alive(process), f"{name} exited in the outage: {process.log_tail()}"
            _say("mending it")
            await mend_it()
            _say("mended")
            await asyncio.sleep(5)  # orders confirmed after the outage, too
        orders = confirmations.orders
        erp = await asyncpg.connect(stack.erp_admin_dsn)
        await _connectors_running(local_stack)
        _say(f"connectors running; {len(orders)} orders confirmed")

        async def all_synced() -> bool:
            return await _synced(erp, orders) == len(orders)

        await wait_until(all_synced, timeout=300, interval=1.0)
        _say("every order synced")
        for name, process in services.items():
            assert _alive(process), f"{name} exited: {process.log_tail()}"
            await process.wait_ready(timeout=120)  # ready again once everything is back
        await _assert_exactly_one_erp_order_each(crm, erp, await catalogue(stack), orders)
        return {
            name: _client_log_entries(process, log_offsets[name])
            for name, process in services.items()
        }
    finally:
        await crm.close()
        if not erp.is_closed():
            await erp.close()


def _client_log_entries(process: ServiceProcess, offset: int) -> list[dict[str, object]]:
    """Warnings and errors of the Kafka client loggers in ``process``'s log after
    ``offset`` (the log is one JSON object per line)."""
    entries = []
    with process.log_path.open("rb") as log:
        log.seek(offset)
        for line in log:
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                logger = str(entry.get("logger", ""))
                if logger.split(".")[0] in ("aiokafka", "kafka") and entry.get("level") in (
                    "WARNING", "ERROR", "CRITICAL"
                ):
                    entries.append(entry)
    return entries


async def test_the_erp_database_stopped_for_60_seconds_costs_no_order(
    stack: StackAddresses, local_stack: LocalStack, services: dict[str, ServiceProcess],
    unique: str,
) -> None:
    cluster = local_stack.postgres["erp"]
    await _drill(
        stack, local_stack, services, unique,
        break_it=lambda: _stop_postgres(cluster),
        mend_it=cluster.start,
        outage_seconds=60,
        unready=("order-sync",),
        busy=True,
        meanwhile=lambda: _restart(services["order-sync"]),
    )


def _restart(process: ServiceProcess) -> None:
    """Kill and start again, as a supervisor would after a crash: a service starting
    while a database is down waits for it (not ready), it does not exit."""
    process.kill()
    process.start()
    _say(f"{process.name} restarted")


async def _stop_postgres(cluster: object) -> None:
    stopped = await cluster.stop()  # type: ignore[attr-defined]
    assert stopped


async def test_the_broker_killed_and_restarted_costs_no_order(
    stack: StackAddresses, local_stack: LocalStack, services: dict[str, ServiceProcess],
    unique: str,
) -> None:
    async def kill() -> None:
        kill_component(local_stack.kafka)

    client_logs = await _drill(
        stack, local_stack, services, unique,
        break_it=kill,
        mend_it=local_stack.kafka.start,
        outage_seconds=15,
        unready=SERVICES,
    )
    for name, entries in client_logs.items():
        # the same client error is logged once per interval (10 s), with a count, not
        # hundreds of times a second: a handful of messages, each a few times at most
        per_message: dict[str, int] = {}
        for entry in entries:
            key = str(entry["message"]).split(":")[0]
            per_message[key] = per_message.get(key, 0) + 1
        assert len(entries) < 300, f"{name}: {len(entries)} client log lines, {per_message}"


async def test_connect_killed_and_restarted_costs_no_order(
    stack: StackAddresses, local_stack: LocalStack, services: dict[str, ServiceProcess],
    unique: str,
) -> None:
    async def kill() -> None:
        kill_component(local_stack.connect)

    await _drill(
        stack, local_stack, services, unique,
        break_it=kill,
        mend_it=local_stack.connect.start,
        outage_seconds=15,
        unready=(),
    )

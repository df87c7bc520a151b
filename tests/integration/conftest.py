"""Fixtures shared by the integration modules: each service running against the
session stack, and admin connections to both databases (closed
after each test)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest

from ambidex.stack.local import StackAddresses
from tests.conftest import ServiceProcess

#: the CRM and the ERP admin connections, in that order
Dbs = tuple[asyncpg.Connection, asyncpg.Connection]


async def running_service(
    service_process: Callable[[str], ServiceProcess], name: str
) -> ServiceProcess:
    """The session's process of service ``name``, started again if a previous test
    stopped or killed it, and ready."""
    process = service_process(name)
    if process.process is None or process.process.poll() is not None:
        process.start()
    await process.wait_ready()
    return process


@pytest.fixture
async def order_sync(service_process: Callable[[str], ServiceProcess]) -> ServiceProcess:
    """order-sync, started once for the session's stack and ready."""
    return await running_service(service_process, "order-sync")


@pytest.fixture
async def projection(service_process: Callable[[str], ServiceProcess]) -> ServiceProcess:
    """inventory-projection, started once for the session's stack and ready."""
    return await running_service(service_process, "inventory-projection")


@pytest.fixture
async def receivables(service_process: Callable[[str], ServiceProcess]) -> ServiceProcess:
    """receivables, started once for the session's stack and ready."""
    return await running_service(service_process, "receivables")


@pytest.fixture
async def production(
    service_process: Callable[[str], ServiceProcess], order_sync: ServiceProcess
) -> ServiceProcess:
    """production-status (and order-sync, which publishes the order identity), ready."""
    return await running_service(service_process, "production-status")


@pytest.fixture
async def customer_value(
    service_process: Callable[[str], ServiceProcess], receivables: ServiceProcess
) -> ServiceProcess:
    """customer-value (and receivables, which publishes the positions it reads), ready."""
    return await running_service(service_process, "customer-value")


@pytest.fixture
async def dbs(stack: StackAddresses) -> AsyncIterator[Dbs]:
    crm = await asyncpg.connect(stack.crm_admin_dsn)
    erp = await asyncpg.connect(stack.erp_admin_dsn)
    try:
        yield crm, erp
    finally:
        await crm.close()
        await erp.close()

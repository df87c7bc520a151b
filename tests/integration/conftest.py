"""Fixtures shared by the integration modules: order-sync and inventory-projection
running against the session stack, and admin connections to both databases (closed
after each test)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest

from ambidex.stack.local import StackAddresses
from tests.conftest import ServiceProcess

#: the CRM and the ERP admin connections, in that order
Dbs = tuple[asyncpg.Connection, asyncpg.Connection]


@pytest.fixture
async def order_sync(service_process: Callable[[str], ServiceProcess]) -> ServiceProcess:
    """order-sync, started once for the session's stack and ready."""
    process = service_process("order-sync")
    if process.process is None or process.process.poll() is not None:
        process.start()
    await process.wait_ready()
    return process


@pytest.fixture
async def projection(service_process: Callable[[str], ServiceProcess]) -> ServiceProcess:
    """inventory-projection, started once for the session's stack and ready."""
    process = service_process("inventory-projection")
    if process.process is None or process.process.poll() is not None:
        process.start()  # a previous test stopped or killed it
    await process.wait_ready()
    return process


@pytest.fixture
async def dbs(stack: StackAddresses) -> AsyncIterator[Dbs]:
    crm = await asyncpg.connect(stack.crm_admin_dsn)
    erp = await asyncpg.connect(stack.erp_admin_dsn)
    try:
        yield crm, erp
    finally:
        await crm.close()
        await erp.close()

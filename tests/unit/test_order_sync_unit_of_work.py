"""order-sync's PostgreSQL unit of work ends its ERP transaction as the code inside asks.

Invariants (fake pool and connection, no database): a unit of work whose block called
``commit()`` commits once when it ends, and only then are its writes remembered as
order-sync's own (echo memory); one left without ``commit()`` rolls back silently; one
left by an error rolls back and the error propagates; the connection always goes back
to the pool.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from services.order_sync.echo_memory import EchoMemory
from services.order_sync.erp_unit_of_work import ErpUnitOfWork


class FakeConnection:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        self.log.append("BEGIN")
        try:
            yield
        except BaseException:
            self.log.append("ROLLBACK")
            raise
        self.log.append("COMMIT")


class FakePool:
    def __init__(self) -> None:
        self.log: list[str] = []

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[FakeConnection]:
        self.log.append("acquire")
        try:
            yield FakeConnection(self.log)
        finally:
            self.log.append("release")


def unit(pool: FakePool, memory: EchoMemory) -> ErpUnitOfWork:
    uow = ErpUnitOfWork(None, pool, memory)  # type: ignore[arg-type]  # no CRM reads here
    uow._fingerprints.append(("sales_order", 1, "f"))  # as a write() would have recorded
    return uow


async def test_a_committed_unit_commits_once_and_remembers_its_writes() -> None:
    pool, memory = FakePool(), EchoMemory()
    async with unit(pool, memory) as uow:
        await uow.commit()
    assert pool.log == ["acquire", "BEGIN", "COMMIT", "release"]
    assert memory.history("sales_order", 1) == ["f"]


async def test_a_unit_left_without_commit_rolls_back_and_remembers_nothing() -> None:
    pool, memory = FakePool(), EchoMemory()
    async with unit(pool, memory):
        pass
    assert pool.log == ["acquire", "BEGIN", "ROLLBACK", "release"]
    assert memory.history("sales_order", 1) is None


async def test_an_error_rolls_back_and_propagates() -> None:
    pool, memory = FakePool(), EchoMemory()
    with pytest.raises(ConnectionError):
        async with unit(pool, memory) as uow:
            await uow.commit()
            raise ConnectionError("the ERP went away")
    assert pool.log == ["acquire", "BEGIN", "ROLLBACK", "release"]
    assert memory.history("sales_order", 1) is None


"""The accounts' names for the dashboard (the port, and its PostgreSQL implementation).

customer-value's figures name accounts by id only; the names are the CRM's
(``crm.account.name``), asked for the accounts of the page being served (a bounded list
of ids, one indexed query): the cost of a page does not grow with the customers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Protocol

import asyncpg
from pydantic import SecretStr

NAMES_QUERY = "SELECT id, name FROM crm.account WHERE id = ANY($1::bigint[])"


class AccountNames(Protocol):
    async def names(self, account_ids: Sequence[int]) -> Mapping[int, str]: ...


class PostgresNames:
    """:class:`AccountNames` from the CRM database. Its pool connects at the first
    question (and again at the next after a failure), so a CRM database that is down
    costs the dashboard the names, never the service its start."""

    def __init__(self, dsn: SecretStr) -> None:
        self.dsn = dsn
        self.pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()

    async def _pool(self) -> asyncpg.Pool:
        async with self._opening:
            if self.pool is None:
                self.pool = await asyncpg.create_pool(self.dsn.get_secret_value(),
                                                      min_size=0, max_size=2)
            return self.pool

    async def names(self, account_ids: Sequence[int]) -> Mapping[int, str]:
        if not account_ids:
            return {}
        pool = await self._pool()
        rows = await pool.fetch(NAMES_QUERY, list(account_ids))
        return {row["id"]: row["name"] for row in rows}

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()
            self.pool = None

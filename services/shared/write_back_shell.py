"""The I/O shell of a stateful service that writes into one table at its own write position.

production-status and customer-value write their figures into a CRM table through the
position-guarded sink at a write position of their own, ``(as-of in ms, revision)``
from source time, not at a source LSN. A worker rebuilt from the source topics alone
(a replay, a lost disk and changelog) starts with a source clock far behind what the
table holds, so at start its write position is *floored* at the newest one the table
holds (the fold's :meth:`Floored.floor`), and the same floor is applied to every fold
the runner loads again: a reload after a failed batch, before the floor reached the
durable state, keeps it (else the guard would refuse every write of the redo).

:class:`WriteBackShell` is that start (state, pool, floor) and stop; a service's shell
builds its :class:`~services.shared.stateful.StatefulRunner` with ``load=self.load``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Generic, Literal, Protocol, TypeVar

import asyncpg

from services.shared.databases import open_pool
from services.shared.runtime import Service
from services.shared.sinks import newest_position
from services.shared.state.changelog import Restored
from services.shared.state.store import KeyValue
from services.shared.stateful import Fold, FoldStep, StatefulRunner


class Floored(Fold[Any], Protocol):
    """A fold whose write position can be floored."""

    def floor(self, at: datetime, revision: int) -> None:
        """Never write below ``(at, revision)`` (what the table already holds)."""
        ...


F = TypeVar("F", bound=Floored)
S = TypeVar("S", bound=FoldStep)


class WriteBackShell(Generic[F, S]):
    """See the module docstring. ``table``: the write-back table whose newest position
    floors the write position; ``database``: where it is."""

    #: built by the service's shell, with ``load=self.load``
    runner: StatefulRunner[F, S]

    def __init__(self, service: Service, table: str, load: Callable[[KeyValue], F], *,
                 database: Literal["crm", "erp"] = "crm") -> None:
        self.service = service
        self.table = table
        self.database = database
        self._load = load
        #: the write position the table held at start (kept for every reload of the fold)
        self._written: tuple[datetime, int] | None = None
        self.pool: asyncpg.Pool | None = None

    def load(self, kv: KeyValue) -> F:
        """The fold over the durable state, floored at the table's write position."""
        fold = self._load(kv)
        if self._written is not None:
            fold.floor(*self._written)
        return fold

    async def open(self) -> Restored | None:
        """Open (or rebuild) the local state, then the write-back's database (one down at
        start-up is waited for: readiness says so), then floor the write position; what
        the state was restored from, if anything."""
        restored = await self.runner.open()
        self.pool = await open_pool(self.service, self.database)
        await self.service.retry.call(self._floor, what="reading the write position")
        return restored

    async def stop(self, _: Service) -> None:
        if self.pool is not None:
            await self.pool.close()
        self.runner.close()

    async def _floor(self) -> None:
        assert self.pool is not None
        newest = await newest_position(self.pool, self.table)
        if newest is not None:
            self._written = (datetime.fromtimestamp(newest[0] / 1000, UTC), newest[1])
            self.runner.fold.floor(*self._written)


__all__ = ["Floored", "WriteBackShell"]

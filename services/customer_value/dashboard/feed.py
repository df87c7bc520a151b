"""How the dashboard's view follows the service (the port, and the observer).

The service process hands the view the full current set once at start
(:func:`load`, in slices so the event loop keeps serving) and then every commit
(:meth:`ViewObserver.on_committed`): the records it wrote, the keys it removed (months
that emptied) and the commit's as-of time. Each change costs O(log n)
(:class:`~.view.DashboardView`), so a commit of k records costs O(k log n) in the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Protocol

from services.customer_value.dashboard.view import DashboardView
from services.customer_value.figures import CustomerValue
from services.customer_value.fold import ValueKey

#: records applied between two yields to the event loop while loading the full set
LOAD_SLICE = 500


class CommitObserver(Protocol):
    """What the service process calls after each commit."""

    def on_committed(self, values: Sequence[CustomerValue], as_of: datetime | None,
                     removed: Sequence[ValueKey] = ()) -> None: ...


class ViewObserver:
    """Applies each commit to the view, in commit order."""

    def __init__(self, view: DashboardView) -> None:
        self.view = view

    def on_committed(self, values: Sequence[CustomerValue], as_of: datetime | None,
                     removed: Sequence[ValueKey] = ()) -> None:
        self.view.commit(values, removed, as_of)


async def load(view: DashboardView, values: Iterable[CustomerValue],
               as_of: datetime | None) -> int:
    """Apply the full current set, yielding to the loop every :data:`LOAD_SLICE`
    records (120,000 records would otherwise hold it for seconds)."""
    applied = 0
    for seen, value in enumerate(values, 1):
        applied += view.apply(value)
        if seen % LOAD_SLICE == 0:
            await asyncio.sleep(0)
    if as_of is not None:
        view.as_of = as_of
    return applied

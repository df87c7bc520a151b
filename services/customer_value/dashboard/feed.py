"""How the dashboard's view follows the service: an observer of the customer-value
process (:class:`~services.customer_value.observer.ValueObserver`).

The service hands it the full set once its state is open (``loaded``) and each
commit's figures and changed open delay risks after (``committed``), on its event loop.
The full set (120,000 records at 10,000 customers x 12 months) is read from the state
inside ``loaded`` one record at a time, each packed at once into the view's own form
(:func:`~.view.pack`: some 300 bytes where the record takes 4 KB, so the records are
never all in memory: 560 MB at that size), then applied to the indexes in slices by a
task that yields to the loop between them, so the loop keeps serving; commits heard
meanwhile wait in order and are applied after it. Each record costs O(log n)
(:class:`~.view.DashboardView`), so a commit of k records costs O(k log n) in the loop.
A commit heard again (a batch redone after a crash) changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from datetime import datetime

from services.customer_value.dashboard.view import DashboardView, Packed, pack
from services.customer_value.figures import CustomerValue
from services.customer_value.observer import Snapshot, Update

log = logging.getLogger(__name__)

#: records applied between two yields to the event loop while loading the full set
LOAD_SLICE = 500


def packed(values: Iterable[CustomerValue]) -> list[Packed]:
    """Every record in the view's form, each packed as it is read (a record the view
    cannot hold, never one the service publishes, is logged and left out)."""
    out = []
    for value in values:
        try:
            out.append(pack(value))
        except ValueError as error:
            log.error("customer-value dashboard left a record out", extra={
                "key": list(value.key), "error": str(error)})
    return out


async def load(view: DashboardView, records: Iterable[Packed],
               as_of: datetime | None) -> int:
    """Apply the full current set (packed), yielding to the loop every
    :data:`LOAD_SLICE` records (120,000 records would otherwise hold it for seconds)."""
    applied = 0
    for seen, (key, figures) in enumerate(records, 1):
        applied += view.apply_packed(key, figures)
        if seen % LOAD_SLICE == 0:
            await asyncio.sleep(0)
    if as_of is not None:
        view.as_of = as_of
    return applied


def apply_update(view: DashboardView, update: Update) -> None:
    """One commit: a record the view cannot hold (never one the service publishes) is
    logged and left out, the rest of the commit still applied."""
    for key, value in update.values.items():
        try:
            if value is None:
                view.remove(key)
            else:
                view.apply(value)
        except ValueError as error:
            log.error("customer-value dashboard left a record out", extra={
                "key": list(key), "error": str(error)})
    if update.as_of is not None:
        view.as_of = update.as_of
    for risks in update.risks.values():
        view.set_risks(risks)


class DashboardObserver:
    """Keeps a :class:`DashboardView` equal to what the service published."""

    def __init__(self, view: DashboardView) -> None:
        self.view = view
        #: commits heard while the full set is loading, in order (None: not loading)
        self._waiting: list[Update] | None = None
        self.task: asyncio.Task[None] | None = None

    def loaded(self, snapshot: Snapshot) -> None:
        self._waiting = []
        try:  # the snapshot's values are read from the state: only inside this call
            records = packed(snapshot.values)
        except Exception:  # the dashboard must never stop the service
            self._waiting = None
            log.exception("customer-value dashboard could not read the figures")
            return
        self.task = asyncio.get_running_loop().create_task(
            self._load(snapshot, records), name="customer-value-dashboard-load")

    async def _load(self, snapshot: Snapshot, records: list[Packed]) -> None:
        try:
            await self._load_all(snapshot, records)
        except Exception:  # the dashboard must never stop the service
            self._waiting = None
            log.exception("customer-value dashboard could not load the figures")

    async def _load_all(self, snapshot: Snapshot, records: list[Packed]) -> None:
        applied = await load(self.view, records, snapshot.as_of)
        del records[:]  # the view holds them now
        for risks in snapshot.risks:
            self.view.set_risks(risks)
        waiting, self._waiting = self._waiting or [], None
        for update in waiting:
            apply_update(self.view, update)
        self.view.loaded = True
        log.info("customer-value dashboard loaded", extra={
            "records": applied, "accounts_at_risk": len(snapshot.risks),
            "commits_applied_after": len(waiting)})

    def committed(self, update: Update) -> None:
        if self._waiting is not None:
            self._waiting.append(update)
            return
        try:
            apply_update(self.view, update)
        except Exception:  # the dashboard must never stop the service's commits
            log.exception("customer-value dashboard could not apply a commit")

"""The dashboard follows customer-value's process as its observer: the full set is
loaded in slices while the loop keeps running other work, commits heard meanwhile are
applied after it in order (so a newer figure is never overwritten by the older full
set), emptied months and cleared risks leave the view, and a commit heard twice (a
batch redone after a crash) changes nothing."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

from services.customer_value.dashboard.feed import LOAD_SLICE, DashboardObserver
from services.customer_value.dashboard.view import DashboardView
from services.customer_value.figures import CustomerValue
from services.customer_value.observer import Snapshot, Update
from services.customer_value.risks import AccountRisks, OrderRisk
from tests.unit.test_customer_value_dashboard_view import value

AS_OF = datetime(2026, 12, 3, tzinfo=UTC)
LATER = datetime(2026, 12, 4, tzinfo=UTC)
D = Decimal
RISK = OrderRisk(9, "SO9", "late", "promise_missed", "in_production", None, None)


async def test_full_set_then_commits_in_order_while_the_loop_keeps_serving() -> None:
    view = DashboardView()
    observer = DashboardObserver(view)
    turns = 0

    async def other_work() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(other_work())
    await asyncio.sleep(0)
    started = turns
    observer.loaded(Snapshot([value(a, revenue="1.00") for a in range(LOAD_SLICE * 6)],
                             [AccountRisks(5, {"late": 1}, (RISK,))], AS_OF))
    # heard while the full set loads: newer than it
    observer.committed(Update({(1, "2026-01", "EUR"): value(1, revenue="9.00"),
                               (2, "2026-01", "EUR"): None},
                              {5: AccountRisks(5, {}, ()),
                               6: AccountRisks(6, {"late": 1}, (RISK,))}, LATER))
    assert observer.task is not None
    await observer.task
    task.cancel()
    assert turns - started >= 6  # the loop ran other work between the slices
    assert view.loaded and view.as_of == LATER
    assert view.top("revenue").rows[0].account_id == 1
    assert view.top("revenue").rows[0].totals["revenue_booked"] == value(1, revenue="9.00")[
        "revenue_booked"]
    assert view.customer(2) is None
    assert view.risks(5) is None and view.risks(6) is not None
    assert len(view) == LOAD_SLICE * 6 - 1

    revision = view.revision
    again = Update({(1, "2026-01", "EUR"): value(1, revenue="9.00"),
                    (2, "2026-01", "EUR"): None}, {}, LATER)
    observer.committed(again)
    assert view.revision == revision
    observer.committed(Update({(7, "2026-02", "USD"): value(7, "2026-02", "USD",
                                                            revenue="3.00")}, {}, LATER))
    assert view.currencies() == [("EUR", LOAD_SLICE * 6 - 1), ("USD", 1)]


async def test_the_full_set_is_read_inside_loaded_and_held_packed_never_as_records() -> None:
    """The snapshot's figures come from the state as iterated (the state moves once
    ``loaded`` returns): the observer reads them all inside the call and keeps only the
    view's packed form, never the records (560 MB at 10,000 customers x 12 months); a
    record the view cannot hold is left out, the rest loaded."""
    view = DashboardView()
    observer = DashboardObserver(view)
    inside = True
    alive = [0]
    live: list[int] = []

    class Counted(CustomerValue):
        """A record that counts how many of its kind are alive."""

        __slots__ = ()

        def __del__(self) -> None:
            alive[0] -= 1

    def from_state() -> Iterator[CustomerValue]:
        for account in range(LOAD_SLICE * 3):
            assert inside, "read after loaded() returned"
            made = value(account, revenue="2.00")
            if account == 7:
                made = dataclasses.replace(made, figures={**made.figures,
                                                          "revenue_booked": D("0.001")})
            fields = {f.name: getattr(made, f.name) for f in dataclasses.fields(made)}
            del made
            alive[0] += 1
            live.append(alive[0])
            yield Counted(**fields)

    observer.loaded(Snapshot(from_state(), [], AS_OF))
    inside = False
    assert observer.task is not None
    await observer.task
    assert view.loaded and len(view) == LOAD_SLICE * 3 - 1
    assert view.get((7, "2026-01", "EUR")) is None
    assert max(live) <= 2 and alive[0] == 0  # each record alive only while it is packed
    assert view.overall("EUR") is not None


async def test_the_service_serves_its_dashboard_and_a_taken_port_costs_only_the_dashboard(
) -> None:
    import socket
    from types import SimpleNamespace

    import httpx

    from services.customer_value.app import build_service
    from services.customer_value.dashboard.attach import AttachedDashboard
    from services.shared.settings import load_settings

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    settings = load_settings("customer-value", {
        "AMBIDEX_METRICS_HOST": "127.0.0.1", "AMBIDEX_RETRY_MAX_DELAY_SECONDS": "0.05",
        "AMBIDEX_CUSTOMER_VALUE_DASHBOARD_PORT": str(port)})
    service = build_service(settings)
    attached = [h.__self__ for h in service.on_start
                if isinstance(getattr(h, "__self__", None), AttachedDashboard)]
    assert len(attached) == 1  # built without an observer: the dashboard is it

    dashboard = AttachedDashboard(SimpleNamespace(settings=settings))  # type: ignore[arg-type]
    await dashboard.start(SimpleNamespace())  # type: ignore[arg-type]
    for _ in range(20):
        await asyncio.sleep(0.01)
    assert dashboard.server is None and dashboard._serving is not None
    assert not dashboard._serving.done()  # still trying, nothing raised
    taken.close()
    for _ in range(1000):
        if dashboard.server is not None:
            break
        await asyncio.sleep(0.01)
    assert dashboard.server is not None and dashboard.server.port == port
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}/api/overview")
    assert response.status_code == 200 and response.json()["loaded"] is False
    await dashboard.stop(SimpleNamespace())  # type: ignore[arg-type]


def test_a_record_the_view_cannot_hold_is_logged_never_raised_into_the_service(
        caplog: object) -> None:
    import dataclasses
    from decimal import Decimal

    import pytest

    view = DashboardView()
    observer = DashboardObserver(view)
    good = value(1, revenue="5.00")
    odd = dataclasses.replace(value(2, revenue="5.00"),
                              figures={**value(2, revenue="5.00").figures,
                                       "revenue_booked": Decimal("5.001")})
    with pytest.raises(ValueError, match="hundredths"):
        view.apply(odd)
    observer.committed(Update({odd.key: odd, good.key: good}, {}, LATER))
    assert view.customer(1) is not None and view.customer(2) is None
    assert view.as_of == LATER
    assert "left a record out" in caplog.text  # type: ignore[attr-defined]

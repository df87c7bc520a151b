"""production-status while it reads a backlog (a replay, a restart after downtime).

Invariants protected here (issue 12's replay rate): while a source database is not read
to its end, an order's status is not built and sent once per step that touched it (its
changes come on seven topics, read in different steps): the orders are deferred, in the
state (so a restart keeps them), and once both databases are read to their end each
deferred order is built once, from the whole backlog, at most ``DEFER_SLICE`` a step;
nothing is lost and the result is the one a live worker gives. A worker that stays
behind still builds them once the oldest waited ``DEFER_FOR``. Live (read to the end, or
less than ``DEFER_LAG`` behind the wall clock), nothing is deferred.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from services.production_status import service_fold
from services.production_status.service_fold import StatusFold
from services.shared.cooperative import run_to_end
from tests.unit.test_production_status_service_fold import (
    CRM_ORDER,
    T0,
    Source,
    crm_order,
    decode,
    erp_line,
    erp_order,
    production,
    statuses,
)


def frozen() -> Source:
    """A source whose fold's process clock stands still (no deferral times out)."""
    source = Source()
    source.fold = StatusFold(source.kv, decode, clock=lambda: 0.0)
    return source


def behind(source: Source) -> Any:
    """A step while neither database is read to its end."""
    return run_to_end(source.fold.steps(()))


def backlog(source: Source) -> None:
    source.beat("crm", T0)
    source.beat("erp", T0)
    source.commit("crm", [crm_order(date(2026, 11, 30))])
    source.identity()
    source.commit("erp", [erp_order(), erp_line(), production("confirmed", date(2026, 11, 6))])


def test_orders_touched_while_behind_are_built_once_when_caught_up() -> None:
    source = frozen()
    backlog(source)
    first = behind(source)
    assert first.outcome.statuses == [] and first.outcome.risks == []
    source.commit("erp", [production("in_progress", date(2026, 11, 6), started=T0)])
    assert behind(source).outcome.statuses == []
    assert source.fold.meta.deferred == 1
    caught_up = source.step()
    (status,) = caught_up.outcome.statuses
    assert (status["crm_order_id"], status["stage"]) == (CRM_ORDER, "in_production")
    assert source.fold.meta.deferred == 0
    assert source.step().outcome.statuses == []  # built once


def test_the_result_is_the_live_workers() -> None:
    live = Source()
    backlog(live)
    live_status = statuses(live.step())[CRM_ORDER]
    replay = frozen()
    backlog(replay)
    behind(replay)
    replay_status = statuses(replay.step())[CRM_ORDER]
    assert {k: v for k, v in replay_status.items() if k != "updated_at"} == {
        k: v for k, v in live_status.items() if k != "updated_at"}


def test_deferred_orders_survive_a_restart() -> None:
    source = frozen()
    backlog(source)
    behind(source)
    source.fold = StatusFold(source.kv, decode, clock=lambda: 0.0)  # a new worker
    source.beat("crm", T0)
    source.beat("erp", T0)
    (status,) = source.step().outcome.statuses
    assert status["crm_order_id"] == CRM_ORDER


def test_at_most_a_slice_is_built_a_step(monkeypatch: Any) -> None:
    monkeypatch.setattr(service_fold, "DEFER_SLICE", 2)
    source = frozen()
    source.fold._defer([1, 2, 3, 4, 5])
    assert source.fold.meta.deferred == 5
    source.step()
    assert source.fold.meta.deferred == 3
    source.step()
    source.step()
    assert source.fold.meta.deferred == 0
    assert list(source.kv.scan(b"dz:")) == []


def test_a_worker_that_stays_behind_still_writes_within_the_deferral_bound() -> None:
    now = [100.0]
    source = Source()
    source.fold = StatusFold(source.kv, decode, clock=lambda: now[0])
    backlog(source)
    assert behind(source).outcome.statuses == []
    now[0] += service_fold.DEFER_FOR / 2
    assert behind(source).outcome.statuses == []
    now[0] += service_fold.DEFER_FOR / 2
    (status,) = behind(source).outcome.statuses  # still behind, but waited long enough
    assert status["crm_order_id"] == CRM_ORDER and source.fold.meta.deferred == 0


def test_a_worker_a_few_seconds_behind_live_traffic_defers_nothing() -> None:
    source = Source()
    source.fold = StatusFold(source.kv, decode, clock=lambda: 0.0,
                             wall=lambda: T0 + timedelta(seconds=10))
    backlog(source)
    (status,) = behind(source).outcome.statuses  # not read to the end, but not far behind
    assert status["crm_order_id"] == CRM_ORDER and source.fold.meta.deferred == 0

"""production-status's risk ids say what the risk is (issue 12).

Invariants protected here:

* a worker rebuilt from the source topics with no state (a replay that batches the same
  history differently and so sees fewer transitions) publishes, for a risk the live run
  raised, the live run's id, and never gives a risk's id to a different risk (ids used
  to count the order's events: a rebuild's first event took the live run's first id);
* one history never publishes the same id twice: a risk raised again after it went
  away, and each clearing, get ids of their own;
* the same history folded twice gives the same ids;
* a worker's state written by the older code (``[level, events, reason]``) is read.
Pure: the kit's fold with its state in memory, no Kafka.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from services.production_status.records import dumps
from services.production_status.risk import Level, last_risk
from tests.unit.test_production_status_service_fold import (
    CRM_ORDER,
    T0,
    Source,
    crm_order,
    erp_line,
    erp_order,
    production,
)

PROMISED = date(2026, 11, 16)


def inspection(state: str, inspection_id: int) -> tuple[str, dict[str, Any]]:
    done = None if state == "pending" else T0
    return "quality_inspection", {"id": inspection_id, "production_order_id": 31,
                                  "state": state, "inspector": "ann", "inspected_at": done,
                                  "notes": None, "created_at": T0}


#: the order's history, one source transaction each: planned after the promise (late),
#: re-planned in time (cleared), its QC failed (at risk), reworked and passed (cleared),
#: failed again (at risk: another failure, another risk)
HISTORY: list[tuple[str, list[tuple[str, dict[str, Any]]]]] = [
    ("erp", [erp_order(), erp_line(), production("confirmed", date(2026, 11, 30))]),
    ("erp", [production("in_progress", date(2026, 11, 4), started=T0)]),
    ("erp", [inspection("failed", 41)]),
    ("erp", [inspection("passed", 42)]),
    ("erp", [inspection("failed", 43)]),
]


def started() -> Source:
    source = Source()
    source.beat("crm", T0)
    source.beat("erp", T0)
    source.commit("crm", [crm_order(PROMISED)])
    source.identity()
    return source


def live() -> list[dict[str, Any]]:
    """The history folded one transaction per step: every transition seen."""
    source = started()
    risks: list[dict[str, Any]] = []
    for database, rows in HISTORY:
        source.commit(database, rows)
        risks += source.step().outcome.risks
    return risks


def rebuilt() -> list[dict[str, Any]]:
    """The same history folded in one step, as a replay reading a backlog does."""
    source = started()
    for database, rows in HISTORY:
        source.commit(database, rows)
    return list(source.step().outcome.risks)


def test_the_live_run_raises_and_clears_each_risk_under_an_id_of_its_own() -> None:
    risks = live()
    assert [(r["level"], r["reason"]) for r in risks] == [
        ("late", "prediction_past_promise"), ("none", None), ("at_risk", "qc_failed"),
        ("none", None), ("at_risk", "qc_failed")]
    ids = [r["risk_id"] for r in risks]
    assert len(set(ids)) == len(ids)
    assert all(i.startswith(f"{CRM_ORDER}:") for i in ids)


def test_a_rebuilt_worker_publishes_the_live_runs_id_for_the_same_risk() -> None:
    live_risks = {r["risk_id"]: r for r in live()}
    (again,) = rebuilt()  # only the last risk is seen by a worker folding the backlog
    assert (again["level"], again["reason"]) == ("at_risk", "qc_failed")
    assert again["risk_id"] in live_risks
    same = live_risks[again["risk_id"]]
    assert (same["level"], same["reason"], same["findings"][0]["evidence"]) == (
        again["level"], again["reason"], again["findings"][0]["evidence"])


def test_the_same_history_gives_the_same_ids() -> None:
    assert [r["risk_id"] for r in live()] == [r["risk_id"] for r in live()]


def test_a_risk_raised_again_after_it_went_away_gets_a_new_id() -> None:
    source = started()
    source.commit("erp", HISTORY[0][1])
    first = source.step().outcome.risks
    source.commit("erp", [production("confirmed", date(2026, 11, 4))])
    cleared = source.step().outcome.risks
    source.commit("erp", [production("confirmed", date(2026, 11, 30))])  # planned late again
    second = source.step().outcome.risks
    ids = [r["risk_id"] for r in (*first, *cleared, *second)]
    assert [r["level"] for r in (*first, *cleared, *second)] == ["late", "none", "late"]
    assert len(set(ids)) == 3 and ids[2] == f"{ids[0]}:2"


def test_the_state_of_an_older_worker_is_read() -> None:
    source = started()
    source.fold.kv.put(b"rk:" + CRM_ORDER.to_bytes(8, "big", signed=True),
                       dumps(["late", 3, "prediction_past_promise"]))
    assert last_risk(source.fold.kv, CRM_ORDER)[0] is Level.LATE
    source.commit("erp", [erp_order(), erp_line(), production("confirmed", date(2026, 11, 4))])
    source.beat("crm", T0 + timedelta(minutes=1))
    (cleared,) = source.step().outcome.risks
    assert cleared["level"] == "none" and cleared["risk_id"] != f"{CRM_ORDER}:4"

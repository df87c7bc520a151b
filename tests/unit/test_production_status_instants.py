"""production-status measures a stage's duration from the instant it began (issue 12).

Invariant protected here: a shipment on the road, or a production order in quality
control, is overdue only once its learned p90 has passed since the instant it was
shipped (its inspection opened), whatever the time of day: never counted from that
day's midnight (a short learned p90 made an order "at risk" minutes after it left),
and never late because of a day boundary. The prediction counts from the same instant.
Only what the business names by day (a planned finish, a scheduled shipping date, the
promise) stays a day.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from services.production_status.durations import MIN_SAMPLES, QC, TRANSPORT
from services.production_status.progress import parse_instant
from services.production_status.records import (
    INSPECTION,
    PRODUCTION_ORDER,
    SHIPMENT,
    Inspection,
    Shipment,
    ShipmentLine,
)
from services.production_status.records import SHIPMENT_LINE as LINE
from services.production_status.risk import Reason, assess
from services.production_status.status import order_status
from tests.unit.test_production_status_domain import CRM, ERP, WH, World, mo, order_with_two_lines

D = Decimal
EVENING = datetime(2026, 11, 2, 20, tzinfo=UTC)


def learned_transport(w: World, hours: float) -> None:
    """MIN_SAMPLES delivered shipments of other orders, each ``hours`` on the road."""
    for n in range(MIN_SAMPLES):
        shipped = EVENING - timedelta(days=20)
        w.put(SHIPMENT, Shipment(100 + n, f"OUT{n}", 900 + n, WH, "delivered", None, shipped,
                                 shipped + timedelta(hours=hours), "Fast", "X"))


def learned_qc(w: World, hours: float) -> None:
    """MIN_SAMPLES finished inspections of other orders' production, ``hours`` each."""
    for n in range(MIN_SAMPLES):
        opened = EVENING - timedelta(days=20)
        w.put(PRODUCTION_ORDER, mo(200 + n, 1, "done", "10"), row_id=200 + n)
        w.put(INSPECTION, Inspection(200 + n, 200 + n, "passed", "ann",
                                     opened + timedelta(hours=hours), None, opened))


def reasons(w: World, now: datetime) -> set[Reason]:
    status = order_status(w.fold, CRM, now)
    assert status is not None
    return {f.reason for f in assess(status, w.fold.figures(ERP), w.fold.durations, now).findings}


def shipped_in_the_evening(hours: float) -> World:
    w = order_with_two_lines()
    learned_transport(w, hours)
    w.put(SHIPMENT, Shipment(1, "OUT1", ERP, WH, "shipped", None, EVENING, None, "Fast", "T1"))
    w.put(LINE, ShipmentLine(1, 1, 1, D("10")))
    w.put(LINE, ShipmentLine(2, 1, 2, D("4")))
    return w


def test_a_shipment_is_not_overdue_minutes_after_it_left_in_the_evening() -> None:
    w = shipped_in_the_evening(4)  # the learned leg: about 4 h
    assert w.fold.durations.quantiles(TRANSPORT, WH, "Fast").p90_hours < 5
    assert Reason.SHIPMENT_OVERDUE not in reasons(w, EVENING + timedelta(minutes=30))
    assert Reason.SHIPMENT_OVERDUE not in reasons(w, EVENING + timedelta(hours=3))
    assert Reason.SHIPMENT_OVERDUE in reasons(w, EVENING + timedelta(hours=6))


def test_a_shipment_overdue_names_the_instant_it_was_shipped() -> None:
    w = shipped_in_the_evening(4)
    now = EVENING + timedelta(hours=6)
    status = order_status(w.fold, CRM, now)
    assert status is not None
    found = assess(status, w.fold.figures(ERP), w.fold.durations, now).findings
    facts = dict(next(f for f in found if f.reason is Reason.SHIPMENT_OVERDUE).facts)
    assert parse_instant(facts["shipped_at"]) == EVENING


def test_a_shipment_sent_just_before_midnight_is_overdue_the_same_hours_later() -> None:
    late_evening = EVENING.replace(hour=23, minute=50)
    w = order_with_two_lines()
    learned_transport(w, 4)
    w.put(SHIPMENT, Shipment(1, "OUT1", ERP, WH, "shipped", None, late_evening, None, "Fast",
                             "T1"))
    w.put(LINE, ShipmentLine(1, 1, 1, D("14")))
    assert Reason.SHIPMENT_OVERDUE not in reasons(w, late_evening + timedelta(hours=3))
    assert Reason.SHIPMENT_OVERDUE in reasons(w, late_evening + timedelta(hours=6))


def in_qc_since(opened: datetime, learned_hours: float) -> World:
    w = order_with_two_lines()
    learned_qc(w, learned_hours)
    w.put(PRODUCTION_ORDER, mo(1, 1, "in_progress", "10", finish=date(2026, 11, 30),
                               started=opened))
    w.put(INSPECTION, Inspection(1, 1, "pending", None, None, None, opened))
    return w


def test_quality_control_is_not_overdue_minutes_after_it_began() -> None:
    w = in_qc_since(EVENING, 2)  # the learned QC: about 2 h
    assert w.fold.durations.quantiles(QC, WH).p90_hours < 3
    assert Reason.QC_OVERDUE not in reasons(w, EVENING + timedelta(minutes=20))
    assert Reason.QC_OVERDUE in reasons(w, EVENING + timedelta(hours=4))


def test_the_prediction_counts_the_road_from_the_instant_shipped() -> None:
    w = shipped_in_the_evening(8)  # shipped 20:00, about 8 h on the road: arrives tomorrow
    status = order_status(w.fold, CRM, EVENING + timedelta(minutes=5))
    assert status is not None
    tomorrow = EVENING.date() + timedelta(days=1)
    assert status.prediction.p50 == status.prediction.p90 == tomorrow
    transport = next(i for i in status.prediction.inputs if i.stage == "transport")
    assert transport.since == EVENING.date()


def test_a_figure_kept_by_day_by_an_older_worker_counts_from_the_end_of_its_day() -> None:
    assert parse_instant("2026-11-02") == datetime(2026, 11, 3, tzinfo=UTC)
    assert parse_instant("2026-11-02T20:00:00+00:00") == EVENING

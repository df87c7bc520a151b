"""production-status's business rules, one scenario each (pure; issue 12).

Invariants protected here:

* Stage: an order walks awaiting production -> in production -> in quality control ->
  QC failed / rework -> in quality control -> ready -> partially shipped -> shipped ->
  delivered, and a cancellation wins; per line produced / passed / shipped / delivered
  quantities add up across partial shipments; carrier and tracking are the latest
  shipment's.
* Progress before the identity is held: no status without the identity, the full one
  as soon as it arrives.
* The predicted delivery date follows the documented formula with the learned p50/p90
  (falling back to the defaults), and is the actual date once delivered.
* Learned durations stay a bounded histogram whatever the history, read p50/p90 within
  the bucket error, and a corrected completed row replaces its sample (never counted
  twice).
* Delay risk: a late carrier raises "at risk" once, delivery clears it once, assessing
  again raises nothing; QC failure raises at risk; a missed promise is late.
* Triage: a QC failure goes to quality, a slow carrier to transport, a line that passed
  QC and shipped on time to none, each with its evidence.
* Bad input: impossible dates, NaN, missing or mistyped columns are refused with a
  reason.
"""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from services.production_status.durations import (
    BUCKETS,
    DEFAULT_HOURS,
    MIN_SAMPLES,
    QC,
    TRANSPORT,
    Histogram,
    bucket_of,
)
from services.production_status.fold import ProgressFold
from services.production_status.records import (
    CRM_ORDER,
    ERP_ORDER,
    ERP_ORDER_LINE,
    INSPECTION,
    PRODUCTION_ORDER,
    SERVICE_CASE,
    SHIPMENT,
    SHIPMENT_LINE,
    CrmOrder,
    ErpOrder,
    ErpOrderLine,
    Identity,
    Inspection,
    ProductionOrder,
    ServiceCase,
    Shipment,
    ShipmentLine,
    parse,
)
from services.production_status.risk import Level, Reason, assess, transition
from services.production_status.status import Stage, line_statuses, order_status
from services.production_status.triage import Culprit, Verdict, triage
from services.shared.errors import BadInput
from services.shared.position import SourcePosition
from services.shared.state.store import MemoryState

D = Decimal
T0 = datetime(2026, 11, 2, 8, tzinfo=UTC)
CRM, ERP, WH = 501, 11, 3


class World:
    """A fold plus a source-position counter: ``put`` is "the ERP committed this row"."""

    def __init__(self) -> None:
        self.kv = MemoryState()
        self.fold = ProgressFold(self.kv)
        self.lsn = 0

    def put(self, table: str, row: Any, row_id: int | None = None) -> None:
        self.lsn += 1
        self.fold.apply(table, row.id if row_id is None else row_id,
                        SourcePosition(self.lsn, self.lsn), row)

    def identity(self, cancelled: bool = False, version: int = 1) -> None:
        self.fold.apply_identity(Identity(CRM, "SO501", version, ERP, "S000011", cancelled))

    def stage(self, now: datetime = T0) -> Stage:
        status = order_status(self.fold, CRM, now)
        assert status is not None
        return status.stage


def mo(mo_id: int, line: int, state: str, produced: str = "0", finish: date | None = None,
       started: datetime | None = None, finished: datetime | None = None) -> ProductionOrder:
    return ProductionOrder(mo_id, f"MO{mo_id}", ERP, line, WH, D("10"), D(produced), state,
                           date(2026, 11, 1), finish or date(2026, 11, 6), started, finished)


def order_with_two_lines() -> World:
    w = World()
    w.put(ERP_ORDER, ErpOrder(ERP, "S000011", "in_production", WH, None))
    w.put(ERP_ORDER_LINE, ErpOrderLine(1, ERP, 1, 70, D("10")))
    w.put(ERP_ORDER_LINE, ErpOrderLine(2, ERP, 2, 71, D("4")))
    w.put(CRM_ORDER, CrmOrder(CRM, "SO501", "confirmed", date(2026, 11, 20), 1))
    w.identity()
    return w


def test_an_order_walks_every_stage_and_a_cancellation_wins() -> None:
    w = order_with_two_lines()
    assert w.stage() is Stage.AWAITING_PRODUCTION  # no production order, order not reserved
    w.put(PRODUCTION_ORDER, mo(1, 1, "planned"))
    assert w.stage() is Stage.AWAITING_PRODUCTION
    w.put(PRODUCTION_ORDER, mo(1, 1, "in_progress", "4", started=T0))
    assert w.stage() is Stage.IN_PRODUCTION
    w.put(PRODUCTION_ORDER, mo(1, 1, "in_progress", "10", started=T0))
    w.put(INSPECTION, Inspection(1, 1, "pending", None, None, None, T0))
    assert w.stage() is Stage.IN_QUALITY_CONTROL
    w.put(INSPECTION, Inspection(1, 1, "failed", "ann", T0 + timedelta(hours=3), "crack", T0))
    w.put(PRODUCTION_ORDER, mo(1, 1, "in_progress", "0", started=T0))
    assert w.stage() is Stage.QC_FAILED
    w.put(INSPECTION, Inspection(2, 1, "pending", None, None, None, T0 + timedelta(days=1)))
    assert w.stage() is Stage.IN_QUALITY_CONTROL  # the rework is inspected again
    w.put(INSPECTION, Inspection(2, 1, "passed", "bo", T0 + timedelta(days=2), None,
                                 T0 + timedelta(days=1)))
    w.put(PRODUCTION_ORDER, mo(1, 1, "done", "10", started=T0, finished=T0 + timedelta(days=2)))
    assert w.stage() is Stage.READY
    w.put(SHIPMENT, Shipment(1, "OUT1", ERP, WH, "shipped", None, T0 + timedelta(days=3), None,
                             "DHL", "TRK1"))
    w.put(SHIPMENT_LINE, ShipmentLine(1, 1, 1, D("10")))
    assert w.stage() is Stage.PARTIALLY_SHIPPED
    w.put(SHIPMENT, Shipment(2, "OUT2", ERP, WH, "shipped", None, T0 + timedelta(days=4), None,
                             "UPS", "TRK2"))
    w.put(SHIPMENT_LINE, ShipmentLine(2, 2, 2, D("4")))
    assert w.stage() is Stage.SHIPPED
    w.put(SHIPMENT, Shipment(1, "OUT1", ERP, WH, "delivered", None, T0 + timedelta(days=3),
                             T0 + timedelta(days=5), "DHL", "TRK1"))
    assert w.stage() is Stage.SHIPPED
    w.put(SHIPMENT, Shipment(2, "OUT2", ERP, WH, "delivered", None, T0 + timedelta(days=4),
                             T0 + timedelta(days=6), "UPS", "TRK2"))
    assert w.stage() is Stage.DELIVERED
    status = order_status(w.fold, CRM, T0)
    assert status is not None
    assert (status.carrier, status.tracking_ref) == ("UPS", "TRK2")
    assert status.prediction.p50 == status.prediction.p90 == date(2026, 11, 8)  # actual
    lines = line_statuses(w.fold, ERP, T0)
    assert [(s.line_no, s.stage, s.quantities.produced, s.quantities.passed,
             s.quantities.shipped, s.quantities.delivered, s.carrier) for s in lines] == [
        (1, Stage.DELIVERED, D(10), D(10), D(10), D(10), "DHL"),
        (2, Stage.DELIVERED, 0, 0, D(4), D(4), "UPS"),
    ]
    w.put(CRM_ORDER, CrmOrder(CRM, "SO501", "cancelled", date(2026, 11, 20), 2))
    assert w.stage() is Stage.CANCELLED


def test_partial_shipments_add_up_per_line() -> None:
    w = order_with_two_lines()
    w.put(SHIPMENT, Shipment(1, "OUT1", ERP, WH, "delivered", None, T0, T0 + timedelta(days=1),
                             "DHL", "A"))
    w.put(SHIPMENT_LINE, ShipmentLine(1, 1, 1, D("3")))
    w.put(SHIPMENT, Shipment(2, "OUT2", ERP, WH, "shipped", None, T0, None, "UPS", "B"))
    w.put(SHIPMENT_LINE, ShipmentLine(2, 2, 1, D("5")))
    w.put(SHIPMENT_LINE, ShipmentLine(3, 2, 2, D("4")))
    line1, line2 = line_statuses(w.fold, ERP, T0)
    assert (line1.quantities.shipped, line1.quantities.delivered, line1.stage) == (
        D(8), D(3), Stage.PARTIALLY_SHIPPED)
    assert (line2.quantities.shipped, line2.stage, line2.tracking_ref) == (D(4), Stage.SHIPPED,
                                                                          "B")
    status = order_status(w.fold, CRM, T0)
    assert status is not None
    assert (status.quantities.shipped, status.quantities.delivered) == (D(12), D(3))
    assert status.stage is Stage.PARTIALLY_SHIPPED and status.shipments == 2


def test_progress_before_the_identity_is_held_and_shown_when_it_arrives() -> None:
    w = World()
    w.put(PRODUCTION_ORDER, mo(1, 1, "in_progress", "2", started=T0))
    w.put(ERP_ORDER_LINE, ErpOrderLine(1, ERP, 1, 70, D("10")))
    assert order_status(w.fold, CRM, T0) is None
    assert ("erp_order", ERP) in set(w.fold.waiting())  # no ERP header seen either
    w.put(ERP_ORDER, ErpOrder(ERP, "S000011", "in_production", WH, None))
    assert ("erp_order", ERP) not in set(w.fold.waiting())
    applied = w.fold.apply_identity(Identity(CRM, "SO501", 1, ERP, "S000011", False))
    assert applied.crm_orders == {CRM}
    status = order_status(w.fold, CRM, T0)
    assert status is not None
    assert (status.stage, status.quantities.produced) == (Stage.IN_PRODUCTION, D(2))
    assert status.missing == (f"CRM order {CRM} not seen yet (no promised date)",)
    # an older identity record (redelivered) changes nothing
    assert not w.fold.apply_identity(Identity(CRM, "SO501", 1, ERP, "S000011", False)).changed


# ------------------------------------------------------------------ durations, prediction


def deliver(w: World, shipment_id: int, hours: float, carrier: str = "DHL",
            warehouse: int = WH) -> None:
    shipped = T0 - timedelta(days=30)
    w.put(SHIPMENT, Shipment(shipment_id, f"OUT{shipment_id}", 900 + shipment_id, warehouse,
                             "delivered", None, shipped, shipped + timedelta(hours=hours),
                             carrier, "X"))


def test_histogram_is_bounded_and_reads_quantiles_within_the_bucket_error() -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(3.5, 0.6) for _ in range(20_000)]
    h = Histogram()
    for v in values:
        h.add(bucket_of(v), 1)
    assert len(h.counts) <= BUCKETS
    values.sort()
    for q in (0.5, 0.9):
        exact = values[int(q * len(values))]
        assert abs(h.quantile(q) - exact) / exact < 0.25
    for v in values:  # every sample taken back: nothing left
        h.add(bucket_of(v), -1)
    assert h.counts == {}


def test_prediction_uses_learned_transport_and_falls_back_to_defaults() -> None:
    w = order_with_two_lines()
    w.put(PRODUCTION_ORDER, mo(1, 1, "done", "10", started=T0, finished=T0))
    w.put(PRODUCTION_ORDER, mo(2, 2, "done", "4", started=T0, finished=T0))
    status = order_status(w.fold, CRM, T0)
    assert status is not None and status.stage is Stage.READY
    # nothing learned: now + default transport (72 h p50, twice that p90)
    assert status.prediction.p50 == (T0 + timedelta(hours=DEFAULT_HOURS[TRANSPORT])).date()
    assert [i.basis for i in status.prediction.inputs] == ["default"]
    for n in range(MIN_SAMPLES):
        deliver(w, 100 + n, 24)
    status = order_status(w.fold, CRM, T0)
    assert status is not None
    assert status.prediction.p50 == status.prediction.p90 == (T0 + timedelta(days=1)).date()
    assert status.prediction.inputs[0].basis == f"transport {WH}/*"
    assert status.prediction.inputs[0].samples == MIN_SAMPLES


def test_production_prediction_adds_qc_and_transport_to_the_planned_finish() -> None:
    w = order_with_two_lines()
    w.put(PRODUCTION_ORDER, mo(1, 1, "in_progress", "0", finish=date(2026, 11, 10), started=T0))
    w.put(PRODUCTION_ORDER, mo(2, 2, "done", "4", started=T0, finished=T0))
    status = order_status(w.fold, CRM, T0)
    assert status is not None
    end_of_finish_day = datetime(2026, 11, 11, tzinfo=UTC)
    qc, tr = DEFAULT_HOURS[QC], DEFAULT_HOURS[TRANSPORT]
    assert status.prediction.p50 == (end_of_finish_day + timedelta(hours=qc + tr)).date()
    assert status.prediction.p90 == (end_of_finish_day + timedelta(hours=2 * (qc + tr))).date()
    stages = {i.stage for i in status.prediction.inputs}
    assert stages == {"production", "quality_control", "transport"}


def test_a_corrected_delivery_replaces_its_learned_sample() -> None:
    w = World()
    deliver(w, 1, 10)
    deliver(w, 1, 200)  # the same shipment's delivered_at corrected
    h = w.fold.durations.histogram(TRANSPORT, WH, "DHL")
    assert h.counts == {bucket_of(200): 1}
    w.put(SHIPMENT, None, row_id=1)
    assert w.fold.durations.histogram(TRANSPORT, WH, None).counts == {}


# ------------------------------------------------------------------ delay risk


def shipped_order(carrier: str = "Slow") -> World:
    w = order_with_two_lines()
    for n in range(MIN_SAMPLES):
        deliver(w, 100 + n, 24, carrier)
    w.put(SHIPMENT, Shipment(1, "OUT1", ERP, WH, "shipped", None, T0, None, carrier, "TRK1"))
    w.put(SHIPMENT_LINE, ShipmentLine(1, 1, 1, D("10")))
    w.put(SHIPMENT_LINE, ShipmentLine(2, 1, 2, D("4")))
    return w


def risk_event(w: World, now: datetime) -> Any:
    status = order_status(w.fold, CRM, now)
    assert status is not None
    return transition(w.kv, status, assess(status, w.fold.figures(ERP), w.fold.durations, now),
                      now)


def test_a_late_carrier_raises_a_risk_once_and_its_delivery_clears_it_once() -> None:
    w = shipped_order()
    assert risk_event(w, T0 + timedelta(hours=12)) is None  # within the learned leg
    raised = risk_event(w, T0 + timedelta(days=3))
    assert raised is not None and not raised.cleared
    assert (raised.level, raised.reason) == (Level.AT_RISK, Reason.SHIPMENT_OVERDUE)
    assert raised.risk_id.startswith(f"{CRM}:at_risk:shipment_overdue:")
    facts = dict(raised.findings[0].facts)
    assert (facts["carrier"], facts["basis"]) == ("Slow", f"transport {WH}/Slow")
    assert risk_event(w, T0 + timedelta(days=4)) is None  # same level: nothing again
    w.put(SHIPMENT, Shipment(1, "OUT1", ERP, WH, "delivered", None, T0,
                             T0 + timedelta(days=4), "Slow", "TRK1"))
    cleared = risk_event(w, T0 + timedelta(days=4))
    assert cleared is not None and cleared.cleared and cleared.level is Level.NONE
    assert cleared.previous_level is Level.AT_RISK
    assert cleared.risk_id.startswith(f"{CRM}:none:") and cleared.risk_id != raised.risk_id
    assert risk_event(w, T0 + timedelta(days=5)) is None


def test_qc_failure_is_at_risk_and_a_missed_promise_is_late() -> None:
    w = order_with_two_lines()
    w.put(PRODUCTION_ORDER, mo(1, 1, "in_progress", "0", finish=date(2026, 11, 9), started=T0))
    w.put(INSPECTION, Inspection(1, 1, "failed", "ann", T0, "crack", T0))
    event = risk_event(w, T0)
    assert event is not None and (event.level, event.reason) == (Level.AT_RISK, Reason.QC_FAILED)
    late = risk_event(w, datetime(2026, 11, 21, 9, tzinfo=UTC))  # promised 2026-11-20
    assert late is not None and (late.level, late.reason) == (Level.LATE, Reason.PROMISE_MISSED)
    assert Reason.PRODUCTION_OVERDUE in {f.reason for f in late.findings}


# ------------------------------------------------------------------ triage


def case(w: World, category: str) -> None:
    w.put(SERVICE_CASE, ServiceCase(77, "CS77", CRM, "where is it", category, "open", T0))


def test_a_qc_failure_is_triaged_to_quality_with_the_inspection() -> None:
    w = order_with_two_lines()
    w.put(PRODUCTION_ORDER, mo(1, 1, "done", "10", started=T0, finished=T0))
    w.put(INSPECTION, Inspection(1, 1, "failed", "ann", T0, "crack in housing", T0))
    w.put(INSPECTION, Inspection(2, 1, "passed", "bo", T0, None, T0))
    case(w, "complaint")
    result = triage(w.fold, 77, T0)
    assert result is not None and result.culprit is Culprit.QUALITY
    failed = result.evidence[0]
    assert (failed.verdict, dict(failed.facts)["inspector"], dict(failed.facts)["notes"]) == (
        Verdict.FAILED, "ann", "crack in housing")


def test_a_slow_carrier_is_triaged_to_transport() -> None:
    w = shipped_order("Slow")
    w.put(SHIPMENT, Shipment(1, "OUT1", ERP, WH, "delivered", date(2026, 11, 2), T0,
                             T0 + timedelta(days=6), "Slow", "TRK1"))
    case(w, "delivery")
    result = triage(w.fold, 77, T0 + timedelta(days=7))
    assert result is not None and result.culprit is Culprit.TRANSPORT
    facts = dict(result.evidence[0].facts)
    assert (facts["carrier"], facts["tracking_ref"]) == ("Slow", "TRK1")


def test_a_line_that_passed_qc_and_shipped_on_time_is_triaged_to_none() -> None:
    w = order_with_two_lines()
    for n in range(MIN_SAMPLES):
        deliver(w, 100 + n, 48)
    w.put(PRODUCTION_ORDER, mo(1, 1, "done", "10", finish=date(2026, 11, 6), started=T0,
                               finished=T0 + timedelta(days=1)))
    w.put(INSPECTION, Inspection(1, 1, "passed", "bo", T0 + timedelta(days=1), None, T0))
    w.put(SHIPMENT, Shipment(1, "OUT1", ERP, WH, "delivered", date(2026, 11, 4),
                             T0 + timedelta(days=2), T0 + timedelta(days=3), "DHL", "TRK1"))
    w.put(SHIPMENT_LINE, ShipmentLine(1, 1, 1, D("10")))
    case(w, "quality")
    result = triage(w.fold, 77, T0 + timedelta(days=5))
    assert result is not None and result.culprit is Culprit.NONE
    verdicts = {(e.stage, e.verdict) for e in result.evidence}
    assert verdicts == {(Culprit.PRODUCTION, Verdict.ON_TIME), (Culprit.QUALITY, Verdict.PASSED),
                        (Culprit.TRANSPORT, Verdict.ON_TIME)}
    assert result.summary.startswith("no stage failed or ran late")


def test_a_case_before_the_identity_says_what_is_missing() -> None:
    w = World()
    case(w, "delivery")
    result = triage(w.fold, 77, T0)
    assert result is not None and result.culprit is Culprit.NONE
    assert result.missing == (f"order identity of CRM order {CRM}",)


# ------------------------------------------------------------------ bad input

GOOD_MO: dict[str, Any] = {
    "id": 1, "name": "MO1", "sales_order_id": 2, "sales_order_line_id": None,
    "warehouse_id": 3, "quantity": D("5"), "qty_produced": D("0"), "state": "in_progress",
    "date_planned_start": date(2026, 11, 1), "date_planned_finish": date(2026, 11, 3),
    "date_started": T0, "date_finished": None, "created_at": T0,
}


@pytest.mark.parametrize(("change", "reason"), [
    ({"date_finished": T0 - timedelta(hours=1)}, "before date_started"),
    ({"date_planned_finish": date(2026, 10, 1)}, "before date_planned_start"),
    ({"quantity": D("NaN")}, "is not a number"),
    ({"quantity": None}, "missing"),
    ({"warehouse_id": "3"}, "not an integer"),
    ({"date_started": datetime(2026, 11, 2, 8)}, "time zone"),
    ({"qty_produced": D("6")}, "outside"),
])
def test_unusable_rows_are_refused_with_a_reason(change: dict[str, Any], reason: str) -> None:
    assert isinstance(parse(PRODUCTION_ORDER, GOOD_MO), ProductionOrder)
    with pytest.raises(BadInput, match=reason):
        parse(PRODUCTION_ORDER, {**GOOD_MO, **change})


def test_impossible_inspection_and_shipment_dates_are_refused() -> None:
    with pytest.raises(BadInput, match="impossible dates"):
        parse(INSPECTION, {"id": 1, "production_order_id": 1, "state": "passed",
                           "inspector": "a", "inspected_at": T0 - timedelta(days=1),
                           "notes": None, "created_at": T0})
    with pytest.raises(BadInput, match="impossible dates"):
        parse(SHIPMENT, {"id": 1, "name": "OUT1", "sales_order_id": 1, "warehouse_id": 1,
                         "state": "delivered", "scheduled_date": None, "shipped_at": T0,
                         "delivered_at": T0 - timedelta(seconds=1), "carrier": None,
                         "tracking_ref": None})


# ------------------------------------------------------------------ wire format


def test_status_risk_and_triage_encode_with_the_published_schemas() -> None:
    from services.production_status import publish
    from services.production_status.risk import last_risk
    from services.shared.avro import AvroCodec, SchemaCatalogue

    codec = AvroCodec(SchemaCatalogue.load())
    w = shipped_order()
    now = T0 + timedelta(days=3)
    event = risk_event(w, now)
    status = order_status(w.fold, CRM, now)
    assert status is not None and event is not None
    record = publish.status_record(status, line_statuses(w.fold, ERP, now),
                                   last_risk(w.kv, CRM), now)
    decoded = codec.decode(codec.encode(publish.FULFILMENT_STATUS, record)).record
    assert (decoded["stage"], decoded["shipped"], decoded["risk_level"]) == (
        "shipped", D("14.000"), "at_risk")
    assert [line["shipped"] for line in decoded["lines"]] == [D("10.000"), D("4.000")]
    assert decoded["prediction_inputs"][0]["p90_minutes"] > 0
    risk = codec.decode(codec.encode(publish.DELAY_RISK, publish.risk_record(event))).record
    assert (risk["risk_id"], risk["findings"][0]["evidence"]["carrier"]) == (event.risk_id, "Slow")
    case(w, "delivery")
    result = triage(w.fold, 77, now)
    assert result is not None
    encoded = codec.encode(publish.CASE_TRIAGE, publish.triage_record(result))
    assert codec.decode(encoded).record["culprit"] == "transport"
    assert publish.topic_key(CRM) == b"501"


def test_a_status_its_schema_refuses_is_found_before_any_effect_and_can_be_left_out() -> None:
    """The output check (services/shared/output_check.py): a status whose ordered sum
    exceeds decimal(14, 3) is refused in the fold step; pruned, the others stay."""
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry

    from services.production_status import publish
    from services.production_status.effects import Effects
    from services.production_status.risk import last_risk
    from services.production_status.service_fold import Outcome
    from services.shared.avro import AvroCodec, SchemaCatalogue
    from services.shared.transaction_fold import Applied

    w = shipped_order()
    now = T0 + timedelta(days=3)
    status = order_status(w.fold, CRM, now)
    assert status is not None
    good = publish.status_record(status, line_statuses(w.fold, ERP, now),
                                 last_risk(w.kv, CRM), now)
    bad = {**good, "crm_order_id": 502, "ordered": D("120000000000.000")}
    service = SimpleNamespace(codec=AvroCodec(SchemaCatalogue.load()),
                              registry=CollectorRegistry(), name="production-status")
    effects = Effects(service)  # type: ignore[arg-type]
    step = Applied(Outcome(statuses=[good, bad]))
    refused = effects.check(step, None)  # type: ignore[arg-type]
    assert refused is not None and "ordered" in refused.reason
    assert step.outcome.statuses == [good, bad]  # checking changes nothing
    assert effects.check(Applied(Outcome(statuses=[good])), None) is None  # type: ignore[arg-type]
    assert effects.check(step, None, prune=True) is not None  # type: ignore[arg-type]
    assert step.outcome.statuses == [good]


def test_write_back_rows_have_exactly_the_columns_of_the_crm_tables() -> None:
    import re
    from pathlib import Path

    from services.production_status import publish, writeback
    from services.production_status.risk import last_risk

    sql = Path("deploy/sql/crm/060_production_status.sql").read_text()

    def columns(table: str) -> set[str]:
        body = sql.split(f"CREATE TABLE IF NOT EXISTS {table} (")[1].split("\n);")[0]
        found = {m.group(1) for m in re.finditer(r"^    ([a-z_0-9]+) ", body, re.M)}
        return found - {"source_commit_lsn", "source_lsn", "deleted", "PRIMARY", "CHECK"}

    w = shipped_order()
    now = T0 + timedelta(days=3)
    event = risk_event(w, now)
    status = order_status(w.fold, CRM, now)
    assert status is not None and event is not None
    record = publish.status_record(status, line_statuses(w.fold, ERP, now),
                                   last_risk(w.kv, CRM), now)
    assert set(writeback.status_row(record)) == columns(writeback.FULFILMENT_STATUS)
    lines = writeback.line_rows(record)
    assert len(lines) == 2 and set(lines[0]) == columns(writeback.FULFILMENT_LINE)
    assert set(writeback.risk_row(publish.risk_record(event))) == columns(
        writeback.DELAY_RISK_EVENT)
    case(w, "delivery")
    result = triage(w.fold, 77, now)
    assert result is not None
    row = writeback.triage_row(publish.triage_record(result))
    assert set(row) == columns(writeback.CASE_TRIAGE)
    assert '"carrier":"Slow"' in row["evidence"]


def test_a_carrier_named_with_a_bar_is_learned_and_looked_up_under_one_name() -> None:
    w = World()
    for n in range(MIN_SAMPLES):
        deliver(w, 100 + n, 30, carrier="Fast|Freight")
    assert w.fold.durations.quantiles(TRANSPORT, WH, "Fast|Freight").basis == (
        f"transport {WH}/Fast/Freight")

"""Delay risk of a CRM order: assessed from its status at ``now``, published once per
change of level (pure, plus the last published level kept in the state).

Findings (:func:`assess`), each with its evidence:

* ``promise_missed`` (late): the promised date (``crm.sales_order.requested_date``) has
  passed and not everything is delivered;
* ``prediction_past_promise``: the p50 prediction is after the promised date (late), or
  only the p90 one (at risk);
* ``shipment_overdue`` (at risk): a shipment on the road longer than its leg's p90
  (from the instant it was shipped), or not sent by its scheduled date (a day);
* ``qc_overdue`` (at risk): quality control running longer than its p90 (from the
  instant its inspection was opened);
* ``production_overdue`` (at risk): production still open after its planned finish day;
* ``qc_failed`` (at risk): a production order's latest inspection failed (rework).

Production and QC findings count only while some ordered quantity is on no shipment.

The level is the highest finding's; the reason the first finding of that level in the
order above. A delivered or cancelled order has no risk. :func:`transition` compares the
level with the last one published for the order (``rk:<crm order>`` -> ``[level, reason,
risk id, {id: times raised}]``) and returns an event only when it changed: ``raised`` for
a higher or lower non-none level, ``cleared`` when it went back to none.

The risk id says what the risk is, never when a worker happened to see it:
``<crm order>:<level>:<reason>:<digest of the leading finding's identity>`` (the
identity: the promised date; the shipment's warehouse, carrier and instant shipped or
its scheduled day; the instant QC began; the planned finish; the number of failed
inspections), with ``:<n>`` added when the same risk is raised an n-th time after it
went away; a clearing is ``<crm order>:none:<digest of the id it clears>``. So a
replay, or a worker rebuilt from the topics with no state, publishes the ids the live
run published for the same risks (the CRM table inserts once per id, consumers
deduplicate on it), and a different risk never reuses an id (a count of the order's
events did: a rebuilt worker that saw fewer transitions gave old ids to new risks).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum

from services.production_status.durations import QC, TRANSPORT, Durations
from services.production_status.progress import Figures, parse_instant
from services.production_status.records import dumps, loads
from services.production_status.status import FulfilmentStatus, Stage
from services.shared.state.store import KeyValue

Facts = tuple[tuple[str, str], ...]


class Level(StrEnum):
    NONE = "none"
    AT_RISK = "at_risk"
    LATE = "late"

    @property
    def rank(self) -> int:
        return (Level.NONE, Level.AT_RISK, Level.LATE).index(self)


class Reason(StrEnum):
    PROMISE_MISSED = "promise_missed"
    PREDICTION_PAST_PROMISE = "prediction_past_promise"
    SHIPMENT_OVERDUE = "shipment_overdue"
    QC_OVERDUE = "qc_overdue"
    PRODUCTION_OVERDUE = "production_overdue"
    QC_FAILED = "qc_failed"


REASON_ORDER = tuple(Reason)


@dataclass(frozen=True, slots=True)
class Finding:
    reason: Reason
    level: Level
    facts: Facts
    #: what the finding is about, stable while it holds (no figure that drifts with
    #: time or learning): it names the risk (module docstring)
    identity: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Assessment:
    level: Level
    reason: Reason | None
    findings: tuple[Finding, ...]


@dataclass(frozen=True, slots=True)
class RiskEvent:
    """One change of an order's risk level (``ambidex.delay-risks``)."""

    risk_id: str
    crm_order_id: int
    crm_order_number: str
    erp_order_id: int
    level: Level
    previous_level: Level
    cleared: bool
    reason: Reason | None
    findings: tuple[Finding, ...]
    promised_date: date | None
    predicted_p50: date | None
    predicted_p90: date | None
    detected_at: datetime


def assess(status: FulfilmentStatus, figures: Figures, durations: Durations, now: datetime
           ) -> Assessment:
    """The findings of the module docstring for one order at ``now``."""
    if status.stage in (Stage.DELIVERED, Stage.CANCELLED):
        return Assessment(Level.NONE, None, ())
    today = now.date()
    findings: list[Finding] = []
    promised = status.promised_date
    p50, p90 = status.prediction.p50, status.prediction.p90
    if promised is not None and today > promised:
        findings.append(Finding(Reason.PROMISE_MISSED, Level.LATE, (
            ("promised_date", promised.isoformat()),
            ("delivered", str(status.quantities.delivered)),
            ("ordered", str(status.quantities.ordered))), (promised.isoformat(),)))
    if promised is not None and p90 is not None and p90 > promised:
        late = p50 is not None and p50 > promised
        findings.append(Finding(
            Reason.PREDICTION_PAST_PROMISE, Level.LATE if late else Level.AT_RISK, (
                ("promised_date", promised.isoformat()),
                ("predicted_p50", "" if p50 is None else p50.isoformat()),
                ("predicted_p90", p90.isoformat())), (promised.isoformat(),)))
    q = status.quantities
    # everything ordered is on its way: open production (rework, replenishment) no
    # longer delays this order (as in the prediction)
    producing_matters = not q.ordered or q.shipped + figures.get(
        "ship.draft", 0) + figures.get("ship.ready", 0) < q.ordered
    for name in sorted(figures):
        kind, _, rest = name.partition(".")
        if kind in ("qc", "finish") and not producing_matters:
            continue
        if kind == "transit":
            wh, carrier, shipped = rest.split("|")
            tr = durations.quantiles(TRANSPORT, int(wh), carrier or None)
            if parse_instant(shipped) + timedelta(hours=tr.p90_hours) < now:
                findings.append(Finding(Reason.SHIPMENT_OVERDUE, Level.AT_RISK, (
                    ("warehouse_id", wh), ("carrier", carrier), ("shipped_at", shipped),
                    ("transport_p90_hours", f"{tr.p90_hours:.1f}"), ("basis", tr.basis)),
                    ("transit", wh, carrier, shipped)))
        elif kind == "pending":
            wh, day = rest.split("|")
            if day and date.fromisoformat(day) < today:
                findings.append(Finding(Reason.SHIPMENT_OVERDUE, Level.AT_RISK, (
                    ("warehouse_id", wh), ("scheduled_date", day), ("state", "not sent")),
                    ("pending", wh, day)))
        elif kind == "qc":
            wh, since = rest.split("|")
            qc = durations.quantiles(QC, int(wh))
            if parse_instant(since) + timedelta(hours=qc.p90_hours) < now:
                findings.append(Finding(Reason.QC_OVERDUE, Level.AT_RISK, (
                    ("warehouse_id", wh), ("in_qc_since", since),
                    ("qc_p90_hours", f"{qc.p90_hours:.1f}"), ("basis", qc.basis)), (wh, since)))
        elif kind == "finish":
            wh, day = rest.split("|")
            if day and date.fromisoformat(day) < today:
                findings.append(Finding(Reason.PRODUCTION_OVERDUE, Level.AT_RISK, (
                    ("warehouse_id", wh), ("planned_finish", day),
                    ("production_orders", str(figures[name]))), (wh, day)))
    rework = figures.get("mo.rework")
    if rework and producing_matters:
        findings.append(Finding(Reason.QC_FAILED, Level.AT_RISK, (
            ("production_orders_in_rework", str(rework)),
            ("failed_inspections", str(figures.get("failed", 0)))),
            (str(figures.get("failed", 0)),)))
    findings.sort(key=lambda f: (-f.level.rank, REASON_ORDER.index(f.reason)))
    if not findings:
        return Assessment(Level.NONE, None, ())
    return Assessment(findings[0].level, findings[0].reason, tuple(findings))


def _risk_key(crm_order_id: int) -> bytes:
    return b"rk:" + crm_order_id.to_bytes(8, "big", signed=True)


@dataclass(slots=True)
class _Last:
    """What ``rk:`` keeps of an order: the level and reason last published, that
    event's id, and how many times each risk id was raised."""

    level: Level
    reason: Reason | None
    risk_id: str | None
    raised: dict[str, int]


def _read(kv: KeyValue, crm_order_id: int) -> _Last:
    raw = kv.get(_risk_key(crm_order_id))
    if raw is None:
        return _Last(Level.NONE, None, None, {})
    data = loads(raw)
    if isinstance(data[1], int):  # [level, events so far, reason]: an older worker's
        level, count, reason = data
        return _Last(Level(level), None if reason is None else Reason(reason),
                     f"{crm_order_id}:{count}", {})
    level, reason, risk_id, raised = data
    return _Last(Level(level), None if reason is None else Reason(reason), risk_id,
                 dict(raised))


def _digest(*parts: str) -> str:
    return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).hexdigest()


def risk_id(crm_order_id: int, assessment: Assessment, cleared_id: str | None) -> str:
    """The id of the event moving the order to ``assessment`` (module docstring),
    before its ``:<n>`` for a risk raised again."""
    if assessment.level is Level.NONE or assessment.reason is None:
        return f"{crm_order_id}:{Level.NONE.value}:{_digest(cleared_id or '')}"
    lead = assessment.findings[0]
    return (f"{crm_order_id}:{assessment.level.value}:{assessment.reason.value}:"
            f"{_digest(*lead.identity)}")


def last_risk(kv: KeyValue, crm_order_id: int) -> tuple[Level, Reason | None]:
    """The level (and its reason) last published for the order."""
    last = _read(kv, crm_order_id)
    return last.level, last.reason


def transition(kv: KeyValue, status: FulfilmentStatus, assessment: Assessment, now: datetime
               ) -> RiskEvent | None:
    """The event to publish when the order's level changed (and remember it), else None."""
    last = _read(kv, status.crm_order_id)
    if assessment.level == last.level:
        return None
    base = risk_id(status.crm_order_id, assessment, last.risk_id)
    times = last.raised.get(base, 0) + 1
    event_id = base if times == 1 else f"{base}:{times}"
    if assessment.level is not Level.NONE:
        last.raised[base] = times
    reason = None if assessment.reason is None else assessment.reason.value
    kv.put(_risk_key(status.crm_order_id),
           dumps([assessment.level.value, reason, event_id, last.raised]))
    return RiskEvent(
        risk_id=event_id,
        crm_order_id=status.crm_order_id,
        crm_order_number=status.crm_order_number,
        erp_order_id=status.erp_order_id,
        level=assessment.level,
        previous_level=last.level,
        cleared=assessment.level is Level.NONE,
        reason=assessment.reason,
        findings=assessment.findings,
        promised_date=status.promised_date,
        predicted_p50=status.prediction.p50,
        predicted_p90=status.prediction.p90,
        detected_at=now,
    )

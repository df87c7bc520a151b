"""production-status: a row naming a parent it does not know is held, then judged once.

Invariants (issue 12, "bad input ... never held forever"):

* a row naming an unknown parent (an order line, production order or shipment of an
  unknown ERP order, an inspection of an unknown production order, a shipment line of
  an unknown shipment, a service case of an unknown CRM order) is folded, and its
  record is kept out of the step's release while the parent may still come: until the
  parent's database is read to its end AND its source time passes the commit by the
  grace;
* the parent arriving within the grace: the row folds into its order as any other and
  its record is released, no dead letter;
* the parent never arriving: the record is dead-lettered once (cause
  unknown_reference, the row and the parent named), released, and nothing stays held;
* a restart (a new fold over the same state) redelivering the record does not
  dead-letter it twice, and a record still waiting at the restart is judged once.
Pure: the kit's fold over an in-memory state, no Kafka.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pytest

from services.production_status.service_fold import StatusFold
from services.shared.cooperative import run_to_end
from services.shared.errors import Cause
from services.shared.transaction_fold import Applied
from services.shared.verdicts import UNKNOWN_REFERENCE_GRACE, UnknownReference
from tests.unit.test_production_status_service_fold import (
    CRM_ORDER,
    ERP_ORDER,
    T0,
    Source,
    crm_order,
    decode,
    erp_line,
    erp_order,
    production,
    statuses,
)

LATER = T0 + 2 * UNKNOWN_REFERENCE_GRACE
UNKNOWN = 999


def step(source: Source, caught_up: tuple[str, ...] = ("crm", "erp")) -> Applied[Any]:
    return run_to_end(source.fold.steps(caught_up))


def orphan_mo(order: int = UNKNOWN, mo_id: int = 32) -> tuple[str, dict[str, Any]]:
    """A production order naming ERP order ``order``."""
    table, row = production("confirmed", date(2026, 11, 6), mo_id=mo_id)
    return table, {**row, "sales_order_id": order, "sales_order_line_id": None}


def clocked() -> Source:
    source = Source()
    source.beat("crm", T0)
    source.beat("erp", T0)
    return source


def test_a_parent_arriving_within_the_grace_folds_the_row_without_a_letter() -> None:
    source = clocked()
    source.commit("crm", [crm_order(date(2026, 11, 30))])
    source.identity()
    (mo, _) = source.commit("erp", [orphan_mo(ERP_ORDER, mo_id=31)])
    held = step(source)
    assert mo not in held.release and held.dead_letters == []
    assert len(source.fold.verdicts) == 1
    source.commit("erp", [erp_order(), erp_line()], at=T0 + timedelta(seconds=2))
    source.beat("erp", LATER)
    out = step(source)
    assert out.dead_letters == [] and mo in out.release
    assert len(source.fold.verdicts) == 0
    # it folded into its order like any production order
    status = statuses(out)[CRM_ORDER]
    assert (status["stage"], status["erp_order_id"]) == ("awaiting_production", ERP_ORDER)
    assert source.fold.core.figures(ERP_ORDER)["mo.awaiting"] == 1


def test_a_parent_that_never_comes_is_dead_lettered_once_after_the_grace() -> None:
    source = clocked()
    handles = source.commit("erp", [orphan_mo()])
    mo, marker = handles
    held = step(source)
    assert mo not in held.release and marker in held.release and held.dead_letters == []
    source.beat("erp", LATER)
    # the grace has passed, but the ERP is not read to its end: the order may still come
    waiting = step(source, caught_up=("crm",))
    assert waiting.dead_letters == [] and mo not in waiting.release
    # read to its end, and within the grace: still waiting
    fresh = clocked()
    (other, _) = fresh.commit("erp", [orphan_mo()])
    early = step(fresh)
    assert early.dead_letters == [] and other not in early.release
    out = step(source)
    ((handle, error),) = out.dead_letters
    assert handle is mo and isinstance(error, UnknownReference)
    assert error.cause is Cause.UNKNOWN_REFERENCE
    assert "erp.production_order 32: ERP order 999 is unknown" in error.reason
    assert mo in out.release
    # once: nothing held after, nothing judged again
    assert len(source.fold.verdicts) == 0
    source.beat("erp", LATER + timedelta(minutes=5))
    after = step(source)
    assert after.dead_letters == []
    # the row is kept: the status of its order will show it if the order ever comes
    assert source.fold.core.figures(UNKNOWN)["mo.awaiting"] == 1


@pytest.mark.parametrize(("table", "row", "named"), [
    ("sales_order_line", {"id": 22, "order_id": UNKNOWN, "line_no": 1, "item_id": 70,
                          "quantity": 3}, "erp.sales_order_line 22: ERP order 999"),
    ("shipment", {"id": 51, "name": "WH/OUT/51", "sales_order_id": UNKNOWN,
                  "warehouse_id": 3, "state": "ready", "scheduled_date": None,
                  "shipped_at": None, "delivered_at": None, "carrier": None,
                  "tracking_ref": None}, "erp.shipment 51: ERP order 999"),
    ("quality_inspection", {"id": 41, "production_order_id": UNKNOWN, "state": "pending",
                            "inspector": None, "inspected_at": None, "notes": None,
                            "created_at": T0},
     "erp.quality_inspection 41: production order 999"),
    ("shipment_line", {"id": 61, "shipment_id": UNKNOWN, "sales_order_line_id": 21,
                       "quantity": 3}, "erp.shipment_line 61: shipment 999"),
])
def test_each_kind_of_erp_row_waits_for_its_parent(table: str, row: dict[str, Any],
                                                   named: str) -> None:
    source = clocked()
    (handle, _) = source.commit("erp", [(table, row)])
    assert handle not in step(source).release
    source.beat("erp", LATER)
    ((letter, error),) = step(source).dead_letters
    assert letter is handle and named in error.reason


def test_a_service_case_waits_for_its_crm_order() -> None:
    source = clocked()
    (case, _) = source.commit("crm", [("service_case", {
        "id": 77, "number": "CS77", "sales_order_id": UNKNOWN, "subject": "late",
        "category": "delivery", "state": "new", "opened_at": T0})])
    assert case not in step(source).release
    source.beat("crm", LATER)
    assert step(source, caught_up=("erp",)).dead_letters == []  # the CRM is not caught up
    ((letter, error),) = step(source).dead_letters
    assert letter is case and "crm.service_case 77: CRM order 999" in error.reason


def test_a_newer_version_naming_a_known_parent_ends_the_wait_without_a_letter() -> None:
    source = clocked()
    source.commit("erp", [erp_order(), erp_line()])
    (first, _) = source.commit("erp", [orphan_mo(mo_id=31)])
    assert first not in step(source).release
    (second, _) = source.commit("erp", [orphan_mo(ERP_ORDER, mo_id=31)])
    source.beat("erp", LATER)
    out = step(source)
    assert out.dead_letters == [] and first in out.release and second in out.release
    assert len(source.fold.verdicts) == 0


def test_a_redelivery_after_a_restart_is_not_dead_lettered_twice() -> None:
    source = clocked()
    source.commit("erp", [orphan_mo()])
    xid = source.xid
    source.beat("erp", LATER)
    assert len(step(source).dead_letters) == 1
    source.fold = StatusFold(source.kv, decode)  # a restart over the durable state
    source.redeliver("erp", [orphan_mo()], xid)
    source.beat("erp", LATER + timedelta(minutes=1))
    out = step(source)
    assert out.dead_letters == [] and len(source.fold.verdicts) == 0
    assert {h.topic for h in out.release} >= {"cdc.erp.production_order"}


def test_a_row_still_waiting_at_a_restart_is_judged_once() -> None:
    source = clocked()
    source.commit("erp", [orphan_mo()])
    xid = source.xid
    step(source)
    source.fold = StatusFold(source.kv, decode)  # its record was never released
    source.redeliver("erp", [orphan_mo()], xid)
    assert step(source).dead_letters == []  # within the grace
    source.beat("erp", LATER)
    assert len(step(source).dead_letters) == 1
    assert step(source).dead_letters == [] and len(source.fold.verdicts) == 0


def test_a_slow_snapshot_makes_no_verdict_due_only_streaming_does() -> None:
    """The kit judges by the streamed time (commits, heartbeats): a snapshot reads one
    table after another, so rows read long after an orphan's read say nothing of the
    tables read later (issue 9: false letters during a slow initial snapshot)."""
    source = Source()
    source.snapshot("erp", [orphan_mo()], at=T0)
    read_later = source.snapshot("erp", [orphan_mo(mo_id=33)], at=LATER)
    out = step(source)
    assert out.dead_letters == [] and len(source.fold.verdicts) == 2
    assert source.fold.streamed == {}
    source.beat("erp", LATER)  # streaming has begun, past the first read by the grace
    out = step(source)
    assert [str(e.reason).split(":")[0] for _, e in out.dead_letters] == [
        "erp.production_order 32"]
    assert read_later[0] not in out.release  # read at LATER: within its grace still

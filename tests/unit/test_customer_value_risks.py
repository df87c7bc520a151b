"""customer-value's open delay risks per account (services/customer_value/risks.py) and
what its fold keeps across a reload (service_fold.py).

Invariants protected:

* an account's open risks are the orders whose last published status has a level other
  than ``none`` and whose CRM order names the account, whatever order the status and
  the order arrive in; a redelivered or older status changes nothing; a tombstone or a
  cleared level takes the order out; an order moved to another account moves its risk;
* the cost of a change does not grow with the account's open risks (counted state
  operations for an account with 1 and with 200 open risks are equal);
* a bad status record is dead-lettered, the others are folded;
* the as-of time and the write position survive a reload of the fold from its state,
  and the write position only grows (floored at what the table holds).
Pure: the state in memory, no Kafka.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from services.customer_value.risks import STATUS_TOPIC, DelayRisks, OrderRisk
from services.customer_value.service_fold import ValueFold
from services.shared.state.store import MemoryState
from tests.unit.test_customer_value_service_fold import CODEC, CUSTOMER, ORDER, Source, shipment

T0 = datetime(2026, 3, 2, 8, tzinfo=UTC)


def risk(order: int, level: str, reason: str | None = "production_late") -> OrderRisk:
    return OrderRisk(order, f"SO{order}", level, None if level == "none" else reason,
                     "in_production", date(2026, 4, 1), date(2026, 4, 9))


class CountingState(MemoryState):
    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def get(self, key: bytes) -> bytes | None:
        self.ops += 1
        return super().get(key)

    def put(self, key: bytes, value: bytes) -> None:
        self.ops += 1
        super().put(key, value)

    def delete(self, key: bytes) -> None:
        self.ops += 1
        super().delete(key)


def test_open_risks_follow_the_last_status_and_the_orders_account() -> None:
    risks = DelayRisks(MemoryState())
    assert risks.status(10, 5, risk(10, "late")) == set()  # account not known yet
    assert risks.order(10, 7) == {7}
    assert risks.order(11, 7) == set()
    assert risks.status(11, 3, risk(11, "at_risk")) == {7}
    now = risks.of(7)
    assert now.counts == {"late": 1, "at_risk": 1} and now.total == 2
    assert [o.crm_order_id for o in now.orders] == [10, 11]
    assert risks.status(10, 5, risk(10, "none")) is None  # redelivery: stale
    assert risks.status(10, 4, risk(10, "none")) is None  # older: stale
    assert risks.status(10, 6, risk(10, "none")) == {7}
    assert risks.of(7).counts == {"at_risk": 1}
    assert risks.order(11, 8) == {7, 8}  # moved to another account
    assert risks.of(7).total == 0 and risks.of(8).counts == {"at_risk": 1}
    assert risks.status(11, 9, None) == {8}  # tombstone
    assert risks.of(8).total == 0 and list(risks.accounts()) == []
    assert risks.status(11, 8, risk(11, "late")) is None  # older than the tombstone


def test_a_change_costs_the_same_for_a_small_and_a_large_account() -> None:
    costs = []
    for n in (1, 200):
        state = CountingState()
        risks = DelayRisks(state)
        for order in range(n):
            risks.order(order, 7)
            risks.status(order, 1, risk(order, "at_risk"))
        state.ops = 0
        risks.status(0, 2, risk(0, "late"))
        risks.order(0, 8)
        costs.append(state.ops)
    assert costs[0] == costs[1]


def status_record(order: int, level: str) -> dict[str, Any]:
    q = Decimal("1.000")
    return {
        "crm_order_id": order, "crm_order_number": f"SO{order}", "erp_order_id": 5,
        "erp_order_name": "S5", "stage": "in_production", "ordered": q, "produced": q,
        "passed": q, "shipped": q, "delivered": q, "production_orders": [], "shipments": 0,
        "carrier": None, "tracking_ref": None, "promised_date": date(2026, 4, 1),
        "predicted_p50": date(2026, 4, 9), "predicted_p90": None, "prediction_inputs": [],
        "risk_level": level, "risk_reason": "production_late", "missing": [], "lines": [],
        "updated_at": T0}


def test_the_fold_reads_statuses_and_dead_letters_a_bad_one() -> None:
    source = Source()
    source.commit("crm", [("sales_order", {
        "id": 30, "number": "SO30", "account_id": 7, "state": "draft", "currency_code": "EUR",
        "amount_total": Decimal("10.00")})])
    source.step()
    good = CODEC.encode("fulfilment_status", status_record(30, "late"))
    source.fold.published(source.record(STATUS_TOPIC, good, b"30"))
    source.fold.published(source.record(STATUS_TOPIC, b"\x00bad", b"31"))
    source.fold.published(source.record(STATUS_TOPIC, good, b"32"))  # key is not its order
    out = source.step()
    assert len(out.dead_letters) == 2
    assert "order 30 under key 32" in out.dead_letters[1][1].reason
    assert out.outcome.risks[7].counts == {"late": 1}
    assert out.outcome.statuses == 1 and len(out.release) == 3


def test_as_of_and_the_write_position_survive_a_reload() -> None:
    source = Source()
    source.commit("erp", [("customer", CUSTOMER), ("sales_order", ORDER),
                          ("shipment", shipment(Decimal("12.00")))])
    first = source.step().outcome
    assert first.position is not None and first.as_of == T0
    reloaded = ValueFold(source.fold.kv, decode=lambda v: CODEC.decode(v).record)
    assert reloaded.as_of == T0 and reloaded.meta.revision == first.position.lsn
    reloaded.floor(datetime(2027, 1, 1, tzinfo=UTC), 50)
    source.fold = reloaded
    source.commit("erp", [("shipment", shipment(Decimal("13.00")))])
    second = source.step().outcome
    assert second.position is not None and second.position > first.position
    assert second.position.lsn == 51
    assert [v.account_id for v in reloaded.current()] == [7]

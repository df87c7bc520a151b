"""customer-value on the kit (services/customer_value/service_fold.py, emit.py) and the
canonical records it reads.

Invariants protected:

* a source transaction is applied whole: one bad row (NaN freight, a cost without its
  currency) rejects every record of it to the dead letters with the reason, nothing of
  it shows in any figure, and the next transaction is folded;
* receivables' positions (published Avro) are folded by contract; an unreadable record
  is dead-lettered, a tombstone takes the contract's figures out, a redelivery
  changes nothing;
* what is published and written carries the same figures: the record encodes against
  schemas/published/customer_value/v1.avsc, the row has exactly the columns of
  crm_integration.customer_value (deploy/sql/crm/080_customer_value.sql).
Pure: the kit's fold with its state in memory, no Kafka.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord

from services.customer_value import emit
from services.customer_value.service_fold import (
    POSITIONS_TOPIC,
    Outcome,
    ValueFold,
    parse_change,
    parse_position,
)
from services.shared.avro import AvroCodec, SchemaCatalogue
from services.shared.changes import ChangeOp
from services.shared.cooperative import run_to_end
from services.shared.errors import BadInput
from services.shared.rows import BadColumn
from services.shared.source_records import erp
from services.shared.state.store import MemoryState
from services.shared.stateful import Handle
from services.shared.transaction_fold import Applied
from tests.builders import change_event
from tests.unit.test_transactions import end

D = Decimal
T0 = datetime(2026, 3, 2, 8, tzinfo=UTC)
CODEC = AvroCodec(SchemaCatalogue.load())
SQL = Path(__file__).resolve().parents[2] / "deploy" / "sql"

CUSTOMER = {"id": 3, "code": "C3", "name": "Acme", "currency_code": "EUR", "origin": "ambidex",
            "crm_account_id": 7, "active": True}
ORDER = {"id": 5, "name": "S5", "customer_id": 3, "state": "open", "currency_code": "EUR",
         "warehouse_id": 1, "origin": "erp", "amount_total": D("100.00")}


RETURN = {"id": 21, "name": "RMA/21", "sales_order_id": 5, "sales_order_line_id": 1,
          "shipment_line_id": 1, "quantity": D(2), "reason": "damaged",
          "state": "requested", "requested_at": T0}


def shipment(freight: Any, currency: str | None = "EUR", sid: int = 11) -> dict[str, Any]:
    return {"id": sid, "name": f"WH/OUT/{sid}", "sales_order_id": 5, "warehouse_id": 1,
            "state": "shipped", "shipped_at": T0, "carrier": "UPS", "freight_cost": freight,
            "freight_currency_code": currency}


def decode(value: bytes) -> Any:
    return CODEC.decode(value).record


class Source:
    def __init__(self) -> None:
        self.fold = ValueFold(MemoryState(), decode=decode)
        self.offset = 0
        self.xid = 100

    def record(self, topic: str, value: bytes | None = b"v", key: bytes = b"k") -> Handle:
        self.offset += 1
        return ConsumerRecord(topic, 0, self.offset, 0, 0, key, value, None, 1, 1, ())

    def commit(self, database: str, rows: list[tuple[str, dict[str, Any]]]) -> None:
        self.xid += 1
        xid = str(self.xid)
        counts: dict[str, int] = {}
        for order, (table, row) in enumerate(rows, start=1):
            event = change_event(database, table, after=row, commit_lsn=1_000 * self.xid,
                                 lsn=1_000 * self.xid + order, transaction_id=xid,
                                 order=order, commit_time=T0)
            self.fold.change(event, self.record(f"cdc.{database}.{table}"))
            counts[f"{database}.{table}"] = counts.get(f"{database}.{table}", 0) + 1
        self.fold.marker(database, end(xid, counts, lsn=1_000 * self.xid + 999),
                         self.record(f"cdc.{database}.transaction"))

    def position(self, contract: int, invoiced: str, paid: str) -> Handle:
        value = CODEC.encode("ambidex.receivables.ReceivablePosition", {
            "contract_id": contract, "contract_number": f"CT{contract}", "account_id": 7,
            "state": "active", "currency": "EUR", "contracted": D("900.00"), "installments": 3,
            "scheduled": D("900.00"), "invoiced": D(invoiced), "paid": D(paid),
            "outstanding": D(invoiced) - D(paid), "overdue": D(0), "overdue_1_30": D(0),
            "overdue_31_60": D(0), "overdue_61_90": D(0), "overdue_over_90": D(0),
            "next_due_date": None, "next_due_amount": None, "incomplete": [],
            "as_of": date(2026, 3, 2)})
        return self.record(POSITIONS_TOPIC, value, str(contract).encode())

    def step(self) -> Applied[Outcome]:
        return run_to_end(self.fold.steps(("crm", "erp")))


def test_a_bad_row_rejects_its_transaction_whole_and_the_next_one_is_folded() -> None:
    source = Source()
    source.commit("erp", [("customer", CUSTOMER), ("sales_order", ORDER)])
    source.step()
    source.commit("erp", [("shipment", shipment(D("12.00"), sid=12)),
                          ("shipment", shipment(D("NaN")))])
    bad = source.step()
    reasons = sorted(e.reason for h, e in bad.dead_letters if h.topic == "cdc.erp.shipment")
    assert bad.outcome.values == {} and len(reasons) == 2
    assert reasons[0] == "erp.shipment.freight_cost is not a number (NaN)"
    assert reasons[1].startswith("source transaction 102 rejected whole")
    source.commit("erp", [("shipment", shipment(D("5.00"), None))])
    assert "freight_currency_code" in source.step().dead_letters[0][1].reason
    source.commit("erp", [("shipment", shipment(D("12.00")))])
    good = source.step()
    value = good.outcome.values[(7, "2026-03", "EUR")]
    assert value is not None and value["freight"] == D("12.00")
    assert value.counts["shipments"] == 1
    assert good.outcome.as_of == T0


def test_positions_are_folded_by_contract_and_a_bad_one_is_dead_lettered() -> None:
    source = Source()
    source.commit("crm", [("contract", {
        "id": 40, "number": "CT40", "account_id": 7, "state": "active",
        "currency_code": "EUR", "total_amount": D("900.00"), "start_date": date(2026, 3, 1)})])
    source.step()
    first = source.position(40, "300.00", "100.00")
    source.fold.published(first)
    source.fold.published(source.record(POSITIONS_TOPIC, b"\x00garbage", b"41"))
    out = source.step()
    assert [h.offset for h, _ in out.dead_letters] == [source.offset]
    value = out.outcome.values[(7, "2026-03", "EUR")]
    assert value is not None
    assert (value["revenue_booked"], value["invoiced"], value["collected"],
            value["outstanding"]) == (D("900.00"), D("300.00"), D("100.00"), D("200.00"))
    source.fold.published(first)  # a redelivery (an older offset): nothing changes
    assert source.step().outcome.stale == 1
    source.fold.published(source.record(POSITIONS_TOPIC, None, b"40"))
    gone = source.step().outcome.values[(7, "2026-03", "EUR")]
    assert gone is not None and gone["invoiced"] == 0 and gone["revenue_booked"] == D("900.00")


def _columns(path: Path) -> set[str]:
    body = re.search(r"CREATE TABLE IF NOT EXISTS \S+ \((.*?)\n\);", path.read_text(), re.S)
    assert body is not None
    return {m for m in re.findall(r"^\s{4}(\w+)\s", body.group(1), re.M)
            if m not in ("PRIMARY", "CHECK", "UNIQUE")}


def _added_columns(path: Path) -> set[str]:
    """Columns a later migration adds (``ADD COLUMN IF NOT EXISTS name``)."""
    return set(re.findall(r"ADD COLUMN IF NOT EXISTS (\w+)", path.read_text()))


def test_the_record_and_the_row_carry_the_same_figures() -> None:
    source = Source()
    source.commit("erp", [("customer", CUSTOMER), ("sales_order", ORDER),
                          ("shipment", shipment(D("12.00")))])
    value = source.step().outcome.values[(7, "2026-03", "EUR")]
    assert value is not None
    record = emit.record(value, T0)
    decoded = decode(CODEC.encode(emit.SCHEMA, record))
    assert decoded["freight"] == D("12.00") and decoded["month"] == date(2026, 3, 1)
    assert decoded["sources"] == [{"source": "erp.shipment", "rows": 1, "figures": [
        {"name": "freight", "amount": D("12.00")}]}]
    row = emit.row(value, T0)
    assert set(row) == (_columns(SQL / "crm" / "080_customer_value.sql")
                        | _added_columns(SQL / "crm" / "100_customer_value_returns.sql")) - {
        "source_commit_lsn", "source_lsn", "deleted", "updated_at"}
    for name, amount in row.items():
        if name in record and isinstance(amount, Decimal):
            assert record[name] == amount
    assert emit.key((7, "2026-03", "EUR")) == b"7:2026-03:EUR"


@pytest.mark.parametrize(("record", "row", "column"), [
    (erp.ProductionOrder, {"id": 1, "item_id": 1, "warehouse_id": 1, "quantity": D(1),
                           "state": "done", "material_cost": D("Infinity"),
                           "cost_currency_code": "EUR"}, "material_cost"),
    (erp.QualityInspection, {"id": 1, "production_order_id": 1, "state": "failed",
                             "rework_cost": D("3.00")}, "cost_currency_code"),
    (erp.ShipmentLine, {"id": 1, "shipment_id": 1, "sales_order_line_id": 1, "item_id": 1,
                        "quantity": D(1), "unit_cost": D("-1.00"),
                        "cost_currency_code": "EUR"}, "unit_cost"),
    (erp.ReturnOrder, {**RETURN, "credit_amount": D("NaN"), "currency_code": "EUR"},
     "credit_amount"),
    (erp.ReturnOrder, {**RETURN, "handling_cost": D("-2.00"), "currency_code": "EUR"},
     "handling_cost"),
    (erp.ReturnOrder, {**RETURN, "handling_cost": D("2.00")}, "currency_code"),
])
def test_a_bad_cost_names_table_and_column(record: Any, row: dict[str, Any],
                                           column: str) -> None:
    with pytest.raises(BadColumn) as caught:
        record.from_row(row)
    assert column in caught.value.reason


def test_a_return_costs_its_credit_and_handling_once_its_goods_are_back() -> None:
    """A requested return costs nothing yet; received, it counts (month received, the
    order's customer); credited, its credit and handling add to the cost to serve."""
    source = Source()
    source.commit("erp", [("customer", CUSTOMER), ("sales_order", ORDER),
                          ("shipment", shipment(D("12.00")))])
    source.step()
    source.commit("erp", [("return_order", RETURN)])
    assert source.step().outcome.values == {}
    received = {**RETURN, "state": "received", "received_at": T0}
    source.commit("erp", [("return_order", received)])
    value = source.step().outcome.values[(7, "2026-03", "EUR")]
    assert value is not None and value.counts["returns"] == 1
    assert value["cost_to_serve"] == D("12.00")
    credited = {**received, "state": "credited", "credit_amount": D("80.00"),
                "handling_cost": D("7.50"), "currency_code": "EUR"}
    source.commit("erp", [("return_order", credited)])
    value = source.step().outcome.values[(7, "2026-03", "EUR")]
    assert value is not None
    assert (value["return_credit"], value["return_handling"], value["cost_to_serve"]) == (
        D("80.00"), D("7.50"), D("99.50"))
    assert value.sources["erp.return_order"] == {
        "rows": 1, "return_credit": D("80.00"), "return_handling": D("7.50")}
    record = decode(CODEC.encode(emit.SCHEMA, emit.record(value, T0)))
    assert (record["return_credit"], record["returns"]) == (D("80.00"), 1)
    source.commit("erp", [("return_order", {**credited, "state": "cancelled"})])
    value = source.step().outcome.values[(7, "2026-03", "EUR")]
    assert value is not None and value.counts["returns"] == 0
    assert value["cost_to_serve"] == D("12.00")


def test_deletes_take_a_row_out_and_truncates_and_bad_positions_are_bad_input() -> None:
    source = Source()
    source.commit("erp", [("customer", CUSTOMER), ("sales_order", ORDER),
                          ("shipment", shipment(D("12.00")))])
    source.step()
    source.xid += 1
    xid = str(source.xid)
    gone = change_event("erp", "shipment", op=ChangeOp.DELETE, before=shipment(D("12.00")),
                        commit_lsn=1_000 * source.xid, transaction_id=xid, commit_time=T0)
    assert parse_change(gone).node is None
    source.fold.change(gone, source.record("cdc.erp.shipment"))
    source.fold.marker("erp", end(xid, {"erp.shipment": 1}, lsn=1_000 * source.xid + 9),
                       source.record("cdc.erp.transaction"))
    assert source.step().outcome.values == {(7, "2026-03", "EUR"): None}
    with pytest.raises(BadInput, match="TRUNCATE"):
        parse_change(change_event("erp", "shipment", op=ChangeOp.TRUNCATE, commit_lsn=5))
    record = {"contract_id": 1, "account_id": 7, "currency": "EUR", "invoiced": D("NaN"),
              "paid": D(0), "outstanding": D(0)}
    with pytest.raises(BadInput, match="invoiced"):
        parse_position(b"1", record, 3)
    with pytest.raises(BadInput, match="not a contract id"):
        parse_position(b"x", None, 4)


def test_a_figure_its_schema_refuses_is_found_before_any_effect_and_can_be_left_out() -> None:
    """The output check (services/shared/output_check.py): a month whose freight exceeds
    the record's decimal is refused in the fold step (its transaction is then rejected
    whole, not crash-looping the effects); pruned, it is neither published nor written,
    and the other months stay."""
    from dataclasses import replace
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry

    from services.customer_value.effects import Effects

    source = Source()
    source.commit("erp", [("customer", CUSTOMER), ("sales_order", ORDER),
                          ("shipment", shipment(D("12.00")))])
    step = source.step()
    good = step.outcome.values[(7, "2026-03", "EUR")]
    assert good is not None
    huge = {**good.figures, "freight": D("1" + "0" * 30)}
    bad = replace(good, month="2026-04", figures=huge)
    step.outcome.values[(7, "2026-04", "EUR")] = bad
    step.outcome.values[(7, "2026-05", "EUR")] = None  # emptied: nothing to check
    service = SimpleNamespace(codec=CODEC, registry=CollectorRegistry(), name="customer-value")
    effects = Effects(service)  # type: ignore[arg-type]
    refused = effects.check(step, None)  # type: ignore[arg-type]
    assert refused is not None and "freight" in refused.reason
    assert len(step.outcome.values) == 3  # checking changes nothing
    assert effects.check(step, None, prune=True) is not None  # type: ignore[arg-type]
    assert set(step.outcome.values) == {(7, "2026-03", "EUR"), (7, "2026-05", "EUR")}
    assert effects.check(step, None) is None  # type: ignore[arg-type]

"""production-status's kit fold: whole transactions in, one status per CRM order out.

Invariants (issue 12; DESIGN.md 3, 4, 6):

* a source transaction is applied whole: one bad row (an impossible date) rejects every
  record of it to the dead letters with the reason, nothing of it shows in any status,
  and the next transaction is folded;
* the clock is source time: the older of both databases' times, never backwards,
  unknown (no risk assessed) until both were seen; the same history gives the same
  records;
* progress before the order identity is held and published when the identity arrives;
  an unreadable identity record is dead-lettered;
* a redelivered transaction publishes nothing again (state is a function of the latest
  row versions; the records sent are remembered by digest);
* a case is triaged, and a delay raises a risk once; an open order left alone is
  re-assessed as the source clock passes (its risk raised without a change);
* a worker rebuilt from the sources writes above what the write-back holds, yet judges
  each change at its own source time (the floor is the write position's, not the
  clock's).
Pure: the kit's fold with its state in memory, no Kafka.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from aiokafka.structs import ConsumerRecord

from services.production_status.service_fold import EPOCH, StatusFold
from services.shared.avro import AvroCodec, SchemaCatalogue
from services.shared.changes import ChangeEvent, ChangeOp
from services.shared.cooperative import run_to_end
from services.shared.state.store import MemoryState
from services.shared.stateful import Handle
from services.shared.transaction_fold import Applied
from tests.builders import change_event
from tests.unit.test_transactions import end

T0 = datetime(2026, 11, 2, 8, tzinfo=UTC)
CRM_ORDER, ERP_ORDER, WH = 501, 11, 3
CODEC = AvroCodec(SchemaCatalogue.load())
D = Decimal


def decode(value: bytes) -> Any:
    return CODEC.decode(value).record


class Source:
    """Feeds a :class:`StatusFold` as the kit's intake would: changes, markers, offsets."""

    def __init__(self) -> None:
        self.kv = MemoryState()
        self.fold = StatusFold(self.kv, decode)
        self.offset = 0
        self.lsn = {"crm": 0, "erp": 0}
        self.xid = 100

    def record(self, topic: str, value: bytes | None = b"v") -> Handle:
        self.offset += 1
        return ConsumerRecord(topic, 0, self.offset, 0, 0, b"k", value, None, 1, 1, ())

    def commit(self, database: str, rows: list[tuple[str, dict[str, Any]]],
               at: datetime = T0) -> list[Handle]:
        """One source transaction of ``rows`` (table, row after), whole."""
        self.xid += 1
        xid = str(self.xid)
        counts: dict[str, int] = {}
        handles = []
        for order, (table, row) in enumerate(rows, start=1):
            self.lsn[database] += 1
            event: ChangeEvent = change_event(
                database, table, after=row, commit_lsn=1_000 * self.xid,
                lsn=1_000 * self.xid + order, transaction_id=xid, order=order, commit_time=at)
            handle = self.record(f"cdc.{database}.{table}")
            self.fold.change(event, handle)
            handles.append(handle)
            counts[f"{database}.{table}"] = counts.get(f"{database}.{table}", 0) + 1
        marker = self.record(f"cdc.{database}.transaction")
        self.fold.marker(database, end(xid, counts, lsn=1_000 * self.xid + 999), marker)
        return [*handles, marker]

    def redeliver(self, database: str, rows: list[tuple[str, dict[str, Any]]], xid: int,
                  at: datetime = T0) -> None:
        counts: dict[str, int] = {}
        for order, (table, row) in enumerate(rows, start=1):
            event = change_event(database, table, after=row, commit_lsn=1_000 * xid,
                                 lsn=1_000 * xid + order, transaction_id=str(xid),
                                 order=order, commit_time=at)
            self.fold.change(event, self.record(f"cdc.{database}.{table}"))
            counts[f"{database}.{table}"] = counts.get(f"{database}.{table}", 0) + 1
        self.fold.marker(database, end(str(xid), counts, lsn=1_000 * xid + 999),
                         self.record(f"cdc.{database}.transaction"))

    def snapshot(self, database: str, rows: list[tuple[str, dict[str, Any]]],
                 at: datetime = T0) -> list[Handle]:
        """Rows read by Debezium's snapshot at ``at`` (each delivered alone)."""
        handles = []
        for table, row in rows:
            event = change_event(database, table, op=ChangeOp.READ, after=row, commit_lsn=0,
                                 lsn=500, transaction_id=None, order=None, commit_time=at,
                                 snapshot=True)
            handle = self.record(f"cdc.{database}.{table}")
            self.fold.change(event, handle)
            handles.append(handle)
        return handles

    def beat(self, database: str, at: datetime) -> None:
        self.fold.heartbeat(database, at, self.record(f"heartbeat.cdc.{database}"))

    def identity(self, value: bytes | None = None) -> Handle:
        if value is None:
            value = CODEC.encode("order_identity", {
                "crm_order_id": CRM_ORDER, "crm_order_number": "SO501", "crm_order_version": 1,
                "crm_account_id": 1, "erp_order_id": ERP_ORDER, "erp_order_name": "S000011",
                "erp_customer_id": 1, "amount_total": D("10.00"), "currency": "EUR",
                "cancelled": False, "synced_at": T0})
        handle = self.record("ambidex.order-identity", value)
        self.fold.published(handle)
        return handle

    def step(self) -> Applied[Any]:
        return run_to_end(self.fold.steps(("crm", "erp")))


def erp_order(state: str = "in_production") -> tuple[str, dict[str, Any]]:
    return "sales_order", {"id": ERP_ORDER, "name": "S000011", "state": state,
                           "warehouse_id": WH, "requested_date": None}


def erp_line() -> tuple[str, dict[str, Any]]:
    return "sales_order_line", {"id": 21, "order_id": ERP_ORDER, "line_no": 1, "item_id": 70,
                                "quantity": D("10")}


def production(state: str, finish: date, started: datetime | None = None,
               finished: datetime | None = None, produced: str = "0",
               mo_id: int = 31) -> tuple[str, dict[str, Any]]:
    return "production_order", {
        "id": mo_id, "name": f"MO{mo_id}", "sales_order_id": ERP_ORDER, "sales_order_line_id": 21,
        "warehouse_id": WH, "quantity": D("10"), "qty_produced": D(produced), "state": state,
        "date_planned_start": date(2026, 11, 1), "date_planned_finish": finish,
        "date_started": started, "date_finished": finished}


def crm_order(promised: date) -> tuple[str, dict[str, Any]]:
    return "sales_order", {"id": CRM_ORDER, "number": "SO501", "state": "confirmed",
                           "requested_date": promised, "version": 1}


def statuses(out: Applied[Any]) -> dict[int, dict[str, Any]]:
    return {s["crm_order_id"]: s for s in out.outcome.statuses}


def started() -> Source:
    source = Source()
    source.beat("crm", T0)
    source.beat("erp", T0)
    source.commit("crm", [crm_order(date(2026, 11, 30))])
    source.commit("erp", [erp_order(), erp_line(), production("confirmed", date(2026, 11, 6))])
    return source


def test_progress_before_the_identity_is_published_when_it_arrives() -> None:
    source = started()
    first = source.step()
    assert first.outcome.statuses == []  # no identity: nothing to say under a CRM order
    handle = source.identity()
    second = source.step()
    status = statuses(second)[CRM_ORDER]
    assert (status["stage"], status["erp_order_id"], status["ordered"]) == (
        "awaiting_production", ERP_ORDER, D("10.000"))
    assert status["predicted_p90"] is not None and status["promised_date"] == date(2026, 11, 30)
    assert handle in second.release
    # the same transaction again (a redelivery): nothing moves, nothing is sent again
    source.redeliver("erp", [erp_order(), erp_line(), production("confirmed",
                                                                 date(2026, 11, 6))], 102)
    third = source.step()
    assert third.outcome.statuses == [] and third.outcome.risks == []
    assert third.outcome.position is None  # nothing to write


def test_one_bad_row_rejects_its_transaction_whole_and_the_fold_goes_on() -> None:
    source = started()
    source.identity()
    source.step()
    # finished before started: impossible; the inspection in the same transaction goes too
    bad = source.commit("erp", [
        production("done", date(2026, 11, 6), started=T0, finished=T0 - timedelta(hours=1),
                   produced="10"),
        ("quality_inspection", {"id": 41, "production_order_id": 31, "state": "pending",
                                "inspector": None, "inspected_at": None, "notes": None,
                                "created_at": T0}),
    ])
    rejected = source.step()
    dead = {h.offset: e.reason for h, e in rejected.dead_letters}
    assert set(dead) == {h.offset for h in bad}
    assert "impossible dates" in dead[bad[0].offset]
    assert "rejected whole" in dead[bad[1].offset]
    assert rejected.outcome.statuses == []
    source.commit("erp", [production("in_progress", date(2026, 11, 6), started=T0)])
    after = source.step()
    assert statuses(after)[CRM_ORDER]["stage"] == "in_production"


def test_an_unreadable_identity_is_dead_lettered() -> None:
    source = started()
    handle = source.identity(b"not avro")
    out = source.step()
    assert [h for h, _ in out.dead_letters] == [handle] and handle in out.release
    assert out.outcome.statuses == []


def test_the_clock_is_the_older_source_time_and_never_goes_back() -> None:
    source = Source()
    source.beat("erp", T0 + timedelta(hours=5))
    assert not source.fold.clock_known
    source.beat("crm", T0 + timedelta(hours=2))
    assert source.fold.now == T0 + timedelta(hours=2)
    source.beat("crm", T0 + timedelta(hours=9))
    assert source.fold.now == T0 + timedelta(hours=5)
    source.beat("erp", T0 + timedelta(hours=1))  # an older heartbeat: no step back
    assert source.fold.now == T0 + timedelta(hours=5)
    source.step()
    assert StatusFold(source.kv, decode).now == T0 + timedelta(hours=5)  # kept in the state


def test_a_delay_raises_a_risk_once_and_a_case_is_triaged() -> None:
    source = Source()
    source.beat("crm", T0)
    source.beat("erp", T0)
    # promised for the 5th; production planned to finish on the 20th
    source.commit("crm", [crm_order(date(2026, 11, 5))])
    source.commit("erp", [erp_order(), erp_line(), production("confirmed", date(2026, 11, 20))])
    source.identity()
    out = source.step()
    assert [(r["level"], r["reason"]) for r in out.outcome.risks] == [
        ("late", "prediction_past_promise")]
    assert statuses(out)[CRM_ORDER]["risk_level"] == "late"
    assert out.outcome.position is not None
    source.commit("crm", [("service_case", {
        "id": 77, "number": "CS77", "sales_order_id": CRM_ORDER, "subject": "where is it?",
        "category": "delivery", "state": "new", "opened_at": T0})])
    case = source.step()
    assert case.outcome.risks == []  # the same level: raised once
    (triaged,) = case.outcome.triages
    assert (triaged["case_id"], triaged["crm_order_id"]) == (77, CRM_ORDER)
    assert triaged["culprit"] == "none"  # production is late for the promise, not its plan
    assert "production order MO31 on time" in triaged["summary"]
    assert case.outcome.position is not None
    assert case.outcome.position > out.outcome.position  # the write-back moves forward


def test_a_rebuilt_worker_writes_above_the_table_but_keeps_the_source_clock() -> None:
    # a worker rebuilt from the source topics (no state) finds the write-back ahead
    source = Source()
    written = T0 + timedelta(days=30)
    source.fold.floor(written, 40)
    assert not source.fold.clock_known  # the clock still comes from the sources alone
    source.beat("crm", T0)
    source.beat("erp", T0)
    source.commit("crm", [crm_order(date(2026, 11, 30))])
    source.commit("erp", [erp_order(), erp_line(), production("confirmed", date(2026, 11, 6))])
    source.identity()
    out = source.step()
    assert source.fold.now == T0  # progress judged at the time it was made
    assert statuses(out)[CRM_ORDER]["risk_level"] == "none"
    position = out.outcome.position
    assert position is not None and position.lsn == 41
    assert position.commit_lsn == int((written - EPOCH).total_seconds() * 1000)


def test_time_alone_raises_the_risk_of_an_open_order() -> None:
    # no change comes after the first step: only the sweep of the open orders, as the
    # source clock passes the promised date, can find the order late
    source = started()
    source.identity()
    first = source.step()
    assert statuses(first)[CRM_ORDER]["risk_level"] == "none"
    source.beat("crm", datetime(2026, 12, 5, tzinfo=UTC))
    source.beat("erp", datetime(2026, 12, 5, tzinfo=UTC))
    swept = source.step()
    assert [(r["level"], r["reason"]) for r in swept.outcome.risks] == [
        ("late", "promise_missed")]
    assert statuses(swept)[CRM_ORDER]["risk_level"] == "late"

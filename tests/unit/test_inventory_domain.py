"""inventory-projection's pure core (the row store and the figures:
services.inventory_projection.row_store, .available_to_promise, .crm_demand, .shortages).

Invariants protected here:

* State is a function of the latest version of each source row (invariant 6): receipts,
  issues, reservations, releases, production completion, CRM confirmation and
  cancellation move the figures exactly as the formula says; replaying or redelivering
  any change, or the whole history, changes nothing.
* Order (invariant 2): a stale change (older SourcePosition) never wins, a delete is a
  tombstone that an older insert cannot undo.
* Bad input (invariant 4): malformed rows raise BadInput and leave the state as it was;
  a negative quant is folded as zero and flagged for the dead-letter topic.
* Exactness (invariant 5): Decimal quantities, floats refused.
* The overall figure is the exact sum of the warehouse figures; a shortage is raised
  once per CRM order version; earliest dates follow cumulative incoming supply.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from services.inventory_projection.available_to_promise import (
    Availability,
    AvailabilityKey,
    Incoming,
    earliest_date,
    make_availability,
    topic_key,
)
from services.inventory_projection.records import ErpItem, Warehouse
from services.inventory_projection.row_store import RowStore
from services.inventory_projection.shortages import evaluate_order
from services.inventory_projection.source_rows import (
    CRM_ORDER,
    CRM_ORDER_LINE,
    ERP_ORDER,
    ERP_ORDER_LINE,
    ITEM,
    PRODUCT,
    PRODUCTION_ORDER,
    RESERVATION,
    STOCK_QUANT,
    WAREHOUSE,
    NegativeStock,
    Table,
)
from services.shared.avro import AvroCodec, SchemaCatalogue
from services.shared.changes import ChangeEvent, ChangeOp, RecordOrigin
from services.shared.errors import BadInput
from services.shared.position import SourcePosition
from tests.builders import change_event

D = Decimal
ITEM_ID, OTHER_ITEM = 10, 11
WH1, WH2 = 1, 2
KEY1 = AvailabilityKey(ITEM_ID, WH1)
KEY2 = AvailabilityKey(ITEM_ID, WH2)
OVERALL = AvailabilityKey(ITEM_ID, None)
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
TODAY = date(2025, 3, 1)

_lsn = itertools.count(1000, 10)


class Feed:
    """Builds change events with increasing positions and applies them to a store."""

    def __init__(self) -> None:
        self.store = RowStore()
        self.log: list[ChangeEvent] = []

    def change(
        self,
        table: Table,
        row: Mapping[str, Any] | None,
        *,
        row_id: int | None = None,
        before: Mapping[str, Any] | None = None,
        position: SourcePosition | None = None,
        apply: bool = True,
    ) -> ChangeEvent:
        lsn = next(_lsn)
        op = ChangeOp.DELETE if row is None else ChangeOp.UPDATE
        rid = row_id if row_id is not None else (row or before or {})["id"]
        at = position or SourcePosition(lsn, lsn)
        event = change_event(
            table[0], table[1], op=op, before=before, after=row, key={"id": rid},
            commit_lsn=at.commit_lsn, lsn=at.lsn, transaction_id=str(lsn),
            commit_time=T0 + timedelta(seconds=lsn),
            origin=RecordOrigin(f"cdc.{table[0]}.{table[1]}", 0, lsn),
        )
        if apply:
            self.store.apply(event)
        self.log.append(event)
        return event

    def fig(self, key: AvailabilityKey) -> Availability:
        availability = self.store.availability(key)
        assert availability is not None, key
        return availability


def quant(qid: int, qty: str, item: int = ITEM_ID, wh: int = WH1) -> dict[str, Any]:
    return {"id": qid, "item_id": item, "warehouse_id": wh, "quantity": D(qty)}


def reservation(rid: int, qty: str, state: str = "active", wh: int = WH1) -> dict[str, Any]:
    return {
        "id": rid,
        "item_id": ITEM_ID,
        "warehouse_id": wh,
        "sales_order_line_id": 900 + rid,
        "quantity": D(qty),
        "state": state,
    }


def production(
    pid: int, qty: str, state: str = "planned", finish: date | None = None, wh: int = WH1
) -> dict[str, Any]:
    return {
        "id": pid,
        "item_id": ITEM_ID,
        "warehouse_id": wh,
        "quantity": D(qty),
        "qty_produced": D(0),
        "state": state,
        "date_planned_finish": finish,
    }


def crm_order(oid: int, state: str = "confirmed", version: int = 1, wh: str = "WH1") -> dict:
    return {
        "id": oid,
        "number": f"SO{oid:07d}",
        "account_id": 77,
        "state": state,
        "warehouse_code": wh,
        "version": version,
        "currency_code": "EUR",
    }


def crm_line(lid: int, oid: int, qty: str, line_no: int = 1, product: int = 5) -> dict:
    return {
        "id": lid,
        "order_id": oid,
        "line_no": line_no,
        "product_id": product,
        "quantity": D(qty),
        "unit_price": D("9.99"),
    }


@pytest.fixture
def feed() -> Feed:
    f = Feed()
    f.change(ITEM, {"id": ITEM_ID, "sku": "SKU-10", "name": "Widget"})
    f.change(ITEM, {"id": OTHER_ITEM, "sku": "SKU-11", "name": "Gadget"})
    f.change(WAREHOUSE, {"id": WH1, "code": "WH1", "name": "One"})
    f.change(WAREHOUSE, {"id": WH2, "code": "WH2", "name": "Two"})
    f.change(PRODUCT, {"id": 5, "sku": "SKU-10", "name": "Widget"})
    f.change(PRODUCT, {"id": 6, "sku": "SKU-11", "name": "Gadget"})
    f.store.observe("crm", T0)
    f.store.observe("erp", T0)
    return f


def figures(a: Availability) -> tuple[Decimal, Decimal, Decimal, Decimal]:
    return a.on_hand, a.reserved, a.pending_crm_demand, a.available_to_promise


# ------------------------------------------------------------------ stock movements


def test_receipt_and_issue_move_on_hand_exactly(feed: Feed) -> None:
    feed.change(STOCK_QUANT, quant(1, "100"))
    assert figures(feed.fig(KEY1)) == (D(100), D(0), D(0), D(100))
    feed.change(STOCK_QUANT, quant(1, "130.5"))  # receipt of 30.5
    assert feed.fig(KEY1).on_hand == D("130.500")
    feed.change(STOCK_QUANT, quant(1, "120.5"))  # issue of 10
    assert figures(feed.fig(KEY1)) == (D("120.5"), D(0), D(0), D("120.5"))


def test_reservation_release_and_consumption(feed: Feed) -> None:
    feed.change(STOCK_QUANT, quant(1, "100"))
    feed.change(RESERVATION, reservation(1, "30"))
    feed.change(RESERVATION, reservation(2, "20"))
    assert figures(feed.fig(KEY1)) == (D(100), D(50), D(0), D(50))
    feed.change(RESERVATION, reservation(2, "20", "released"))
    assert figures(feed.fig(KEY1)) == (D(100), D(30), D(0), D(70))
    # shipment: reservation consumed and quant lowered in one transaction
    feed.change(RESERVATION, reservation(1, "30", "consumed"))
    feed.change(STOCK_QUANT, quant(1, "70"))
    assert figures(feed.fig(KEY1)) == (D(70), D(0), D(0), D(70))


def test_production_is_incoming_until_done_then_on_hand(feed: Feed) -> None:
    feed.change(STOCK_QUANT, quant(1, "10"))
    finish = date(2025, 3, 10)
    feed.change(PRODUCTION_ORDER, production(1, "40", "planned", finish))
    feed.change(PRODUCTION_ORDER, production(2, "5", "in_progress", finish))
    feed.change(PRODUCTION_ORDER, production(3, "7", "confirmed", None))
    a = feed.fig(KEY1)
    assert a.incoming == (Incoming(finish, D(45)), Incoming(None, D(7)))
    assert a.available_to_promise == D(10)  # incoming is not in ATP
    feed.change(PRODUCTION_ORDER, production(1, "40", "done", finish))
    feed.change(STOCK_QUANT, quant(1, "50"))
    a = feed.fig(KEY1)
    assert a.incoming == (Incoming(finish, D(5)), Incoming(None, D(7)))
    assert figures(a) == (D(50), D(0), D(0), D(50))
    feed.change(PRODUCTION_ORDER, production(2, "5", "cancelled", finish))
    assert feed.fig(KEY1).incoming == (Incoming(None, D(7)),)


# ------------------------------------------------------------------ CRM demand


def test_crm_confirmation_and_cancellation_move_pending_demand(feed: Feed) -> None:
    feed.change(STOCK_QUANT, quant(1, "100"))
    feed.change(CRM_ORDER, crm_order(50, "draft"))
    feed.change(CRM_ORDER_LINE, crm_line(501, 50, "30"))
    feed.change(CRM_ORDER_LINE, crm_line(502, 50, "5", line_no=2))
    assert feed.fig(KEY1).pending_crm_demand == 0  # a draft is no demand
    feed.change(CRM_ORDER, crm_order(50, "confirmed"))
    assert figures(feed.fig(KEY1)) == (D(100), D(0), D(35), D(65))
    feed.change(CRM_ORDER_LINE, crm_line(502, 50, "8", line_no=2))
    feed.change(CRM_ORDER, crm_order(50, "amended", version=2))
    assert feed.fig(KEY1).pending_crm_demand == D(38)
    feed.change(CRM_ORDER, crm_order(50, "cancelled", version=2))
    assert figures(feed.fig(KEY1)) == (D(100), D(0), D(0), D(100))


def test_erp_reservation_of_a_crm_order_moves_demand_to_reserved(feed: Feed) -> None:
    feed.change(STOCK_QUANT, quant(1, "100"))
    feed.change(CRM_ORDER, crm_order(50))
    feed.change(CRM_ORDER_LINE, crm_line(501, 50, "30"))
    assert figures(feed.fig(KEY1)) == (D(100), D(0), D(30), D(70))
    # order-sync creates the ERP order: still pending (nothing reserved)
    feed.change(ERP_ORDER, {"id": 7, "crm_order_id": 50, "state": "open", "warehouse_id": WH1})
    erp_line = {
        "id": 71,
        "order_id": 7,
        "line_no": 1,
        "item_id": ITEM_ID,
        "quantity": D(30),
        "qty_reserved": D(0),
        "qty_delivered": D(0),
    }
    feed.change(ERP_ORDER_LINE, erp_line)
    assert feed.fig(KEY1).pending_crm_demand == D(30)
    # the ERP reserves 20: reservation + line in one transaction
    feed.change(RESERVATION, reservation(1, "20"))
    feed.change(ERP_ORDER_LINE, {**erp_line, "qty_reserved": D(20)})
    assert figures(feed.fig(KEY1)) == (D(100), D(20), D(10), D(70))
    # ships the 20: consumed, quant lowered, line delivered
    feed.change(RESERVATION, reservation(1, "20", "consumed"))
    feed.change(STOCK_QUANT, quant(1, "80"))
    feed.change(ERP_ORDER_LINE, {**erp_line, "qty_delivered": D(20)})
    assert figures(feed.fig(KEY1)) == (D(80), D(0), D(10), D(70))
    # the ERP cancels its order: the CRM promise is pending in full again
    feed.change(ERP_ORDER, {"id": 7, "crm_order_id": 50, "state": "cancelled"})
    assert feed.fig(KEY1).pending_crm_demand == D(30)


def test_unknown_references_are_held_until_they_arrive() -> None:
    f = Feed()
    f.change(STOCK_QUANT, quant(1, "12"))
    f.change(CRM_ORDER, crm_order(50))
    f.change(CRM_ORDER_LINE, crm_line(501, 50, "2"))
    assert f.store.availability(KEY1) is None
    assert len(f.store.unresolved()) == 2
    f.change(ITEM, {"id": ITEM_ID, "sku": "SKU-10"})
    assert f.store.availability(KEY1) is None  # warehouse still unknown
    f.change(WAREHOUSE, {"id": WH1, "code": "WH1"})
    assert f.fig(KEY1).pending_crm_demand == 0  # product not seen yet
    applied = f.change(PRODUCT, {"id": 5, "sku": "SKU-10"}, apply=False)
    result = f.store.apply(applied)
    assert KEY1 in result.keys and OVERALL in result.keys
    assert figures(f.fig(KEY1)) == (D(12), D(0), D(2), D(10))
    assert f.store.unresolved() == []


# ------------------------------------------------------------------ replay and order


def _scenario(feed: Feed) -> None:
    feed.change(STOCK_QUANT, quant(1, "100"))
    feed.change(STOCK_QUANT, quant(2, "40", wh=WH2))
    feed.change(RESERVATION, reservation(1, "15"))
    feed.change(PRODUCTION_ORDER, production(1, "60", "planned", date(2025, 3, 20), wh=WH2))
    feed.change(CRM_ORDER, crm_order(50))
    feed.change(CRM_ORDER_LINE, crm_line(501, 50, "30"))
    feed.change(CRM_ORDER, crm_order(51, wh="WH2"))
    feed.change(CRM_ORDER_LINE, crm_line(511, 51, "50"))
    feed.change(STOCK_QUANT, quant(1, "90"))
    feed.change(CRM_ORDER_LINE, None, before=crm_line(501, 50, "30"))


def test_replay_and_redelivery_change_nothing(feed: Feed) -> None:
    _scenario(feed)
    before = feed.store.all_availability()
    revision = feed.store.revision
    for event in feed.log:  # redeliver everything, in order
        assert not feed.store.apply(event).changed
    for event in reversed(feed.log):  # and backwards
        feed.store.apply(event)
    assert feed.store.all_availability() == before
    assert feed.store.revision == revision
    assert figures(before[KEY1]) == (D(90), D(15), D(0), D(75))
    assert figures(before[KEY2]) == (D(40), D(0), D(50), D(-10))


def test_stale_change_never_wins_and_delete_is_remembered(feed: Feed) -> None:
    feed.change(STOCK_QUANT, quant(1, "50"), position=SourcePosition(200, 200))
    stale = feed.change(STOCK_QUANT, quant(1, "999"), position=SourcePosition(100, 150))
    assert feed.fig(KEY1).on_hand == D(50)
    assert not feed.store.apply(stale).changed
    feed.change(STOCK_QUANT, None, before=quant(1, "50"), position=SourcePosition(300, 300))
    feed.change(STOCK_QUANT, quant(1, "50"), position=SourcePosition(250, 250))  # old insert
    assert feed.fig(KEY1).on_hand == 0
    # same commit, later change inside the transaction wins
    feed.change(STOCK_QUANT, quant(1, "7"), position=SourcePosition(400, 401))
    feed.change(STOCK_QUANT, quant(1, "8"), position=SourcePosition(400, 402))
    assert feed.fig(KEY1).on_hand == D(8)


def test_stock_key_count_is_the_number_of_keys_with_rows(feed: Feed) -> None:
    """The table size (``ledger.key_count``, a metric) moves exactly when a key gains
    its first row or loses its last one, whatever the kind of row, and is persisted."""
    def keys_with_rows() -> int:
        feed.store.flush()
        return sum(1 for _ in feed.store.kv.scan(b"a:"))

    feed.change(STOCK_QUANT, quant(1, "5"))
    feed.change(STOCK_QUANT, quant(2, "3"))  # same key
    feed.change(RESERVATION, reservation(3, "1", wh=WH2))
    assert feed.store.ledger.key_count == keys_with_rows() == 2
    feed.change(STOCK_QUANT, quant(1, "6", wh=WH2))  # moves to WH2: WH1 keeps row 2
    feed.change(STOCK_QUANT, None, before=quant(2, "3"))  # WH1 loses its last row
    assert feed.store.ledger.key_count == keys_with_rows() == 1
    feed.store.apply(feed.log[0])  # stale redelivery: nothing moves
    assert feed.store.ledger.key_count == 1
    feed.store.save_meta()
    assert RowStore.load(feed.store.kv).ledger.key_count == 1


def test_state_survives_persistence_round_trip(feed: Feed) -> None:
    _scenario(feed)
    feed.store.save_meta()
    # everything persisted is in the store's key-value state (RocksDB in production)
    restored = RowStore.load(feed.store.kv)
    assert restored.all_availability() == feed.store.all_availability()
    assert restored.write_position() == feed.store.write_position()
    for event in feed.log:
        assert not restored.apply(event).changed


# ------------------------------------------------------------------ overall, as-of


def test_overall_is_sum_of_warehouses(feed: Feed) -> None:
    _scenario(feed)
    all_figures = feed.store.all_availability()
    overall = all_figures[OVERALL]
    parts = [all_figures[KEY1], all_figures[KEY2]]
    assert overall.warehouse_code == "*" and overall.warehouse_id is None
    for name in ("on_hand", "reserved", "pending_crm_demand", "available_to_promise"):
        assert getattr(overall, name) == sum(getattr(p, name) for p in parts)
    assert overall.incoming == (Incoming(date(2025, 3, 20), D(60)),)


def test_as_of_is_the_older_watermark_and_advances_with_heartbeats() -> None:
    store = RowStore()
    assert not store.observe("erp", T0)  # CRM not seen yet: as_of stays at the epoch
    assert store.as_of.year == 1970
    assert store.observe("crm", T0 + timedelta(seconds=5))
    assert store.as_of == T0
    position = store.write_position()
    assert store.observe("erp", T0 + timedelta(seconds=10))  # heartbeat
    assert store.as_of == T0 + timedelta(seconds=5)
    assert store.write_position() > position
    assert not store.observe("erp", T0)  # never back


def test_changed_keys_include_overall_and_both_sides_of_a_move(feed: Feed) -> None:
    feed.change(STOCK_QUANT, quant(1, "100"))
    event = feed.change(STOCK_QUANT, quant(1, "100", wh=WH2), apply=False)
    applied = feed.store.apply(event)
    assert applied.keys == {KEY1, KEY2, OVERALL}
    # stock rows are persisted compactly by the ledger, not as whole row versions
    assert applied.entry is None
    assert feed.store.ledger.warehouses_of(ITEM_ID) == {WH2}


# ------------------------------------------------------------------ bad input


def test_negative_stock_is_flagged_and_counts_as_zero(feed: Feed) -> None:
    feed.change(STOCK_QUANT, quant(1, "30"))
    feed.change(STOCK_QUANT, quant(2, "25", wh=WH2))
    event = feed.change(STOCK_QUANT, quant(1, "-5"), apply=False)
    applied = feed.store.apply(event)
    assert isinstance(applied.flagged, NegativeStock)
    assert isinstance(applied.flagged, BadInput)
    assert "negative on-hand quantity -5" in applied.flagged.reason
    assert feed.fig(KEY1).on_hand == 0
    assert feed.fig(OVERALL).on_hand == D(25)


@pytest.mark.parametrize(
    ("table", "row", "reason"),
    [
        (STOCK_QUANT, {"id": 1, "item_id": ITEM_ID, "warehouse_id": WH1}, "no column"),
        (STOCK_QUANT, quant(1, "1") | {"quantity": 1.5}, "not a decimal"),
        (STOCK_QUANT, quant(1, "1") | {"quantity": D("1.0001")}, "more than 3 decimal"),
        (STOCK_QUANT, quant(1, "1") | {"item_id": "ten"}, "not an integer"),
        (RESERVATION, reservation(1, "5", "lost"), "is not one of"),
        (RESERVATION, reservation(1, "0"), "not positive"),
        (PRODUCTION_ORDER, production(1, "5") | {"date_planned_finish": 20250301}, "not a date"),
        (CRM_ORDER, crm_order(1, "shipped"), "is not one of"),
        (CRM_ORDER_LINE, crm_line(1, 1, "1") | {"quantity": None}, "is null"),
    ],
)
def test_malformed_rows_raise_bad_input_and_change_nothing(
    feed: Feed, table: Table, row: dict[str, Any], reason: str
) -> None:
    feed.change(STOCK_QUANT, quant(1, "10"))
    before = feed.store.all_availability()
    revision = feed.store.revision
    event = feed.change(table, row, apply=False)
    with pytest.raises(BadInput, match=reason):
        feed.store.apply(event)
    assert feed.store.all_availability() == before
    assert feed.store.revision == revision


def test_truncate_is_bad_input(feed: Feed) -> None:
    event = feed.change(STOCK_QUANT, quant(1, "10"), apply=False)
    with pytest.raises(BadInput, match="TRUNCATE"):
        feed.store.apply(replace(event, op=ChangeOp.TRUNCATE, key={}, after=None))


# ------------------------------------------------------------------ dates, shortages


def _availability(atp: str, incoming: list[tuple[date | None, str]]) -> Availability:
    return make_availability(
        ErpItem(ITEM_ID, "SKU-10"),
        Warehouse(WH1, "WH1"),
        on_hand=D(atp),
        reserved=D(0),
        pending_crm_demand=D(0),
        incoming=[(d, D(q)) for d, q in incoming],
        as_of=T0,
    )


def test_earliest_date_follows_cumulative_incoming() -> None:
    a = _availability("10", [(date(2025, 3, 5), "20"), (date(2025, 3, 9), "30"), (None, "99")])
    assert a.available_now(D(10)) and not a.available_now(D("10.001"))
    assert a.earliest_date_for(D(10)) == TODAY
    assert a.earliest_date_for(D(11)) == date(2025, 3, 5)
    assert a.earliest_date_for(D(30)) == date(2025, 3, 5)
    assert a.earliest_date_for(D(31)) == date(2025, 3, 9)
    assert a.earliest_date_for(D(61)) is None  # undated supply promises no date
    # an overdue planned finish is never earlier than today
    assert earliest_date(D(0), (Incoming(date(2025, 2, 1), D(5)),), D(5), TODAY) == TODAY


def test_shortage_raised_once_per_order_version(feed: Feed) -> None:
    feed.change(STOCK_QUANT, quant(1, "40"))
    feed.change(RESERVATION, reservation(1, "15"))
    feed.change(PRODUCTION_ORDER, production(1, "50", "planned", date(2025, 3, 20)))
    feed.change(CRM_ORDER, crm_order(50, "draft"))
    feed.change(CRM_ORDER_LINE, crm_line(501, 50, "30"))
    remembered, raised = evaluate_order(feed.store, 50, None)
    assert (remembered, raised) == (None, ())  # a draft is not evaluated
    feed.change(CRM_ORDER, crm_order(50, "confirmed"))
    remembered, raised = evaluate_order(feed.store, 50, None)
    assert remembered == 1
    (shortage,) = raised
    assert shortage.order.crm_order_id == 50 and shortage.order.account_id == 77
    assert shortage.order.number == "SO0000050" and shortage.order.version == 1
    assert (shortage.sku, shortage.warehouse_code) == ("SKU-10", "WH1")
    assert shortage.ordered == D(30) and shortage.available_before == D(25)
    assert shortage.short == D(5)
    assert shortage.earliest_date == date(2025, 3, 20)
    assert shortage.shortage_id == "50:1:SKU-10:WH1"
    # redelivery, replay or later stock movements: not again for version 1
    for event in feed.log:
        feed.store.apply(event)
    feed.change(STOCK_QUANT, quant(1, "20"))
    assert evaluate_order(feed.store, 50, remembered) == (1, ())
    # an amendment is a new version: evaluated again
    feed.change(CRM_ORDER_LINE, crm_line(501, 50, "35"))
    feed.change(CRM_ORDER, crm_order(50, "amended", version=2))
    remembered, raised = evaluate_order(feed.store, 50, remembered)
    assert remembered == 2
    assert [s.short for s in raised] == [D(30)]  # 20 - 15 = 5 before, 35 wanted


def test_no_shortage_when_covered(feed: Feed) -> None:
    feed.change(STOCK_QUANT, quant(1, "40"))
    feed.change(CRM_ORDER, crm_order(50))
    feed.change(CRM_ORDER_LINE, crm_line(501, 50, "40"))
    assert evaluate_order(feed.store, 50, None) == (1, ())


# ------------------------------------------------------------------ wire format


def test_records_encode_with_the_published_schemas(feed: Feed) -> None:
    _scenario(feed)
    codec = AvroCodec(SchemaCatalogue.load())
    for availability in feed.store.all_availability().values():
        data = codec.encode("availability", availability.to_avro())
        decoded = codec.decode(data).record
        assert decoded["available_to_promise"] == availability.available_to_promise
        assert decoded["sku"] == "SKU-10"


def test_shortage_encodes_with_the_published_schema(feed: Feed) -> None:
    feed.change(STOCK_QUANT, quant(1, "10"))
    feed.change(CRM_ORDER, crm_order(50))
    feed.change(CRM_ORDER_LINE, crm_line(501, 50, "12.5"))
    _, (shortage,) = evaluate_order(feed.store, 50, None)
    codec = AvroCodec(SchemaCatalogue.load())
    decoded = codec.decode(codec.encode("shortage", shortage.to_avro())).record
    assert decoded["short_quantity"] == D("2.500")
    assert decoded["crm_account_id"] == 77
    assert shortage.topic_key() == b"50"
    assert topic_key("SKU-10", "*") == b'{"sku":"SKU-10","warehouse":"*"}'


def test_availability_dict_round_trip(feed: Feed) -> None:
    _scenario(feed)
    for availability in feed.store.all_availability().values():
        assert Availability.from_dict(availability.to_dict()) == availability

"""order-sync's persisted fold and published records (invariants 2, 5, 6).

* A CRM order draft survives the round trip through ``erp_integration.order_state``
  unchanged — Decimal stays Decimal, dates stay dates, positions and line tombstones
  are kept — so a restarted worker folds and decides exactly as before (a stale change
  is still ignored after the round trip).
* Published records conform to their Avro schemas; money is Decimal with a currency.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from services.order_sync import codec
from services.order_sync.codec import StatusRow, derived_status
from services.order_sync.domain.folding import OrderDraft, RowVersion
from services.shared.avro import AvroCodec, SchemaCatalogue
from services.shared.position import SourcePosition


def _draft() -> OrderDraft:
    header = {"id": 7, "number": "SO7", "account_id": 3, "state": "confirmed",
              "currency_code": "EUR", "requested_date": date(2026, 12, 1),
              "warehouse_code": "WH1", "version": 2, "amount_total": Decimal("10.50"),
              "confirmed_at": datetime(2026, 11, 1, 9, 30, tzinfo=UTC)}
    line = {"id": 70, "order_id": 7, "line_no": 1, "product_id": 5,
            "quantity": Decimal("1.500"), "unit_price": Decimal("7.00"),
            "discount_pct": Decimal("0")}
    return OrderDraft(
        7,
        header=RowVersion(SourcePosition(100, 110), header),
        lines={70: RowVersion(SourcePosition(100, 111), line),
               71: RowVersion(SourcePosition(90, 95), None)},  # a deleted line
    )


def test_draft_round_trip_is_lossless() -> None:
    draft = _draft()
    back = codec.decode_draft(codec.encode_draft(draft), 7)
    assert back == draft
    assert back.header is not None and back.header.row is not None
    assert isinstance(back.header.row["amount_total"], Decimal)
    assert back.header.row["requested_date"] == date(2026, 12, 1)
    assert back.lines[71].row is None and back.lines[71].position == SourcePosition(90, 95)
    order = back.to_order()
    assert order is not None and order.position == SourcePosition(100, 111)
    assert [line.quantity for line in order.lines] == [Decimal("1.500")]


def test_decoded_draft_still_ignores_stale_changes() -> None:
    from services.order_sync.domain.folding import (
        fold_row,
    )

    back = codec.decode_draft(codec.encode_draft(_draft()), 7)
    assert fold_row(back.lines[70], SourcePosition(100, 111), {"id": 70}) is None
    assert fold_row(back.lines[71], SourcePosition(80, 81), {"id": 71}) is None


def test_empty_and_mismatched_drafts() -> None:
    assert codec.decode_draft(None, 9) == OrderDraft(9)
    with pytest.raises(ValueError):
        codec.decode_draft(codec.encode_draft(_draft()), 8)


def test_floats_are_refused() -> None:
    draft = OrderDraft(1, header=RowVersion(SourcePosition(1, 1), {"amount_total": 1.5}))
    with pytest.raises(TypeError):
        codec.encode_draft(draft)


@pytest.mark.parametrize(
    ("sync_state", "progress", "status"),
    [
        ("synced", None, "synced"),
        ("synced", "reserved", "reserved"),
        ("conflict", "shipped", "conflict"),
        ("rejected", None, "rejected"),
        ("cancelled", "reserved", "cancelled"),
        (None, "shipped", "shipped"),
    ],
)
def test_derived_status(sync_state: str | None, progress: str | None, status: str) -> None:
    assert derived_status(sync_state, progress) == status


def test_published_records_conform_to_their_schemas() -> None:
    avro = AvroCodec(SchemaCatalogue.load())
    identity = codec.identity_record(
        crm_order_id=7, crm_order_number="SO7", crm_order_version=2, crm_account_id=3,
        erp_order_id=11, erp_order_name="S000011", erp_customer_id=4,
        amount_total=Decimal("10.50"), currency="EUR", cancelled=False,
    )
    status = codec.status_record(StatusRow(7, "conflict", "shipped", "why", 2, 11, "S000011"))
    conflict = codec.conflict_record(
        kind="conflict", crm_order_id=7, crm_order_version=2, erp_order_id=11,
        reasons=["line 1 quantity lowered to 1 but 3 already shipped"],
    )
    for schema, record in ((codec.IDENTITY_SCHEMA, identity), (codec.STATUS_SCHEMA, status),
                           (codec.CONFLICT_SCHEMA, conflict)):
        decoded = avro.decode(avro.encode(schema, record)).record
        assert decoded["crm_order_id"] == 7
    assert status["status"] == "conflict"
    assert avro.decode(avro.encode(codec.IDENTITY_SCHEMA, identity)).record["amount_total"] == (
        Decimal("10.50")
    )
    same = codec.conflict_record(
        kind="conflict", crm_order_id=7, crm_order_version=2, erp_order_id=11,
        reasons=["line 1 quantity lowered to 1 but 3 already shipped"],
    )
    assert same["event_id"] == conflict["event_id"]  # consumers deduplicate on it
    with pytest.raises(ValueError):
        codec.conflict_record(kind="oops", crm_order_id=1, crm_order_version=1,
                              erp_order_id=None, reasons=[])

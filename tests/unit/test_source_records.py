"""The canonical records of the captured tables (services/shared/source_records).

Invariants:

* every table a service reads has one record, found by ``record_type(database, table)``;
* a row as the decoder delivers it (every column of the reference schema) becomes its
  record, typed; a bad value is ``BadColumn`` naming table and column, whichever
  service reads the table (where two services disagreed, the stricter rule holds:
  an ERP order's state must be an ERP state, a CRM order needs its currency, text is
  exact, an ERP line's quantities follow the schema's CHECKs);
* an order line's quantity, price and discount are carried as typed (only NaN and
  ±Infinity refused), so order-sync can explain a bad one to the salesperson.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest

from services.shared.money import Money
from services.shared.rows import BadColumn
from services.shared.source_records import RECORD_TYPES, crm, erp, record_type

D = Decimal

CRM_ORDER: dict[str, Any] = {
    "id": 5, "number": "SO0000005", "account_id": 7, "quote_id": None, "state": "confirmed",
    "currency_code": "EUR", "requested_date": date(2026, 5, 1), "warehouse_code": "WH1",
    "version": 2, "amount_total": D("59.97"), "confirmed_at": datetime(2026, 4, 1, tzinfo=UTC),
}
CRM_LINE: dict[str, Any] = {
    "id": 51, "order_id": 5, "line_no": 1, "product_id": 3, "quantity": D("3.000"),
    "unit_price": D("19.99"), "discount_pct": D("0.00"),
}
ERP_ORDER: dict[str, Any] = {
    "id": 9, "name": "S000009", "customer_id": 70, "state": "open", "currency_code": "EUR",
    "requested_date": None, "warehouse_id": 1, "origin": "ambidex", "crm_order_id": 5,
    "crm_order_version": 2, "client_order_ref": "SO0000005", "amount_total": D("59.97"),
}
ERP_LINE: dict[str, Any] = {
    "id": 91, "order_id": 9, "line_no": 1, "item_id": 11, "quantity": D("3.000"),
    "unit_price": D("19.99"), "discount_pct": D("0.00"), "qty_reserved": D("1.000"),
    "qty_delivered": D("0.000"), "qty_invoiced": D("0.000"),
}


def test_every_record_is_registered_by_its_table() -> None:
    assert record_type("crm", "sales_order") is crm.SalesOrder
    assert record_type("erp", "stock_quant") is erp.StockQuant
    assert all(record.table == key for key, record in RECORD_TYPES.items())
    with pytest.raises(KeyError, match=r"crm\.nothing"):
        record_type("crm", "nothing")


def test_reference_rows_become_typed_records() -> None:
    order = crm.SalesOrder.from_row(CRM_ORDER)
    assert order.state is crm.CrmOrderState.CONFIRMED
    assert order.amount_total == Money(D("59.97"), "EUR") and order.version == 2
    line = crm.SalesOrderLine.from_row(CRM_LINE)
    assert (line.quantity, line.unit_price) == (D(3), D("19.99"))
    erp_order = erp.SalesOrder.from_row(ERP_ORDER)
    assert erp_order.state is erp.ErpOrderState.OPEN and erp_order.crm_order_id == 5
    erp_line = erp.SalesOrderLine.from_row(ERP_LINE)
    assert str(erp_line.qty_reserved) == "1.000"


def test_defaults_where_every_reader_agreed() -> None:
    order = crm.SalesOrder.from_row({**CRM_ORDER, "number": None, "version": None,
                                     "amount_total": None})
    assert (order.number, order.version, order.amount_total) == ("5", 1, Money.zero("EUR"))
    assert erp.Item.from_row({"id": 1, "sku": "A"}).active is True


@pytest.mark.parametrize(("record", "row", "column"), [
    (erp.SalesOrder, {**ERP_ORDER, "state": "confirmed"}, "state"),  # a CRM state
    (crm.SalesOrder, {k: v for k, v in CRM_ORDER.items() if k != "currency_code"},
     "currency_code"),
    (crm.SalesOrder, {**CRM_ORDER, "currency_code": "EURO"}, "currency_code"),
    (crm.SalesOrder, {**CRM_ORDER, "amount_total": D("1.001")}, "amount_total"),
    (erp.SalesOrderLine, {**ERP_LINE, "qty_reserved": D("-1")}, "qty_reserved"),
    (erp.SalesOrderLine, {**ERP_LINE, "quantity": D("0")}, "quantity"),
    (erp.SalesOrderLine, {**ERP_LINE, "qty_invoiced": None}, "qty_invoiced"),
    (erp.StockReservation, {"id": 1, "item_id": 1, "warehouse_id": 1, "quantity": D(0),
                            "state": "active"}, "quantity"),
    (crm.Account, {"id": 1, "name": 42, "currency_code": "EUR"}, "name"),
    (erp.Item, {"id": 1, "sku": "A", "active": "yes"}, "active"),
])
def test_a_bad_value_names_table_and_column(record: Any, row: dict[str, Any],
                                            column: str) -> None:
    with pytest.raises(BadColumn) as caught:
        record.from_row(row)
    assert caught.value.column == column
    assert caught.value.reason.startswith(f"{record.table[0]}.{record.table[1]}.{column} ")


def test_text_is_exact() -> None:
    order = crm.SalesOrder.from_row({**CRM_ORDER, "warehouse_code": ""})
    assert order.warehouse_code == ""  # not "no code": no warehouse has the code ""
    assert crm.Product.from_row({"id": 1, "sku": " A1 "}).sku == " A1 "


def test_order_line_numbers_are_carried_as_typed_but_never_nan() -> None:
    odd = crm.SalesOrderLine.from_row({**CRM_LINE, "quantity": D("-2"), "unit_price": None,
                                       "discount_pct": D("120")})
    assert (odd.quantity, odd.unit_price, odd.discount_pct) == (D(-2), None, D(120))
    with pytest.raises(BadColumn, match=r"unit_price is not a number \(NaN\)") as caught:
        crm.SalesOrderLine.from_row({**CRM_LINE, "unit_price": D("NaN")})
    assert caught.value.not_finite
    assert erp.StockQuant.from_row({"id": 1, "item_id": 1, "warehouse_id": 1,
                                    "quantity": D("-5")}).quantity == D(-5)

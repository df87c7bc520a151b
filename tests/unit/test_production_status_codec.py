"""production-status's stored row form: every row type comes back equal from the state.

Invariant (issue 12): :func:`~services.production_status.records.encode` gives the row's
field values in field order, JSON-ready (dates and instants as ISO text, quantities as
decimal text, None kept), and :func:`~services.production_status.records.decode` gives
back an equal row; the stored bytes do not depend on how the values were read.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from services.production_status.records import (
    CrmOrder,
    ErpOrderLine,
    Identity,
    Inspection,
    ProductionOrder,
    ServiceCase,
    Shipment,
    ShipmentLine,
    decode,
    dumps,
    encode,
)

AT = datetime(2026, 11, 2, 8, 30, 15, 250, tzinfo=UTC)
ROWS = [
    ProductionOrder(31, "MO31", 11, None, 3, Decimal("10.000"), Decimal("2.500"), "in_progress",
                    date(2026, 11, 1), date(2026, 11, 6), AT, None),
    Inspection(41, 31, "failed", "ann", AT, None, AT),
    Shipment(51, "OUT51", 11, 3, "shipped", None, AT, None, "DHL", "T1"),
    ShipmentLine(61, 51, 21, Decimal("1.5")),
    ErpOrderLine(21, 11, 1, 70, Decimal("10")),
    CrmOrder(501, "SO501", "confirmed", date(2026, 11, 30), 2),
    ServiceCase(77, "CS77", None, "late", "delivery", "new", AT),
    Identity(501, "SO501", 1, 11, "S11", False),
]


@pytest.mark.parametrize("row", ROWS, ids=lambda r: type(r).__name__)
def test_a_row_comes_back_equal_from_its_stored_form(row: object) -> None:
    stored = encode(row)
    assert decode(type(row), stored) == row
    assert dumps(encode(decode(type(row), stored))) == dumps(stored)


def test_the_stored_form_is_text_for_dates_instants_and_quantities() -> None:
    assert encode(ROWS[0]) == [31, "MO31", 11, None, 3, "10.000", "2.500", "in_progress",
                               "2026-11-01", "2026-11-06", AT.isoformat(), None]

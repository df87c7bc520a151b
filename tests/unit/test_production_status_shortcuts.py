"""production-status: the fold's shortcuts for a small change change no state byte.

Invariants protected here (issue 12: a change's CPU in a live worker; DESIGN.md 6):

* A new version's stored fields reuse the text of its unchanged dates and instants
  (:func:`~services.production_status.records.encode_like`), a unit's contribution is
  decoded once and kept with its record (:func:`~services.production_status.fold.unit`),
  and an order's figures are changed as kept, not copied: a fold with these shortcuts
  writes the same state bytes, after every change of random histories delivered out of
  order with redeliveries, and gives the same statuses and line statuses, as a fold that
  encodes every row whole, decodes every contribution from its text and copies figures.
* ``encode_like`` equals ``encode`` whatever changed: an instant equal to the old one
  at another UTC offset is written with its own offset, a date that moved is written
  anew.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from services.production_status import fold as fold_module
from services.production_status import progress
from services.production_status import status as status_module
from services.production_status.fold import ProgressFold, Record
from services.production_status.records import (
    ERP_ORDER,
    ProductionOrder,
    encode,
    encode_like,
)
from services.production_status.status import line_statuses, order_status
from services.shared.state.store import MemoryState
from tests.unit.production_status_history import NOW, Version, deliveries, history

SEEDS = [1, 2, 3, 5]


def _plain_unit(rec: Record | None) -> tuple[int | None, dict[str, Decimal]]:
    if rec is None or not rec.extra:
        return None, {}
    return rec.extra[0], progress.decode_figures(rec.extra[1])


def _plain_set_unit(rec: Record, extra: list[Any], contribution: Any) -> None:
    rec.extra = extra


def _states(fold: ProgressFold, kv: MemoryState, versions: list[Version]) -> list[bytes]:
    """The state after each change, as one text (a digest would hide nothing more)."""
    out = []
    for v in versions:
        if v.table == "identity":
            fold.apply_identity(v.row)
        else:
            fold.apply(v.table, v.row_id, v.position, v.row)
        fold.settle()
        out.append(repr(sorted(kv.data.items())).encode())
    return out


@pytest.mark.parametrize("seed", SEEDS)
def test_the_shortcuts_change_no_state_byte(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    versions = deliveries(history(seed), seed)
    with monkeypatch.context() as m:
        m.setattr(fold_module, "encode_like", lambda row, old_row, old_fields: encode(row))
        m.setattr(fold_module, "unit", _plain_unit)
        m.setattr(status_module, "unit", _plain_unit)
        m.setattr(fold_module, "_set_unit", _plain_set_unit)
        m.setattr(ProgressFold, "_own_figures", ProgressFold.figures)
        plain_kv = MemoryState()
        plain = ProgressFold(plain_kv)
        expected = _states(plain, plain_kv, versions)
        erps = sorted({v.row_id for v in versions if v.table == ERP_ORDER})
        crms = sorted({v.row_id for v in versions if v.table == "identity"})
        expected_statuses = [order_status(plain, c, NOW) for c in crms]
        expected_lines = [line_statuses(plain, e, NOW) for e in erps]
    kv = MemoryState()
    fold = ProgressFold(kv)
    assert _states(fold, kv, versions) == expected
    assert [order_status(fold, c, NOW) for c in crms] == expected_statuses
    assert [line_statuses(fold, e, NOW) for e in erps] == expected_lines
    assert crms and erps and any(expected_lines)


def _mo(**changes: Any) -> ProductionOrder:
    base = ProductionOrder(
        id=1, name="MO1", warehouse_id=1, sales_order_id=1,
        sales_order_line_id=1, quantity=Decimal("10.000"), qty_produced=Decimal("1.000"),
        state="in_progress", date_planned_start=date(2026, 11, 1),
        date_planned_finish=date(2026, 11, 9),
        date_started=datetime(2026, 11, 2, 8, 30, tzinfo=UTC), date_finished=None)
    return dataclasses.replace(base, **changes)


@pytest.mark.parametrize("changes", [
    {},
    {"qty_produced": Decimal("2.000")},
    {"date_started": datetime(2026, 11, 2, 9, 30, tzinfo=timezone(timedelta(hours=1)))},
    {"date_started": datetime(2026, 11, 2, 8, 30)},
    {"date_started": datetime(2026, 11, 2, 8, 30, 0, 1, tzinfo=UTC)},
    {"date_planned_finish": date(2026, 11, 10)},
    {"date_planned_finish": None, "date_finished": datetime(2026, 11, 3, tzinfo=UTC)},
])
def test_encode_like_equals_encode(changes: dict[str, Any]) -> None:
    old = _mo()
    new = _mo(**changes)
    assert encode_like(new, old, encode(old)) == encode(new)

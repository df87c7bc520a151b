"""production-status: the fold's shortcuts for a small change change no state byte.

Invariants protected here (issue 12: a change's CPU in a live worker; DESIGN.md 6):

* A new version's stored fields reuse the text of its unchanged dates and instants
  (:func:`~services.production_status.records.encode_like`), a unit's contribution is
  decoded once and kept with its record (:func:`~services.production_status.stored.unit`),
  an order's figures are changed as kept, not copied, and written once per step
  (:meth:`~services.production_status.fold.ProgressFold.settle`): a fold with these
  shortcuts writes the same state bytes at the end of every step (steps of 1 and of 25
  changes; caches as configured and forgetting at every turn), over random histories
  delivered out of order with redeliveries, reads the same figures of every order after
  every change, and gives the same statuses and line statuses, as a fold that encodes
  every row whole, decodes every contribution from its text, copies figures and writes
  them at each change.
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
from services.production_status.fold import ProgressFold
from services.production_status.records import (
    ERP_ORDER,
    ProductionOrder,
    encode,
    encode_like,
)
from services.production_status.status import line_statuses, order_status
from services.production_status.stored import Record, figures_key
from services.shared.state.store import MemoryState
from tests.unit.production_status_history import NOW, Version, deliveries, history

SEEDS = [1, 2, 3, 5]


def _plain_unit(rec: Record | None) -> tuple[int | None, dict[str, Decimal]]:
    if rec is None or not rec.extra:
        return None, {}
    return rec.extra[0], progress.decode_figures(rec.extra[1])


def _plain_set_unit(rec: Record, extra: list[Any], contribution: Any) -> None:
    rec.extra = extra


def _store_at_once(fold: ProgressFold, erp_order_id: int, figures: dict[str, Decimal]) -> None:
    if figures:
        fold.kv.put(figures_key(erp_order_id),
                    fold_module.dumps(progress.encode_figures(figures)))
    else:
        fold.kv.delete(figures_key(erp_order_id))
    fold._figures.keep(erp_order_id, dict(figures))


def _states(fold: ProgressFold, kv: MemoryState, versions: list[Version], step: int,
            erps: list[int]) -> list[Any]:
    """Every order's figures after each change, and the state at the end of each step
    (as one text: a digest would hide nothing more)."""
    out: list[Any] = []
    for n, v in enumerate(versions, start=1):
        if v.table == "identity":
            fold.apply_identity(v.row)
        else:
            fold.apply(v.table, v.row_id, v.position, v.row)
        out.append([fold.figures(e) for e in erps])
        if n % step == 0 or n == len(versions):
            fold.settle()
            out.append(repr(sorted(kv.data.items())).encode())
    return out


@pytest.mark.parametrize("cached", [None, 1])
@pytest.mark.parametrize("step", [1, 25])
@pytest.mark.parametrize("seed", SEEDS)
def test_the_shortcuts_change_no_state_byte(seed: int, step: int, cached: int | None,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    versions = deliveries(history(seed), seed)
    erps = sorted({v.row_id for v in versions if v.table == ERP_ORDER})
    crms = sorted({v.row_id for v in versions if v.table == "identity"})
    with monkeypatch.context() as m:
        m.setattr(fold_module, "encode_like", lambda row, old_row, old_fields: encode(row))
        m.setattr(fold_module, "unit", _plain_unit)
        m.setattr(status_module, "unit", _plain_unit)
        m.setattr(fold_module, "set_unit", _plain_set_unit)
        m.setattr(ProgressFold, "_own_figures", ProgressFold.figures)
        m.setattr(ProgressFold, "_store_figures", _store_at_once)
        plain_kv = MemoryState()
        plain = ProgressFold(plain_kv)
        expected = _states(plain, plain_kv, versions, step, erps)
        expected_statuses = [order_status(plain, c, NOW) for c in crms]
        expected_lines = [line_statuses(plain, e, NOW) for e in erps]
    if cached is not None:  # caches that forget at every turn
        monkeypatch.setattr(fold_module, "CACHED_ROWS", cached)
        monkeypatch.setattr(fold_module, "CACHED_ORDERS", cached)
    kv = MemoryState()
    fold = ProgressFold(kv)
    assert _states(fold, kv, versions, step, erps) == expected
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

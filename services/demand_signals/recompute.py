"""demand signals from the final rows alone (pure): what the fold must equal.

The same rules as :mod:`.documents`, :mod:`.rates` and :mod:`.surge`, written the plain
way: every line's contribution from its document as it is now, summed per key and day
(days before the horizon cut), each key judged. Used by the property tests (fold ==
recomputation after any shuffled, redelivered history) and, with rows read from the
database, by ``ambidex reconcile``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from services.demand_signals.ports import SupplyView
from services.demand_signals.rates import RECENT_DAYS, DemandKey, Window, horizon
from services.demand_signals.records import OVERALL, ZERO, Header, Kind, Line, Table, parse
from services.demand_signals.surge import Figures, SurgeRules, judge

Rows = Mapping[Table, Mapping[int, Mapping[str, Any]]]


def buckets(rows: Rows, rules: SurgeRules, today: date) -> dict[tuple[DemandKey, date], Decimal]:
    """Demand per key and day, from the horizon of ``today`` on (zero sums left out)."""
    first = horizon(today)
    headers: dict[tuple[Kind, int], Header] = {}
    for table in (Table.QUOTE, Table.ORDER):
        for row in rows.get(table, {}).values():
            header = parse(table, row)
            assert isinstance(header, Header)
            headers[(header.kind, header.id)] = header
    sums: dict[tuple[DemandKey, date], Decimal] = {}
    for table in (Table.QUOTE_LINE, Table.ORDER_LINE):
        for row in rows.get(table, {}).values():
            line = parse(table, row)
            assert isinstance(line, Line)
            header = headers.get((line.kind, line.document_id))
            if header is None or header.day is None or header.day < first:
                continue
            weight = rules.weight(header.kind, header.state)
            if weight:
                key = (DemandKey(line.product_id, header.warehouse_code), header.day)
                sums[key] = sums.get(key, ZERO) + line.quantity * weight
    return {k: v for k, v in sums.items() if v}


def surging(rows: Rows, rules: SurgeRules, view: SupplyView,
            as_of: datetime) -> dict[DemandKey, Figures]:
    """Every key in surge now, with its figures."""
    today = as_of.date()
    split = today - timedelta(days=RECENT_DAYS - 1)
    windows: dict[DemandKey, Window] = {}
    for (key, day), qty in buckets(rows, rules, today).items():
        if day > today:
            continue
        recent, baseline = windows.get(key, Window(ZERO, ZERO))
        windows[key] = Window(recent + qty, baseline) if day >= split else Window(
            recent, baseline + qty)
    skus = {row["id"]: row["sku"] for row in rows.get(Table.PRODUCT, {}).values()}
    result = {}
    for key, window in windows.items():
        sku = skus.get(key.product_id)
        item = None if sku is None else view.item(sku)
        if item is None:
            continue
        warehouse_id = None
        if key.warehouse_code != OVERALL:
            warehouse_id = view.warehouse(key.warehouse_code)
            if warehouse_id is None:
                continue
        figures = judge(window, item, view.supply(item.id, warehouse_id), today, rules)
        if figures.surging:
            result[key] = figures
    return result

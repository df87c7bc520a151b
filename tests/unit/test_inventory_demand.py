"""inventory-projection: CRM demand folded incrementally (services.inventory_projection.demand
and the RowStore indexes over it).

Invariants protected here (issue 9, case 1; DESIGN.md 6):

* The incremental fold equals a recomputation: after any sequence of changes (inserts,
  updates, deletes of items, warehouses, products, CRM orders and lines, ERP orders and
  lines, stock), every key's pending CRM demand, every order's demand and the list of
  unresolved lines are what a naive walk over the latest row versions says, and what a
  store rebuilt from its state says.
* Nothing is missed: every key whose figures a change moved is in ``Applied.keys`` (the
  shell republishes only those), every order whose demand it moved in ``Applied.orders``.
* The cost of one change does not grow with its order: a CRM line's change resolves
  that line only, an ERP line's change the CRM line it covers only, reading only the
  ERP lines with that line_no; an order change that moves no line's resolution resolves
  none. (Counted calls, not timings.)
* The book's sums are exact and leave no residue when the last line of a key leaves.
* A state written before the order indexes and demand were kept in it is indexed once
  at load, to exactly the entries an incremental fold keeps.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import orjson
import pytest

import services.inventory_projection.crm_demand as crm_demand
from services.inventory_projection.available_to_promise import AvailabilityKey
from services.inventory_projection.crm_demand import CrmDemandLine, Unresolved, resolve_demand_line
from services.inventory_projection.demand import DemandBook
from services.inventory_projection.records import (
    CrmOrder,
    CrmOrderLine,
    CrmProduct,
    ErpItem,
    ErpOrder,
    ErpOrderLine,
    Warehouse,
)
from services.inventory_projection.row_store import META_KEY, Applied, RowStore
from services.inventory_projection.source_rows import (
    CRM_ORDER,
    CRM_ORDER_LINE,
    ERP_ORDER,
    ERP_ORDER_LINE,
    ITEM,
    PRODUCT,
    STOCK_QUANT,
    WAREHOUSE,
    Table,
)
from services.shared.position import SourcePosition
from services.shared.state.store import MemoryState
from tests.builders import complete_row

D = Decimal
ZERO = D("0.000")

# ------------------------------------------------------------------ the book


def _line(line_id: int, order_id: int, key: tuple[int, int], qty: str) -> CrmDemandLine:
    return CrmDemandLine(line_id, order_id, key[0], key[1], D(qty), ZERO)


def _book() -> DemandBook[CrmDemandLine, Unresolved]:
    return DemandBook(MemoryState(), crm_demand.DEMAND_CODEC)


def test_book_keeps_key_and_order_sums_as_lines_are_replaced() -> None:
    book = _book()
    k1, k2 = AvailabilityKey(1, 1), AvailabilityKey(1, 2)
    book.replace(1, 10, _line(1, 10, k1, "2.500"), counts=True)
    book.replace(2, 10, _line(2, 10, k1, "1.250"), counts=True)
    book.replace(3, 11, _line(3, 11, k2, "4"), counts=True)
    assert book.pending(k1) == D("3.750") and book.pending(k2) == D(4)
    order = book.order(10)
    assert order is not None and order.counted == 2 and order.pending == {k1: D("3.750")}
    # a line moves to another key and becomes unresolved in turn
    before = book.replace(2, 10, _line(2, 10, k2, "1"), counts=True)
    assert before is not None and before.key == k1
    assert (book.pending(k1), book.pending(k2)) == (D("2.500"), D(5))
    book.replace(1, 10, Unresolved(1, "no ERP item"), counts=False)
    assert book.pending(k1) == ZERO and book.lines(k1) == 0 and book.lines(k2) == 2
    assert book.unresolved_of(10) == [Unresolved(1, "no ERP item")]
    order = book.order(10)
    assert order is not None and order.counted == 1 and order.pending == {k2: D(1)}
    # removed: nothing left of order 10, no residue in any sum
    book.replace(1, 10, None, counts=False)
    book.replace(2, 10, None, counts=False)
    assert book.order(10) is None
    assert str(book.pending(k2)) == "4.000"
    book.replace(3, 11, None, counts=False)
    assert book.pending(k2) == ZERO and book.order(11) is None
    book.flush()
    assert isinstance(book.kv, MemoryState) and book.kv.data == {}  # nothing left behind


def test_a_zero_pending_line_still_counts_its_key_in_the_order() -> None:
    book = _book()
    key = AvailabilityKey(3, 4)
    covered = CrmDemandLine(1, 7, 3, 4, D(5), D(5))
    book.replace(1, 7, covered, counts=True)
    order = book.order(7)
    assert order is not None and order.pending == {key: ZERO} and order.lines == {key: 1}


# ------------------------------------------------------------------ random histories

ITEMS = WAREHOUSES = PRODUCTS = range(1, 4)
ORDERS, LINES = range(1, 5), range(1, 13)
SKUS = ("A", "B", "C", "Z")
CODES = ("W1", "W2", "W3", "WX")


def _random_row(rng: random.Random, table: Table, row_id: int) -> dict[str, Any]:
    if table == ITEM:
        return {"id": row_id, "sku": rng.choice(SKUS[:3])}
    if table == WAREHOUSE:
        return {"id": row_id, "code": rng.choice(CODES[:3])}
    if table == PRODUCT:
        return {"id": row_id, "sku": rng.choice(SKUS)}
    if table == CRM_ORDER:
        return {
            "id": row_id,
            "number": f"SO{row_id}",
            "account_id": 1,
            "state": rng.choice(("draft", "confirmed", "amended", "cancelled")),
            "warehouse_code": rng.choice((*CODES, None)),
            "version": rng.randint(1, 4),
        }
    if table == CRM_ORDER_LINE:
        return {
            "id": row_id,
            "order_id": rng.choice(ORDERS),
            "line_no": rng.randint(1, 3),
            "product_id": rng.choice(PRODUCTS),
            "quantity": D(rng.randint(1, 9)),
        }
    if table == ERP_ORDER:
        return {
            "id": row_id,
            "crm_order_id": rng.choice((*ORDERS, None)),
            "state": rng.choice(("open", "open", "cancelled")),
        }
    if table == ERP_ORDER_LINE:
        return {
            "id": row_id,
            "order_id": rng.choice(ORDERS),
            "line_no": rng.randint(1, 3),
            "item_id": rng.choice(ITEMS),
            "qty_reserved": D(rng.randint(0, 5)),
            "qty_delivered": D(rng.randint(0, 3)),
        }
    assert table == STOCK_QUANT
    return {
        "id": row_id,
        "item_id": rng.choice(ITEMS),
        "warehouse_id": rng.choice(WAREHOUSES),
        "quantity": D(rng.randint(0, 50)),
    }


TABLE_IDS: dict[Table, range] = {
    ITEM: ITEMS,
    WAREHOUSE: WAREHOUSES,
    PRODUCT: PRODUCTS,
    CRM_ORDER: ORDERS,
    CRM_ORDER_LINE: LINES,
    ERP_ORDER: ORDERS,
    ERP_ORDER_LINE: LINES,
    STOCK_QUANT: range(1, 6),
}
# the order tables change most, as in production
WEIGHTS = {
    ITEM: 1,
    WAREHOUSE: 1,
    PRODUCT: 1,
    CRM_ORDER: 3,
    CRM_ORDER_LINE: 6,
    ERP_ORDER: 3,
    ERP_ORDER_LINE: 6,
    STOCK_QUANT: 2,
}


def _present(store: RowStore, table: Table) -> dict[int, Any]:
    return {row_id: v.record for row_id, v in store.versions_of(table) if v.record is not None}


def _lowest(records: Mapping[int, Any], attribute: str, value: str | None) -> Any:
    ids = sorted(i for i, r in records.items() if getattr(r, attribute) == value)
    return records[ids[0]] if ids else None


def naive_demand(store: RowStore) -> dict[int, CrmDemandLine | Unresolved]:
    """Every CRM line resolved from scratch over the latest row versions, walking every
    ERP line of the covering orders (the rule as written, no index)."""
    items: dict[int, ErpItem] = _present(store, ITEM)
    warehouses: dict[int, Warehouse] = _present(store, WAREHOUSE)
    products: dict[int, CrmProduct] = _present(store, PRODUCT)
    orders: dict[int, CrmOrder] = _present(store, CRM_ORDER)
    erp_orders: dict[int, ErpOrder] = _present(store, ERP_ORDER)
    erp_lines: dict[int, ErpOrderLine] = _present(store, ERP_ORDER_LINE)
    result: dict[int, CrmDemandLine | Unresolved] = {}
    line: CrmOrderLine
    for line_id, line in _present(store, CRM_ORDER_LINE).items():
        order = orders.get(line.order_id)
        product = products.get(line.product_id)
        sku = None if product is None else product.sku
        covering = [
            e
            for e in erp_lines.values()
            if (o := erp_orders.get(e.order_id)) is not None
            and o.covers
            and o.crm_order_id == line.order_id
        ]
        resolved = resolve_demand_line(
            line,
            order,
            sku,
            None if sku is None else _lowest(items, "sku", sku),
            None if order is None else _lowest(warehouses, "code", order.warehouse_code),
            covering,
        )
        if resolved is not None:
            result[line_id] = resolved
    return result


def naive_order_demand(
    store: RowStore, demand: Mapping[int, CrmDemandLine | Unresolved], order_id: int
) -> dict[AvailabilityKey, Decimal] | None:
    order = _present(store, CRM_ORDER).get(order_id)
    lines = [i for i, r in _present(store, CRM_ORDER_LINE).items() if r.order_id == order_id]
    if not isinstance(order, CrmOrder) or not order.is_live or not lines:
        return None
    sums: dict[AvailabilityKey, Decimal] = {}
    for line_id in lines:
        d = demand.get(line_id)
        if not isinstance(d, CrmDemandLine):
            return None
        sums[d.key] = sums.get(d.key, ZERO) + d.pending
    return sums


def _check_against_naive(store: RowStore) -> None:
    demand = naive_demand(store)
    pending: dict[AvailabilityKey, Decimal] = {}
    for d in demand.values():
        if isinstance(d, CrmDemandLine):
            pending[d.key] = pending.get(d.key, ZERO) + d.pending
    for key in set(pending) | {k for k in store.iter_keys() if k.warehouse_id is not None}:
        availability = store.availability(key)
        assert availability is not None, key
        assert availability.pending_crm_demand == pending.get(key, ZERO), key
    for order_id in ORDERS:
        assert store.order_demand(order_id) == naive_order_demand(store, demand, order_id)
    unresolved = sorted(
        f"crm.sales_order_line {d.crm_line_id}: {d.reason}"
        for d in demand.values()
        if isinstance(d, Unresolved)
    )
    assert [u for u in store.unresolved() if u.startswith("crm.")] == unresolved


def _figures(store: RowStore) -> dict[AvailabilityKey, tuple[Any, ...]]:
    return {k: a.figures() for k, a in store.all_availability().items()}


@pytest.mark.parametrize("seed", range(25))
def test_incremental_fold_equals_a_recomputation_on_random_histories(seed: int) -> None:
    rng = random.Random(seed)
    store = RowStore()
    lsn = itertools.count(100, 10)
    tables = list(WEIGHTS)
    weights = [WEIGHTS[t] for t in tables]
    for _ in range(250):
        table = rng.choices(tables, weights)[0]
        row_id = rng.choice(TABLE_IDS[table])
        row = None if rng.random() < 0.15 else _random_row(rng, table, row_id)
        before = _figures(store)
        orders_before = {o: store.order_demand(o) for o in ORDERS}
        position = SourcePosition(next(lsn), 0)
        applied = store.apply_row(
            table, row_id, position, None if row is None else complete_row(*table, row)
        )
        after = _figures(store)
        moved = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
        assert moved <= applied.keys, (table, row, moved - applied.keys)
        moved_orders = {o for o in ORDERS if store.order_demand(o) != orders_before[o]}
        assert moved_orders <= applied.orders, (table, row)
        _check_against_naive(store)
    # and a store opened over the persisted state (indexes and demand read from it)
    # agrees, as does one over a state from before they were kept in it (layout 1:
    # row versions only, indexes and demand derived once at load)
    store.save_meta()
    assert isinstance(store.kv, MemoryState)
    meta = orjson.loads(store.kv.data[META_KEY])
    del meta["layout"]
    old = MemoryState()
    for key, value in store.kv.data.items():
        if not key.startswith((b"n:", b"d:")):
            old.put(key, value)
    old.put(META_KEY, orjson.dumps(meta))
    for rebuilt in (RowStore.load(store.kv), RowStore.load(old)):
        assert _figures(rebuilt) == _figures(store)
        assert rebuilt.unresolved() == store.unresolved()
        for order_id in ORDERS:
            assert rebuilt.order_demand(order_id) == store.order_demand(order_id)
    # the derived entries are exactly those kept (sets are stored in any order)
    assert _normalised(old.data) == _normalised(store.kv.data)


def _normalised(data: Mapping[bytes, bytes]) -> dict[bytes, Any]:
    def sort(value: Any) -> Any:
        if isinstance(value, list):
            return sorted((sort(v) for v in value), key=repr)
        if isinstance(value, dict):
            return {k: sort(v) for k, v in value.items()}
        return value

    return {k: v if not v else sort(orjson.loads(v)) for k, v in data.items()}


# ------------------------------------------------------------------ cost per change


class _Counting:
    """Counts resolve_demand_line calls and the ERP lines each was handed."""

    def __init__(self) -> None:
        self.calls = 0
        self.erp_lines: list[int] = []

    def __call__(self, *args: Any) -> Any:
        self.calls += 1
        erp_lines = list(args[5])
        self.erp_lines.append(len(erp_lines))
        return resolve_demand_line(*(*args[:5], erp_lines))


def test_one_change_of_a_large_order_resolves_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    n = 2_000
    lsn = itertools.count(100, 10)
    store = RowStore()

    def put(table: Table, row: dict[str, Any]) -> Applied:
        return store.apply_row(table, row["id"], SourcePosition(next(lsn), 0),
                               complete_row(*table, row))

    put(ITEM, {"id": 1, "sku": "A"})
    put(WAREHOUSE, {"id": 1, "code": "W1"})
    put(PRODUCT, {"id": 1, "sku": "A"})
    header = {
        "id": 1,
        "number": "SO1",
        "account_id": 1,
        "state": "confirmed",
        "warehouse_code": "W1",
        "version": 1,
    }
    put(CRM_ORDER, header)
    put(ERP_ORDER, {"id": 1, "crm_order_id": 1, "state": "open"})

    def crm(no: int, qty: int = 3) -> dict[str, Any]:
        return {"id": no, "order_id": 1, "line_no": no, "product_id": 1, "quantity": D(qty)}

    def erp(no: int, reserved: int = 0) -> dict[str, Any]:
        return {
            "id": no,
            "order_id": 1,
            "line_no": no,
            "item_id": 1,
            "qty_reserved": D(reserved),
            "qty_delivered": D(0),
        }

    for no in range(1, n + 1):
        put(CRM_ORDER_LINE, crm(no))
        put(ERP_ORDER_LINE, erp(no))
    counting = _Counting()
    monkeypatch.setattr(crm_demand, "resolve_demand_line", counting)

    applied = put(CRM_ORDER_LINE, crm(7, 5))
    assert counting.calls == 1 and counting.erp_lines == [1]
    assert applied.keys == {AvailabilityKey(1, 1), AvailabilityKey(1, None)}
    put(ERP_ORDER_LINE, erp(9, 2))
    assert counting.calls == 2 and counting.erp_lines == [1, 1]
    # the order's new version moves no line's resolution: nothing resolved again
    put(CRM_ORDER, {**header, "state": "amended", "version": 2})
    put(ERP_ORDER, {"id": 1, "crm_order_id": 1, "state": "reserved"})
    assert counting.calls == 2
    # the figures are still exact: 2,000 lines of 3, one of 5, 2 reserved on another
    availability = store.availability(AvailabilityKey(1, 1))
    assert availability is not None
    assert availability.pending_crm_demand == D(3 * n + 2 - 2)
    assert store.order_demand(1) == {AvailabilityKey(1, 1): D(3 * n)}
    # cancelling the ERP order uncovers every line: each resolved once, not n times
    put(ERP_ORDER, {"id": 1, "crm_order_id": 1, "state": "cancelled"})
    assert counting.calls == 2 + n
    assert set(counting.erp_lines[2:]) == {0}

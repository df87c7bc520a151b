"""demand signals: what is published and written back (services.demand_signals.emit
against schemas/published/demand_surge and deploy/sql/*/070_demand_signals.sql).

Invariants protected here: raised and cleared surges encode with the published schema
and decode to the same figures (quantities exact Decimals), keyed like availability so
one key's events stay in order; the supply-priority and answer rows write every value
column of their tables (a renamed column fails here, not in production); a cleared
surge is a tombstone of its row that keeps the surge's id, also for a surge raised and
cleared within one step (its row never written raised): a replay finds it known.
"""

from __future__ import annotations

import json
import re
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

from services.demand_signals import emit
from services.demand_signals.fold import Outcome
from services.demand_signals.records import Table
from services.demand_signals.surge import Surge
from services.inventory_projection.demand_effects import priority_writes
from services.inventory_projection.demand_signals import DemandStep
from services.shared.avro import AvroCodec, SchemaCatalogue
from services.shared.position import SourcePosition
from services.shared.sinks import Delete
from tests.unit.demand_support import (
    Feed,
    at,
    order,
    order_line,
    product,
    quote,
    quote_line,
    request,
)

CODEC = AvroCodec(SchemaCatalogue.load())
SQL = Path(__file__).resolve().parents[2] / "deploy" / "sql"
BOOKKEEPING = {"source_commit_lsn", "source_lsn", "deleted", "updated_at"}
T = date(2026, 12, 1)


def _columns(path: Path) -> dict[str, set[str]]:
    result = {}
    for name, body in re.findall(r"CREATE TABLE IF NOT EXISTS (\S+) \((.*?)\n\);",
                                 path.read_text(), re.S):
        result[name] = {m for m in re.findall(r"^\s{4}(\w+)\s", body, re.M)
                        if m not in ("PRIMARY", "CHECK", "UNIQUE")}
    return result


COLUMNS = _columns(SQL / "crm" / "070_demand_signals.sql") | _columns(
    SQL / "erp" / "070_demand_signals.sql")


def _surging_outcome() -> tuple[Feed, Outcome]:
    feed = Feed()
    feed.view.add_item(7, "SKU-7", lead_time_days=10)
    feed.view.atp[(7, 1)] = Decimal("5")
    feed.incoming(7, 1, T + timedelta(days=2), "12.5")
    feed.put(Table.PRODUCT, product(70, "SKU-7"))
    feed.fold.advance(at(T))
    feed.put(Table.ORDER, order(1, T))
    out = feed.put(Table.ORDER_LINE, order_line(1, 1, 70, "70.125"))
    out.merge(feed.put(Table.ORDER, {**order(1, T), "state": "cancelled", "cancelled_at": at(T)}))
    return feed, out


def _surging_feed() -> tuple[Feed, list[Surge]]:
    feed, out = _surging_outcome()
    return feed, out.events


def test_raised_and_cleared_surges_round_trip_through_the_schema() -> None:
    _, events = _surging_feed()
    assert [e.status for e in events] == ["raised", "cleared"]
    for surge in events:
        record = emit.surge_record(surge)
        decoded = CODEC.decode(CODEC.encode(emit.SURGE_SCHEMA, record)).record
        assert decoded == record
        assert json.loads(emit.surge_key(surge)) == {"sku": "SKU-7", "warehouse": "WH1"}
    raised = CODEC.decode(CODEC.encode(emit.SURGE_SCHEMA, emit.surge_record(events[0]))).record
    # 70.125 x 10 / 7 = 100.17857 projected - (5 + 12.5), rounded up
    assert raised["shortfall"] == Decimal("82.679") and raised["projected"] == Decimal("100.179")
    assert raised["evidence"] == [{"document": "order", "id": 1, "quantity": Decimal("70.125")}]
    assert raised["reasons"] == ["above_baseline", "shortfall"]


def test_rows_write_every_value_column_and_a_cleared_surge_is_a_tombstone() -> None:
    feed, (raised, cleared) = _surging_feed()
    row = emit.supply_priority_row(raised)
    assert row is not None
    assert set(row) == COLUMNS[emit.SUPPLY_PRIORITY_TABLE] - BOOKKEEPING
    assert set(emit.KEYS[emit.SUPPLY_PRIORITY_TABLE]) <= set(row)
    assert emit.supply_priority_row(cleared) is None
    assert emit.supply_priority_key(cleared) == {"item_id": 7, "warehouse_code": "WH1"}
    lines = json.dumps([{"line_no": 1, "product_id": 70, "quantity": "3"}])
    feed.put(Table.ORDER, order(2, T))
    answer = feed.put(Table.REQUEST, request(5, 2, lines)).answers[5]
    assert answer is not None
    row = emit.answer_row(answer)
    assert set(row) == COLUMNS[emit.ANSWER_TABLE] - BOOKKEEPING
    assert json.loads(row["lines"])[0]["available_now"] == "3.000"
    assert set(emit.KEYS) == set(COLUMNS) - {"crm.feasibility_request"}


def test_a_surge_raised_and_cleared_in_one_step_leaves_a_tombstone_with_its_id() -> None:
    _, out = _surging_outcome()
    raised, cleared = out.events
    writes = priority_writes(DemandStep(out), SourcePosition(9, 9))
    assert [(type(w).__name__, w.key) for w in writes] == [("Delete", (7, "WH1"))]
    assert isinstance(writes[0], Delete) and writes[0].kept == (raised.surge_id,)
    assert cleared.surge_id == raised.surge_id


def test_a_weighted_quote_as_evidence_fits_the_schema() -> None:
    """A sent quote counts half: 20.001 x 0.5 = 10.0005 is 10.000 in the event (found on
    the real stack: the unquantized product was refused by the schema)."""
    feed = Feed()
    feed.view.add_item(7, "SKU-7", lead_time_days=30)
    feed.put(Table.PRODUCT, product(70, "SKU-7"))
    feed.fold.advance(at(T))
    feed.put(Table.QUOTE, quote(1, T))
    out = feed.put(Table.QUOTE_LINE, quote_line(1, 1, 70, "20.001"))
    (raised,) = out.events
    record = emit.surge_record(raised)
    decoded = CODEC.decode(CODEC.encode(emit.SURGE_SCHEMA, record)).record
    assert [e["quantity"] for e in decoded["evidence"]] == [Decimal("10.000")]

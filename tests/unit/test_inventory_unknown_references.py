"""inventory-projection: rows naming an unknown reference (services.inventory_projection).

Invariant protected (DESIGN.md 4, bad input; 6, replay): a row whose item, warehouse,
CRM product, SKU or warehouse code is not known is *held* (stored, counted nowhere,
counted as soon as the reference arrives), and its change is dead-lettered ONCE, as
:class:`UnknownReference` with its reason, when the reference is really missing rather
than late: when the watermark (commits and heartbeats, source time) of the database
that supplies the reference reaches the change's commit time + UNKNOWN_REFERENCE_GRACE
and the reference is still unknown. Until then the change's handle is not released
(a restart redelivers it); a reference that arrives in time means no dead letter. A
redelivery of the same row version after a restart still gets its verdict if none was
given, never a second one; a replay over the same state dead-letters nothing again.
References: stock rows -> erp.item / erp.warehouse; CRM lines -> the ERP catalogue
(SKU, warehouse code) or the CRM (order, product); a CRM order confirmed with
unresolved lines is judged on the order's change.
Negative stock is dead-lettered at once, as before.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from services.inventory_projection.available_to_promise import AvailabilityKey
from services.inventory_projection.projector import (
    VERDICT_PREFIX,
    Projector,
    verdict_key,
)
from services.inventory_projection.source_rows import (
    UNKNOWN_REFERENCE_GRACE,
    NegativeStock,
    UnknownReference,
)
from services.inventory_projection.step import Step
from services.shared.changes import ChangeEvent, ChangeOp
from services.shared.state.store import MemoryState
from services.shared.transactions import TransactionMarker, TransactionStatus
from tests.builders import change_event

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
GRACE = UNKNOWN_REFERENCE_GRACE.total_seconds()
ITEM, WAREHOUSE, PRODUCT = 1, 7, 3
KEY = AvailabilityKey(ITEM, WAREHOUSE)

_lsn = itertools.count(1000, 10)
_xid = itertools.count(1)

Row = tuple[str, dict[str, Any], str]  # table, row, handle


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


class Tx:
    """One source transaction: its change events (with their handles) and END marker."""

    def __init__(self, db: str, seconds: float, *rows: Row) -> None:
        self.db = db
        self.xid = f"{db}-{next(_xid)}"
        self.events: list[tuple[ChangeEvent, str]] = []
        for order, (table, row, handle) in enumerate(rows, start=1):
            lsn = next(_lsn)
            event = change_event(db, table, after=row, commit_lsn=lsn,
                                 transaction_id=self.xid, order=order, commit_time=at(seconds))
            self.events.append((event, handle))

    def send(self, p: Projector[str], suffix: str = "") -> None:
        """Deliver the events and the END marker (``suffix``: a redelivery's handles)."""
        for event, handle in self.events:
            p.change(event, handle + suffix)
        counts = Counter(event.data_collection for event, _ in self.events)
        marker = TransactionMarker(
            TransactionStatus.END, self.xid, f"{self.xid}:1", len(self.events), counts, T0
        )
        p.marker(self.db, marker, f"end:{self.xid}{suffix}")


def item(item_id: int = ITEM, sku: str = "A") -> Row:
    return ("item", {"id": item_id, "sku": sku}, f"item{item_id}")


def warehouse(warehouse_id: int = WAREHOUSE, code: str = "W") -> Row:
    return ("warehouse", {"id": warehouse_id, "code": code}, f"wh{warehouse_id}")


def quant(qid: int, qty: str, item_id: int = ITEM, handle: str | None = None) -> Row:
    row = {"id": qid, "item_id": item_id, "warehouse_id": WAREHOUSE, "quantity": Decimal(qty)}
    return ("stock_quant", row, handle or f"q{qid}")


def crm_order(oid: int = 5, code: str = "W", state: str = "confirmed") -> Row:
    row = {
        "id": oid,
        "number": f"SO{oid}",
        "account_id": 9,
        "state": state,
        "warehouse_code": code,
        "version": 1,
    }
    return ("sales_order", row, f"o{oid}.{state}")


def crm_line(lid: int = 6, oid: int = 5, product: int = PRODUCT) -> Row:
    row = {"id": lid, "order_id": oid, "line_no": 1, "product_id": product, "quantity": Decimal(4)}
    return ("sales_order_line", row, f"l{lid}")


def product(sku: str, pid: int = PRODUCT) -> Row:
    return ("product", {"id": pid, "sku": sku}, f"p{pid}")


def letters(step: Step[str]) -> list[tuple[str, str]]:
    return [(h, type(e).__name__) for h, e in step.dead_letters]


def unknown_reasons(step: Step[str]) -> list[str]:
    return [e.reason for _, e in step.dead_letters if isinstance(e, UnknownReference)]


def on_hand(step: Step[str], key: AvailabilityKey = KEY) -> list[Decimal]:
    return [a.on_hand for a in step.availability if a.key == key]


def erp_catalogue(p: Projector[str]) -> None:
    """Warehouse W known (ERP, t=0); item 1 NOT known."""
    Tx("erp", 0, warehouse()).send(p)
    p.step()


# ------------------------------------------------------------------ stock rows


def test_quant_of_unknown_item_is_held_then_dead_lettered_once_and_counted_later() -> None:
    p: Projector[str] = Projector()
    erp_catalogue(p)
    Tx("erp", 10, quant(10, "12")).send(p)
    step = p.step()
    assert step.dead_letters == [] and step.availability == []
    assert "q10" not in step.release  # awaiting its verdict: not acknowledged
    assert p.awaiting_verdicts == 1
    assert p.store.unresolved()  # held
    p.heartbeat("erp", at(10 + GRACE - 0.001), "hb1")  # within the grace: late is normal
    step = p.step()
    assert step.dead_letters == [] and step.release == ["hb1"]
    p.heartbeat("erp", at(10 + GRACE), "hb2")  # due: the item is really missing
    step = p.step()
    assert letters(step) == [("q10", "UnknownReference")]
    (reason,) = unknown_reasons(step)
    assert reason.startswith("erp.stock_quant 10: unknown item 1 (erp.item)")
    assert "warehouse" not in reason  # only what is unknown
    assert "held and counted once the reference appears" in reason
    assert sorted(step.release) == ["hb2", "q10"]
    assert p.awaiting_verdicts == 0
    assert p.store.kv.get(verdict_key(("erp", "stock_quant"), 10)) is not None
    p.heartbeat("erp", at(60), "hb3")
    assert p.step().dead_letters == []  # once
    # the row stayed held: the item arrives late and the quant is counted
    Tx("erp", 70, item()).send(p)
    step = p.step()
    assert on_hand(step) == [Decimal("12.000")]
    assert on_hand(step, AvailabilityKey(ITEM, None)) == [Decimal("12.000")]
    assert step.dead_letters == [] and p.store.unresolved() == []


def test_no_verdict_while_the_reference_topics_are_not_read_to_their_end() -> None:
    """In a backlog the quant topic can run far ahead (source time) of the catalogue
    topics: the watermark passing the grace judges nothing until the shell says the
    ERP's reference topics are caught up; the item read then means no dead letter."""
    p: Projector[str] = Projector()
    erp_catalogue(p)
    Tx("erp", 10, quant(10, "3")).send(p)
    Tx("erp", 600, quant(11, "1")).send(p)  # ten minutes later, same topic
    step = p.step(caught_up=["crm"])
    assert step.dead_letters == [] and "q10" not in step.release
    assert p.awaiting_verdicts == 2
    Tx("erp", 1, item()).send(p)  # the catalogue topic, behind
    step = p.step(caught_up=["crm"])
    assert on_hand(step) == [Decimal("4.000")] and step.dead_letters == []
    step = p.step(caught_up=["crm", "erp"])
    assert step.dead_letters == [] and "q10" in step.release  # resolved: released
    assert p.awaiting_verdicts == 1  # q11's grace has not passed in source time
    p.heartbeat("erp", at(600 + GRACE), "hb")
    step = p.step(caught_up=["crm", "erp"])
    assert step.dead_letters == [] and "q11" in step.release
    assert p.awaiting_verdicts == 0


def test_awaiting_verdicts_are_bounded(monkeypatch: Any) -> None:
    """Beyond AWAITING_LIMIT held rows are released unjudged (counted), never kept."""
    monkeypatch.setattr("services.inventory_projection.projector.AWAITING_LIMIT", 2)
    p: Projector[str] = Projector()
    erp_catalogue(p)
    Tx("erp", 10, quant(10, "1"), quant(11, "1"), quant(12, "1")).send(p)
    step = p.step(caught_up=[])
    assert p.awaiting_verdicts == 2 and p.unjudged == 1
    assert "q12" in step.release and "q10" not in step.release
    assert p.store.unresolved()  # still held in the projection


def test_item_arriving_within_the_grace_means_no_dead_letter() -> None:
    p: Projector[str] = Projector()
    erp_catalogue(p)
    Tx("erp", 10, quant(10, "3")).send(p)
    assert "q10" not in p.step().release
    Tx("erp", 12, item()).send(p)
    step = p.step()
    assert on_hand(step) == [Decimal("3.000")]
    assert "q10" not in step.release  # released with the verdict, not before
    p.heartbeat("erp", at(30), "hb")
    step = p.step()
    assert step.dead_letters == [] and sorted(step.release) == ["hb", "q10"]
    assert p.awaiting_verdicts == 0
    assert list(p.store.kv.scan(VERDICT_PREFIX)) == []


def test_unknown_warehouse_is_dead_lettered_too() -> None:
    p: Projector[str] = Projector()
    Tx("erp", 0, item()).send(p)
    Tx("erp", 10, quant(10, "3")).send(p)
    Tx("erp", 20, quant(11, "1", item_id=2)).send(p)  # passes the grace of q10
    step = p.step()
    (reason,) = unknown_reasons(step)
    assert reason.startswith("erp.stock_quant 10: unknown warehouse 7 (erp.warehouse)")
    assert "q10" in step.release and "q11" not in step.release
    p.heartbeat("erp", at(25), "hb")
    (reason,) = unknown_reasons(p.step())
    assert "unknown item 2 (erp.item) and warehouse 7 (erp.warehouse)" in reason


def test_verdicts_follow_source_order_whatever_the_batches() -> None:
    """An ERP commit past the due time decides before it is applied: the item that
    commits after it is late, in one step or in many."""
    for in_one in (True, False):
        p: Projector[str] = Projector()
        erp_catalogue(p)
        # built after the catalogue: transactions commit in the order they are sent
        history = [
            Tx("erp", 10, quant(10, "3")),
            Tx("erp", 16, quant(11, "1", item_id=99)),  # at/after 10 + grace
            Tx("erp", 17, item()),  # too late for q10
        ]
        batches = [history] if in_one else [[tx] for tx in history]
        found: list[tuple[str, str]] = []
        for batch in batches:
            for tx in batch:
                tx.send(p)
            found += letters(p.step())
        assert found == [("q10", "UnknownReference")]


def test_a_change_already_past_its_grace_is_judged_in_the_same_step() -> None:
    p: Projector[str] = Projector()
    erp_catalogue(p)
    p.heartbeat("erp", at(100), "hb")  # the heartbeat topic is ahead of the quant's
    Tx("erp", 10, quant(10, "3")).send(p)
    step = p.step()
    assert letters(step) == [("q10", "UnknownReference")]
    assert step.release.count("q10") == 1 and p.awaiting_verdicts == 0


def test_a_superseded_version_gets_no_verdict_of_its_own() -> None:
    p: Projector[str] = Projector()
    erp_catalogue(p)
    Tx("erp", 10, quant(10, "3", handle="v1")).send(p)
    Tx("erp", 11, quant(10, "4", item_id=2, handle="v2")).send(p)
    p.heartbeat("erp", at(30), "hb")
    step = p.step()
    assert letters(step) == [("v2", "UnknownReference")]
    assert {"v1", "v2"} <= set(step.release)
    (reason,) = unknown_reasons(step)
    assert "unknown item 2" in reason


# ------------------------------------------------------------------ CRM lines


def test_crm_line_whose_sku_has_no_erp_item_is_judged_by_the_erp_watermark() -> None:
    p: Projector[str] = Projector()
    erp_catalogue(p)
    Tx("crm", 0, product("NOPE")).send(p)
    Tx("crm", 10, crm_order(), crm_line()).send(p)
    step = p.step()
    assert step.dead_letters == [] and "l6" not in step.release
    assert "o5.confirmed" in step.release  # lines inserted after it: they are judged
    p.heartbeat("crm", at(100), "crm-hb")  # the CRM's time does not decide an ERP reference
    p.heartbeat("erp", at(14), "erp-hb")
    step = p.step()
    assert step.dead_letters == [] and "l6" not in step.release
    p.heartbeat("erp", at(15), "erp-hb2")
    step = p.step()
    assert letters(step) == [("l6", "UnknownReference")]
    (reason,) = unknown_reasons(step)
    assert reason.startswith("crm.sales_order_line 6: no ERP item with SKU 'NOPE'")
    assert "held and counted once the reference appears" in reason
    assert "l6" in step.release
    # the line is counted once the ERP item appears
    Tx("erp", 20, item(sku="NOPE"), quant(10, "10")).send(p)
    step = p.step()
    assert [a.pending_crm_demand for a in step.availability if a.key == KEY] == [
        Decimal("4.000")
    ]
    assert step.dead_letters == []


def test_crm_line_of_an_unknown_warehouse_code_is_dead_lettered() -> None:
    p: Projector[str] = Projector()
    Tx("erp", 0, item()).send(p)
    Tx("crm", 0, product("A")).send(p)
    Tx("crm", 10, crm_order(code="NOWHERE"), crm_line()).send(p)
    p.heartbeat("erp", at(20), "hb")
    (reason,) = unknown_reasons(p.step())
    assert "crm.sales_order_line 6: CRM order 5 warehouse_code 'NOWHERE'" in reason


def test_confirming_a_draft_whose_lines_are_unresolved_is_judged_on_the_order() -> None:
    """The CRM writes drafts with their lines, then confirms: no line change makes
    the lines demand, the order's does."""
    p: Projector[str] = Projector()
    erp_catalogue(p)
    Tx("crm", 0, product("NOPE")).send(p)
    Tx("crm", 10, crm_order(state="draft"), crm_line()).send(p)
    p.heartbeat("erp", at(30), "hb")
    step = p.step()
    assert step.dead_letters == [] and "l6" in step.release  # a draft is no demand
    Tx("crm", 40, crm_order(state="confirmed")).send(p)
    step = p.step()
    assert step.dead_letters == [] and "o5.confirmed" not in step.release
    p.heartbeat("erp", at(45), "hb2")
    step = p.step()
    assert letters(step) == [("o5.confirmed", "UnknownReference")]
    (reason,) = unknown_reasons(step)
    assert reason.startswith("crm.sales_order 5 is live but line 6: no ERP item with SKU")
    assert "held and counted once the reference appears" in reason


def test_crm_side_reference_is_judged_by_the_crm_watermark_and_may_move_to_the_erp() -> None:
    p: Projector[str] = Projector()
    erp_catalogue(p)
    Tx("crm", 10, crm_order(), crm_line(product=4)).send(p)  # product 4 not seen
    p.heartbeat("erp", at(100), "erp-hb")
    assert p.step().dead_letters == []  # the ERP's time does not decide a CRM product
    Tx("crm", 11, product("NOPE", pid=4)).send(p)  # seen now; its SKU is no ERP item
    p.heartbeat("crm", at(16), "crm-hb")
    step = p.step()  # due by the CRM, now an ERP reference (ERP time is past it too)
    (reason,) = unknown_reasons(step)
    assert reason.startswith("crm.sales_order_line 6: no ERP item with SKU 'NOPE'")
    p2: Projector[str] = Projector()
    erp_catalogue(p2)
    Tx("crm", 10, crm_order(), crm_line(product=4)).send(p2)
    p2.heartbeat("crm", at(15), "crm-hb")
    (reason,) = unknown_reasons(p2.step())
    assert reason.startswith("crm.sales_order_line 6: CRM product 4 not seen")


# ------------------------------------------------------------------ restart and replay


def test_redelivery_after_a_restart_gets_its_verdict_once_and_a_replay_none() -> None:
    kv = MemoryState()
    p: Projector[str] = Projector.load(kv)
    history = [Tx("erp", 0, warehouse()), Tx("erp", 10, quant(10, "12"))]
    for tx in history:
        tx.send(p)
    step = p.step()
    assert step.dead_letters == [] and "q10" not in step.release
    # crash before the verdict: a new process over the same state; the quant is
    # redelivered (its offset was not covered); the fold says unchanged
    restarted: Projector[str] = Projector.load(kv)
    history[1].send(restarted, ".again")
    step = restarted.step()
    assert step.applied == 0 and step.stale == 1
    assert step.dead_letters == [] and "q10.again" not in step.release
    restarted.heartbeat("erp", at(15), "hb")
    step = restarted.step()
    assert letters(step) == [("q10.again", "UnknownReference")]
    assert "q10.again" in step.release
    # after the verdict: another restart and redelivery never dead-letter it again
    again: Projector[str] = Projector.load(kv)
    history[1].send(again, ".third")
    step = again.step()
    assert step.dead_letters == [] and "q10.third" in step.release
    assert again.awaiting_verdicts == 0
    # a replay of everything (heartbeat included) into a fresh projector, same state
    replay: Projector[str] = Projector.load(kv)
    for tx in history:
        tx.send(replay, ".replay")
    replay.heartbeat("erp", at(15), "hb.replay")
    step = replay.step()
    assert step.dead_letters == [] and step.applied == 0
    assert "q10.replay" in step.release and replay.awaiting_verdicts == 0
    # the row is still held and counted once the item appears
    Tx("erp", 40, item()).send(replay)
    assert on_hand(replay.step()) == [Decimal("12.000")]


def test_a_duplicate_in_the_same_process_is_judged_once_and_both_released() -> None:
    """Snapshot reads have no transaction: a re-emitted one reaches the fold again."""
    p: Projector[str] = Projector()
    erp_catalogue(p)
    ((event, _),) = Tx("erp", 10, quant(10, "2")).events
    snapshot = replace(event, transaction_id=None, total_order=None, is_snapshot=True)
    p.change(snapshot, "read1")
    assert "read1" not in p.step().release
    p.change(snapshot, "read2")
    step = p.step()
    assert step.stale == 1 and "read2" not in step.release
    assert p.awaiting_verdicts == 1
    p.heartbeat("erp", at(20), "hb")
    step = p.step()
    assert letters(step) == [("read1", "UnknownReference")]
    assert {"read1", "read2"} <= set(step.release)


# ------------------------------------------------------------------ unchanged


def test_negative_stock_is_still_dead_lettered_at_once() -> None:
    p: Projector[str] = Projector()
    Tx("erp", 0, item(), warehouse()).send(p)
    p.step()
    Tx("erp", 10, quant(14, "-3", handle="neg")).send(p)
    step = p.step()
    assert on_hand(step) == [Decimal("0.000")]
    assert [(h, type(e)) for h, e in step.dead_letters] == [("neg", NegativeStock)]
    assert "neg" in step.release and p.awaiting_verdicts == 0


def test_known_references_are_never_held() -> None:
    p: Projector[str] = Projector()
    Tx("erp", 0, item(), warehouse()).send(p)
    Tx("crm", 0, product("A")).send(p)
    Tx("erp", 10, quant(10, "5")).send(p)
    Tx("crm", 10, crm_order(), crm_line()).send(p)
    step = p.step()
    assert {"q10", "o5.confirmed", "l6"} <= set(step.release)
    assert p.awaiting_verdicts == 0 and step.dead_letters == []


def test_a_reference_in_the_same_batch_as_a_later_transaction_means_no_dead_letter() -> None:
    """A fresh start reads Debezium's snapshot (every row at the snapshot's time, the
    warehouse table last) and the live changes after it in one batch, in whatever order
    the partitions were fetched: a quant, then a live transaction past the grace, then
    the warehouse row committed before the quant's grace ran out. The verdicts follow
    commit time, not the order the batch happened to hold the transactions in."""
    p: Projector[str] = Projector()
    Tx("erp", 0, item()).send(p)
    p.step()
    Tx("erp", 10, quant(10, "12")).send(p)
    Tx("erp", 10 + GRACE + 5, quant(11, "1", item_id=ITEM)).send(p)  # live, later
    Tx("erp", 10, warehouse()).send(p)  # committed with the quant, fetched last
    step = p.step()
    assert step.dead_letters == []
    assert on_hand(step) == [Decimal("13.000")]
    assert p.awaiting_verdicts == 0


# ------------------------------------------------------------------ snapshot reads


def snapshot_read(p: Projector[str], seconds: float, row: Row) -> None:
    """A row read by Debezium's initial snapshot ``seconds`` in (delivered alone)."""
    table, values, handle = row
    event = change_event("erp", table, op=ChangeOp.READ, after=values, commit_lsn=0,
                         lsn=500, transaction_id=None, order=None, commit_time=at(seconds),
                         snapshot=True)
    p.change(event, handle)


def test_a_slow_snapshot_reading_stock_before_warehouses_gives_no_false_verdict() -> None:
    """Debezium snapshots erp.stock_quant before erp.warehouse; under load more than the
    grace passes between the two (read time), and the warehouse topic may be read to
    its (then empty) end. The quant is held, not dead-lettered: snapshot read times do
    not make a verdict due, streaming does."""
    p: Projector[str] = Projector()
    snapshot_read(p, 0, item())
    snapshot_read(p, 1, quant(10, "12"))
    assert p.step().dead_letters == []
    snapshot_read(p, 1 + 3 * GRACE, quant(11, "2"))  # the snapshot goes on, slowly
    step = p.step()  # every topic read to its end: caught up
    assert step.dead_letters == [] and "q10" not in step.release
    snapshot_read(p, 2 + 3 * GRACE, warehouse())  # read last
    step = p.step()
    assert step.dead_letters == [] and on_hand(step) == [Decimal("14.000")]
    p.heartbeat("erp", at(10 + 3 * GRACE), "hb")  # streaming: verdicts are due now
    step = p.step()
    assert step.dead_letters == [] and {"q10", "q11", "hb"} <= set(step.release)
    assert p.awaiting_verdicts == 0


def test_a_snapshot_row_really_missing_its_reference_is_judged_once_streaming_passes_it(
) -> None:
    p: Projector[str] = Projector()
    snapshot_read(p, 0, warehouse())
    snapshot_read(p, 1, quant(10, "12"))  # item 1 never comes
    snapshot_read(p, 1 + 3 * GRACE, warehouse(8, "X"))
    assert p.step().dead_letters == []
    Tx("erp", 1 + GRACE, quant(12, "1", item_id=ITEM)).send(p)  # a streamed commit
    step = p.step()
    assert letters(step) == [("q10", "UnknownReference")]
    assert unknown_reasons(step)[0].startswith("erp.stock_quant 10: unknown item 1")

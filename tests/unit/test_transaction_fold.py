"""The kit's base fold applies a source transaction whole or rejects it whole.

Invariants (DESIGN.md 3 and 4): nothing of a transaction is applied before all of it
is there; one bad row rejects the whole transaction — every record of it goes to the
dead letters (the bad row with its own reason, the others naming it), nothing of it is
applied, it is reported — and the fold goes on with the next; every record is released
exactly once, only in the step that decided it; a step of many transactions gives the
event loop back between any two of them. A TRUNCATE gets its table's declared answer
(needs_resnapshot: its record dead-lettered with that cause, listed for the counter,
the rest of its transaction applied; one dead letter per record even when a bad row
rejects the rest), and a fold without an answer for a table, or declaring one it
cannot give (clear), fails when built. Pure: a toy fold, no Kafka.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord

from services.shared.changes import ChangeEvent, ChangeOp
from services.shared.cooperative import Slicer, run_to_end
from services.shared.errors import Cause, SchemaViolation
from services.shared.holding import GiveUpCause
from services.shared.stateful import Handle
from services.shared.transaction_fold import Applied, TransactionFold
from services.shared.transactions import CompleteTransaction
from services.shared.truncates import TruncateAnswer, TruncateAnswers
from tests.builders import change_event
from tests.unit.test_transactions import end

COMMIT = datetime(2026, 3, 1, tzinfo=UTC)
TRUNCATES = TruncateAnswers("toy", {"crm.payment": TruncateAnswer.NEEDS_RESNAPSHOT})


class Totals(TransactionFold[tuple[int, Decimal], list[str]]):
    """A toy fold: the total amount per account (the outcome: accounts changed)."""

    def __init__(self) -> None:
        super().__init__(("crm.payment",), truncates=TRUNCATES)
        self.totals: dict[int, Decimal] = {}
        self.seen: list[tuple[str, datetime]] = []

    def parse(self, event: ChangeEvent) -> tuple[int, Decimal]:
        row = event.after or {}
        amount = Decimal(str(row["amount"]))
        if not amount.is_finite():
            raise SchemaViolation(f"crm.payment amount {row['amount']} is not a number")
        return int(row["account"]), amount

    def apply(
        self, records: Sequence[tuple[int, Decimal]], transaction: CompleteTransaction,
        outcome: list[str],
    ) -> None:
        for account, amount in records:
            self.totals[account] = self.totals.get(account, Decimal(0)) + amount
            outcome.append(f"account {account}")

    def new_outcome(self) -> list[str]:
        return []

    def observe(self, database: str, at: datetime) -> None:
        self.seen.append((database, at))


def record(topic: str, offset: int, timestamp: int = 0) -> Handle:
    return ConsumerRecord(topic, 0, offset, timestamp, 0, b"k", b"v", None, 1, 1, ())


def payment(xid: str, order: int, account: int, amount: Any, offset: int) -> ChangeEvent:
    return change_event("crm", "payment", after={"id": offset, "account": account,
                                                 "amount": amount},
                        commit_lsn=1_000 * int(xid), lsn=1_000 * int(xid) + order,
                        transaction_id=xid, order=order, commit_time=COMMIT)


def feed(fold: Totals, xid: str, amounts: list[Any], start: int) -> list[Handle]:
    handles = []
    for n, amount in enumerate(amounts):
        handle = record("cdc.crm.payment", start + n)
        fold.change(payment(xid, n + 1, 7, amount, start + n), handle)
        handles.append(handle)
    return handles


def step(fold: Totals) -> Applied[list[str]]:
    return run_to_end(fold.steps(("crm",)))


def test_a_transaction_is_applied_only_once_it_is_whole() -> None:
    fold = Totals()
    handles = feed(fold, "1", ["10.00", "2.50"], 0)
    first = step(fold)
    assert fold.totals == {} and first.release == [] and first.outcome == []
    marker = record("cdc.crm.transaction", 0)
    fold.marker("crm", end("1", {"crm.payment": 2}), marker)
    second = step(fold)
    assert fold.totals == {7: Decimal("12.50")}
    assert second.outcome == ["account 7", "account 7"]
    assert sorted(second.release, key=lambda r: (r.topic, r.offset)) == sorted(
        [*handles, marker], key=lambda r: (r.topic, r.offset)
    )
    assert second.commit_times == [COMMIT] and second.applied == 2


def test_a_transactions_time_in_kafka_is_when_its_last_record_was_appended() -> None:
    """The service's own share of the latency starts when the whole transaction is in
    Kafka: its latest record's timestamp (the END marker here), not its first."""
    fold = Totals()
    for n, at in enumerate((1_000, 1_250)):
        fold.change(payment("1", n + 1, 7, "1.00", n), record("cdc.crm.payment", n, at))
    fold.marker("crm", end("1", {"crm.payment": 2}), record("cdc.crm.transaction", 0, 1_400))
    assert step(fold).appended_times == [1.4]


def test_one_bad_row_rejects_the_whole_transaction_and_the_fold_goes_on() -> None:
    fold = Totals()
    bad = feed(fold, "2", ["5.00", "NaN", "1.00"], 10)
    fold.marker("crm", end("2", {"crm.payment": 3}), record("cdc.crm.transaction", 1))
    good = feed(fold, "3", ["4.00"], 20)
    fold.marker("crm", end("3", {"crm.payment": 1}), record("cdc.crm.transaction", 2))
    out = step(fold)
    assert fold.totals == {7: Decimal("4.00")}  # nothing of transaction 2
    dead = {(h.topic, h.offset): e.reason for h, e in out.dead_letters}
    assert set(dead) == {*((h.topic, h.offset) for h in bad), ("cdc.crm.transaction", 1)}
    assert "is not a number" in dead[("cdc.crm.payment", 11)]
    assert "rejected whole" in dead[("cdc.crm.payment", 10)]
    assert [r.cause for r in out.rejected] == [GiveUpCause.BAD_ROW]
    assert {(h.topic, h.offset) for h in out.release} == {
        *dead, *((h.topic, h.offset) for h in good), ("cdc.crm.transaction", 2)
    }


def truncate(xid: str, order: int) -> ChangeEvent:
    return change_event("crm", "payment", op=ChangeOp.TRUNCATE, commit_lsn=1_000 * int(xid),
                        lsn=1_000 * int(xid) + order, transaction_id=xid, order=order,
                        commit_time=COMMIT)


def test_a_truncate_is_dead_lettered_for_a_resnapshot_and_the_rest_is_applied() -> None:
    fold = Totals()
    before, cut, after = (record("cdc.crm.payment", n) for n in (30, 31, 32))
    fold.change(payment("4", 1, 7, "3.00", 30), before)
    fold.change(truncate("4", 2), cut)
    fold.change(payment("4", 3, 7, "2.00", 32), after)
    marker = record("cdc.crm.transaction", 4)
    fold.marker("crm", end("4", {"crm.payment": 3}), marker)
    out = step(fold)
    assert fold.totals == {7: Decimal("5.00")} and out.applied == 2
    assert [(h.offset, e.cause) for h, e in out.dead_letters] == [(31, Cause.NEEDS_RESNAPSHOT)]
    assert "TRUNCATE of crm.payment" in out.dead_letters[0][1].reason
    assert [(c.data_collection, a) for c, a in out.truncates] == [
        ("crm.payment", TruncateAnswer.NEEDS_RESNAPSHOT)]
    assert out.rejected == []
    assert {(h.topic, h.offset) for h in out.release} == {
        ("cdc.crm.payment", 30), ("cdc.crm.payment", 31), ("cdc.crm.payment", 32),
        ("cdc.crm.transaction", 4)}


def test_a_transaction_of_only_a_truncate_applies_nothing_and_moves_source_time() -> None:
    fold = Totals()
    cut = record("cdc.crm.payment", 40)
    fold.change(truncate("5", 1), cut)
    fold.marker("crm", end("5", {"crm.payment": 1}), record("cdc.crm.transaction", 5))
    out = step(fold)
    assert fold.totals == {} and out.applied == 0 and out.commit_times == []
    assert [h.offset for h, _ in out.dead_letters] == [40] and len(out.truncates) == 1
    assert fold.seen == [("crm", COMMIT)]


def test_a_truncate_rejected_with_a_bad_row_keeps_its_own_dead_letter_only() -> None:
    fold = Totals()
    cut, bad = record("cdc.crm.payment", 50), record("cdc.crm.payment", 51)
    fold.change(truncate("6", 1), cut)
    fold.change(payment("6", 2, 7, "NaN", 51), bad)
    marker = record("cdc.crm.transaction", 6)
    fold.marker("crm", end("6", {"crm.payment": 2}), marker)
    out = step(fold)
    assert fold.totals == {}
    causes = [((h.topic, h.offset), e.cause) for h, e in out.dead_letters]
    assert sorted(causes) == sorted([(("cdc.crm.payment", 50), Cause.NEEDS_RESNAPSHOT),
                                     (("cdc.crm.payment", 51), Cause.BAD_INPUT),
                                     (("cdc.crm.transaction", 6), Cause.BAD_INPUT)])
    assert len(out.truncates) == 1 and [r.cause for r in out.rejected] == [GiveUpCause.BAD_ROW]


def test_a_fold_without_an_answer_or_declaring_clear_fails_when_built() -> None:
    with pytest.raises(ValueError, match=r"no declared TRUNCATE answer for crm\.payment"):
        TransactionFold(("crm.payment",), truncates=TruncateAnswers("toy", {}))
    clear = TruncateAnswers("toy", {"crm.payment": TruncateAnswer.CLEAR})
    with pytest.raises(ValueError, match=r"cannot clear crm\.payment"):
        TransactionFold(("crm.payment",), truncates=clear)


def test_a_heartbeat_moves_source_time_and_is_released() -> None:
    fold = Totals()
    beat = record("heartbeat.cdc.crm", 0)
    fold.heartbeat("crm", COMMIT, beat)
    out = step(fold)
    assert fold.seen == [("crm", COMMIT)]
    assert out.release == [beat] and out.dead_letters == []


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class SlowTotals(Totals):
    """Each transaction "costs" 30 ms of the slicer's (fake) clock: more than a slice."""

    def __init__(self, clock: _Clock) -> None:
        super().__init__()
        self.clock = clock

    def apply(
        self, records: Sequence[tuple[int, Decimal]], transaction: CompleteTransaction,
        outcome: list[str],
    ) -> None:
        self.clock.now += 0.030
        super().apply(records, transaction, outcome)


async def test_a_step_gives_the_loop_back_between_any_two_transactions() -> None:
    """However many whole transactions a step folds, the runner's slicer gets a pause
    point after each one: another task runs between any two once a slice is used (a
    step of thousands of transactions held the loop for minutes: issue 11)."""
    clock = _Clock()
    fold = SlowTotals(clock)
    for n in range(1, 41):
        feed(fold, str(n), ["1.00"], 100 * n)
        fold.marker("crm", end(str(n), {"crm.payment": 1}), record("cdc.crm.transaction", n))
    slicer = Slicer(0.02, clock)
    progress: list[int] = []  # transactions folded each time the other task ran

    async def ticker() -> None:
        while True:
            progress.append(len(fold.seen))
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    try:
        out = await slicer.drive(fold.steps(("crm",)))
    finally:
        task.cancel()
    assert out.applied == 40 and fold.totals == {7: Decimal("40.00")}
    # 40 transactions of 30 ms, slices of 20 ms: a pause before each but the first
    assert slicer.pauses >= 39
    assert {n for n in progress if 0 < n < 40} == set(range(1, 40))

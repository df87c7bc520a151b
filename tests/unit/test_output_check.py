"""An output its schema refuses rejects the source transaction that made it, whole.

Invariants (services/shared/output_check.py): the transaction whose addition makes a
step's outputs unpublishable is found by probes on scratch folds over the durable state
(the savepoint), which leave the live fold's overlay and the durable state as they
were; once refused, the transaction is handed on given up whole when it completes
again (every record a dead letter with the reason, nothing of it applied, cause
``unpublishable``) while the step's other transactions fold as usual; an output no
transaction of the step made is not blamed on one. Pure: a toy fold, no Kafka.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from aiokafka.structs import ConsumerRecord

from services.shared.avro import AvroCodec, SchemaCatalogue
from services.shared.changes import ChangeEvent
from services.shared.cooperative import run_to_end
from services.shared.errors import BadInput, SchemaViolation
from services.shared.holding import GiveUpCause
from services.shared.output_check import (
    Drained,
    OutputRefused,
    Refusals,
    Unattributable,
    first_refused,
    isolate,
    publishable,
    refused_reason,
    transaction_ref,
)
from services.shared.state.store import KeyValue, MemoryState, Overlay
from services.shared.stateful import Handle
from services.shared.transaction_fold import Applied, TransactionFold
from services.shared.transactions import CompleteTransaction
from tests.builders import change_event
from tests.unit.test_transaction_fold import TRUNCATES
from tests.unit.test_transactions import end

COMMIT = datetime(2026, 3, 1, tzinfo=UTC)
#: the toy output's "schema": a total above this cannot be published
LIMIT = Decimal(100)


class Totals(TransactionFold[tuple[int, Decimal], set[int]]):
    """A toy fold: the total per account, in the state (the outcome: accounts moved)."""

    def __init__(self, kv: KeyValue) -> None:
        super().__init__(("crm.payment",), truncates=TRUNCATES)
        self.kv = kv

    def total(self, account: int) -> Decimal:
        raw = self.kv.get(str(account).encode())
        return Decimal(0) if raw is None else Decimal(raw.decode())

    def parse(self, event: ChangeEvent) -> tuple[int, Decimal]:
        row = event.after or {}
        return int(row["account"]), Decimal(str(row["amount"]))

    def apply(self, records: Sequence[tuple[int, Decimal]], transaction: CompleteTransaction,
              outcome: set[int]) -> None:
        for account, amount in records:
            self.kv.put(str(account).encode(), str(self.total(account) + amount).encode())
            outcome.add(account)

    def new_outcome(self) -> set[int]:
        return set()


def check(step: Applied[set[int]], fold: Totals) -> BadInput | None:
    for account in sorted(step.outcome):
        if fold.total(account) > LIMIT:
            return SchemaViolation(f"total of {account}: {fold.total(account)} > {LIMIT}")
    return None


def record(topic: str, offset: int) -> Handle:
    return ConsumerRecord(topic, 0, offset, 0, 0, b"k", b"v", None, 1, 1, ())


def pay(fold: Totals, xid: str, account: int, amounts: list[str], start: int) -> list[Handle]:
    handles = []
    for n, amount in enumerate(amounts):
        handle = record("cdc.crm.payment", start + n)
        fold.change(change_event(
            "crm", "payment", after={"id": start + n, "account": account, "amount": amount},
            commit_lsn=1_000 * int(xid), lsn=1_000 * int(xid) + n + 1, transaction_id=xid,
            order=n + 1, commit_time=COMMIT), handle)
        handles.append(handle)
    marker = record("cdc.crm.transaction", int(xid))
    fold.marker("crm", end(xid, {"crm.payment": len(amounts)}), marker)
    return [*handles, marker]


def feed(fold: Totals) -> dict[str, list[Handle]]:
    """Account 7 reaches 90, then transaction 3 takes it to 130 (refused); account 8's
    transactions pass."""
    return {"1": pay(fold, "1", 7, ["50", "40"], 0), "2": pay(fold, "2", 8, ["5"], 10),
            "3": pay(fold, "3", 7, ["30", "10"], 20), "4": pay(fold, "4", 8, ["6"], 30),
            "5": pay(fold, "5", 7, ["1"], 40)}


def probe_over(state: MemoryState) -> Any:
    async def probe(wholes: Sequence[Drained]) -> BadInput | None:
        scratch = Totals(Overlay(state))  # the savepoint: the durable state
        scratch.held.replay(wholes)
        return check(run_to_end(scratch.steps(("crm",))), scratch)
    return probe


def test_the_transaction_that_makes_an_output_unpublishable_is_found() -> None:
    state = MemoryState()
    state.put(b"8", b"1")
    live = Overlay(state)
    fold = Totals(live)
    feed(fold)
    step = run_to_end(fold.steps(("crm",)))
    assert check(step, fold) is not None
    written = dict(live.pending)
    culprits = asyncio.run(isolate(fold.held.drained, probe_over(state)))
    assert [whole.transaction.id for (_, whole), _ in culprits] == ["3"]
    assert "130 > 100" in culprits[0][1].reason
    # the probes left the live fold's overlay and the durable state as they were
    assert live.pending == written and state.data == {b"8": b"1"}


def test_each_culprit_is_found_when_several_are() -> None:
    state = MemoryState()
    fold = Totals(Overlay(state))
    pay(fold, "1", 7, ["101"], 0)
    pay(fold, "2", 8, ["3"], 10)
    pay(fold, "3", 9, ["200"], 20)
    pay(fold, "4", 9, ["4"], 30)
    run_to_end(fold.steps(("crm",)))
    culprits = asyncio.run(isolate(fold.held.drained, probe_over(state)))
    assert [whole.transaction.id for (_, whole), _ in culprits] == ["1", "3"]


def test_a_refused_transaction_is_given_up_whole_and_the_others_fold() -> None:
    state = MemoryState()
    refusals = Refusals()
    first = Totals(Overlay(state))
    feed(first)
    run_to_end(first.steps(("crm",)))
    for (database, whole), error in asyncio.run(isolate(first.held.drained,
                                                         probe_over(state))):
        refusals.refuse(transaction_ref(database, whole.transaction),
                        refused_reason(database, whole.transaction, error))
    # the redo: a fold reloaded from the durable state, the records delivered again
    redo = Totals(Overlay(state))
    redo.held.refusals = refusals
    handles = feed(redo)
    step = run_to_end(redo.steps(("crm",)))
    assert check(step, redo) is None
    assert redo.total(7) == Decimal(91) and redo.total(8) == Decimal(11)
    dead = {(h.topic, h.offset): e for h, e in step.dead_letters}
    assert set(dead) == {(h.topic, h.offset) for h in handles["3"]}  # every record of it
    assert all(isinstance(e, OutputRefused) and "rejected whole" in e.reason
               and "130 > 100" in e.reason for e in dead.values())
    assert [(g.transaction_id, g.cause) for g in step.rejected] == [
        ("3", GiveUpCause.UNPUBLISHABLE)]
    released = {(h.topic, h.offset) for h in step.release}
    assert released == {(h.topic, h.offset) for hs in handles.values() for h in hs}
    assert len(refusals) == 0  # used once


def test_an_output_no_transaction_made_is_not_blamed_on_one() -> None:
    state = MemoryState()
    state.put(b"7", b"500")  # stored before the check existed
    fold = Totals(Overlay(state))
    pay(fold, "1", 8, ["1"], 0)
    run_to_end(fold.steps(("crm",)))

    async def probe(wholes: Sequence[Drained]) -> BadInput | None:
        return SchemaViolation("account 7 cannot be published")  # whatever is folded

    try:
        asyncio.run(isolate(fold.held.drained, probe))
    except Unattributable as error:
        assert "account 7" in str(error)
    else:
        raise AssertionError("blamed on a transaction")


def test_refusals_are_bounded() -> None:
    refusals = Refusals(limit=2)
    for n in range(3):
        refusals.refuse(("crm", str(n)), "no")
    assert len(refusals) == 2


def test_publishable_keeps_what_its_schema_takes() -> None:
    codec = AvroCodec(SchemaCatalogue.load())
    bad = {"risk_id": "x"}  # none of the fields a shortage has
    assert first_refused(codec, [("shortage", bad)]) is not None
    kept, first = publishable(codec, "shortage", [bad], dict)
    assert kept == [] and isinstance(first, SchemaViolation)

"""receivables' open-discrepancy gauge (services/receivables/outputs.py, issue 11).

Invariant: ``ambidex_receivables_open_discrepancies{kind}`` equals the number of open
discrepancies of that kind in the state (its ``O<identity>`` entries) after every step:
from the count at load, moved by what each step opened and closed in the state, whatever
the step publishes. The replay that showed it negative folded invoices before their
installments and contracts (separate topics) while the CRM was not read to its end:
``unknown_*`` alerts are withheld from publishing then, and handed over as raised once
it is; neither is a change of the state. Pure: no Kafka, no database.
"""

from __future__ import annotations

import asyncio
import copy
from collections import Counter
from datetime import UTC, date, datetime
from types import SimpleNamespace
from typing import cast

from prometheus_client import CollectorRegistry

from services.receivables import emit
from services.receivables.effects import Outcome
from services.receivables.outputs import ReceivablesMetrics
from services.receivables.rules import Kind
from services.receivables.source_fold import ReceivablesFold
from services.shared.runtime import Service
from tests.unit.receivables_support import MemoryKV, contract, installment, invoice
from tests.unit.test_receivables_source_fold import step, transaction

DUE = date(2026, 6, 1)
NOW = datetime(2026, 6, 10, 12, tzinfo=UTC)


def _gauges(registry: CollectorRegistry) -> dict[str, int]:
    """The gauge's value per kind (kinds never set left out)."""
    values = {k.value: registry.get_sample_value(
        "ambidex_receivables_open_discrepancies", {"service": "receivables", "kind": k.value})
        for k in Kind}
    return {k: int(v) for k, v in values.items() if v is not None}


def _in_state(fold: ReceivablesFold) -> Counter[str]:
    return Counter(d.kind.value for d in fold.core.open_discrepancies().values())


class Worker:
    """The service's fold and its metrics update path, step by step; ``table``: the
    identities ``crm_integration.receivable_discrepancy`` shows open (kept over a
    restart), ``events``: the alert statuses published per identity."""

    def __init__(self, kv: MemoryKV, table: set[str] | None = None,
                 events: dict[str, list[str]] | None = None) -> None:
        self.fold = ReceivablesFold(kv)
        self.registry = CollectorRegistry()
        service = SimpleNamespace(registry=self.registry, name="receivables")
        self.metrics = ReceivablesMetrics(cast(Service, service))
        self.metrics.count_open(self.fold)  # as Shell.start
        self.table = set() if table is None else table
        self.events: dict[str, list[str]] = {} if events is None else events
        self.check()

    def step(self, *caught_up: str) -> None:
        out = step(self.fold, caught_up)
        self.publish(out.outcome)
        self.metrics.stepped(out, self.fold)  # as Outputs.apply
        asyncio.run(self.metrics.committed(self.fold))  # the runner's after_commit
        self.check()
        if "crm" in caught_up:
            assert self.table == set(self.fold.core.open_discrepancies())

    def publish(self, outcome: Outcome) -> None:
        """As Outputs._writes: the alerts against what the table shows, then the table."""
        shown = self.table & outcome.discrepancies.keys()
        for key, record in emit.alerts(outcome, shown, NOW):
            self.events.setdefault(key.decode(), []).append(record["status"])
        for identity, (_, after) in outcome.discrepancies.items():
            if after is None:
                self.table.discard(identity)
            else:
                self.table.add(identity)

    def check(self) -> None:
        gauges = _gauges(self.registry)
        state = _in_state(self.fold)
        assert {k: v for k, v in gauges.items() if v} == dict(state), (gauges, state)
        assert all(v >= 0 for v in gauges.values()), gauges
        for identity, statuses in self.events.items():  # raised once a cause, then resolved
            assert statuses == ["raised", "resolved"] * (len(statuses) // 2) + (
                ["raised"] if len(statuses) % 2 else []), (identity, statuses)


def test_invoices_before_their_contract_and_installment_while_the_crm_is_behind() -> None:
    """The bench's interleaving: an invoice folded before its installment and contract
    (CRM not caught up), then they arrive; then one that never does, handed over."""
    kv = MemoryKV()
    w = Worker(kv)
    transaction(w.fold, "erp", [("invoice", invoice(20, 5, 1, "100.00", due=DUE))])
    transaction(w.fold, "erp", [("invoice", invoice(21, 6, 1, "100.00", due=DUE))])
    w.step("erp")  # unknown_contract 5, 6 and unknown_installment (5,1), (6,1), withheld
    transaction(w.fold, "crm", [("contract", contract(5, total="100.00"))])
    w.step("erp")  # contract 5 came: unknown_contract 5 resolved
    transaction(w.fold, "crm", [("installment", installment(11, 5, 1, DUE))])
    w.step("erp")  # and its installment: unknown_installment (5,1) resolved
    w.step("crm", "erp")  # caught up: 6 and (6,1) handed over as raised
    w.step("crm", "erp")
    # contract 5 and installment (5,1) came before the CRM was caught up: never raised
    assert {i: e for i, e in w.events.items() if i.startswith("unknown")} == {
        "unknown_contract/contract=6": ["raised"],
        "unknown_installment/contract=6/seq=1": ["raised"]}


def test_raised_and_resolved_within_one_step_while_withheld() -> None:
    kv = MemoryKV()
    w = Worker(kv)
    transaction(w.fold, "erp", [("invoice", invoice(20, 5, 1, "100.00", due=DUE))])
    transaction(w.fold, "crm", [("contract", contract(5, total="100.00")),
                                ("installment", installment(11, 5, 1, DUE))])
    w.step("erp")
    w.step("crm", "erp")


def test_the_crm_falling_behind_again_and_a_restart_do_not_count_twice() -> None:
    kv = MemoryKV()
    w = Worker(kv)
    transaction(w.fold, "erp", [("invoice", invoice(20, 5, 1, "100.00", due=DUE))])
    w.step("crm", "erp")  # raised and published at once
    transaction(w.fold, "erp", [("invoice", invoice(21, 6, 1, "100.00", due=DUE))])
    w.step("erp")  # behind again: 6 withheld
    w.step("crm", "erp")  # every open one handed over again (5 was already counted)
    assert w.events["unknown_contract/contract=5"] == ["raised"]  # not raised again
    restarted = Worker(kv, w.table, w.events)  # the gauge counted from the state at load
    restarted.step("erp")
    restarted.step("crm", "erp")  # handed over once more after the restart
    transaction(restarted.fold, "crm", [("contract", contract(6, total="100.00"))])
    restarted.step("crm", "erp")
    assert restarted.events["unknown_contract/contract=5"] == ["raised"]
    assert restarted.events["unknown_contract/contract=6"] == ["raised", "resolved"]


def test_a_step_whose_commit_failed_is_not_counted_when_redone() -> None:
    """The runner redoes a batch whose state was not made durable (a reloaded fold over
    the durable state): the gauge moves once, with the commit that succeeds."""
    kv = MemoryKV()
    w = Worker(kv)
    scratch = copy.deepcopy(kv)  # what the failed attempt wrote is not durable
    failed = ReceivablesFold(scratch)
    transaction(failed, "erp", [("invoice", invoice(20, 5, 1, "100.00", due=DUE))])
    w.metrics.stepped(step(failed, ("crm", "erp")), failed)  # effects done, commit failed
    transaction(w.fold, "erp", [("invoice", invoice(20, 5, 1, "100.00", due=DUE))])
    w.step("crm", "erp")  # redone
    assert _gauges(w.registry)["unknown_contract"] == 1

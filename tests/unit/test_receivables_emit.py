"""receivables: what it publishes conforms to its Avro schemas
(services.receivables.emit against schemas/published/receivable_*).

Invariants protected here: every position and discrepancy the fold produces encodes
with the published schema and decodes back to the same figures (money exact, as
Decimal with its currency); tombstones for contracts that are gone; a netted outcome
publishes resolved and raised events only, never a change of an open cause. The
effects of a step go in the kit's order (effects_of_step, as every stateful service):
dead letters and truncates counted, then publish and write back, then the lag.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from services.receivables import emit
from services.receivables.fold import Receivables
from services.receivables.records import Table
from services.shared.avro import AvroCodec, SchemaCatalogue
from services.shared.position import SourcePosition
from tests.unit.receivables_support import MemoryKV, contract, installment, invoice, payment

CODEC = AvroCodec(SchemaCatalogue.load())
NOW = datetime(2026, 5, 1, 12, tzinfo=UTC)


def test_positions_and_discrepancies_round_trip_through_the_schemas() -> None:
    fold = Receivables(MemoryKV())
    fold.advance(date(2026, 1, 1))
    lsn = iter(range(100, 10_000, 10))

    def put(table: Table, row: dict[str, Any]) -> None:
        fold.apply(table, row["id"], SourcePosition(next(lsn), 0), row)

    put(Table.CONTRACT, contract(1, total="120000.00"))
    put(Table.INSTALLMENT, installment(1, 1, 1, date(2026, 2, 1), "40000.00"))
    put(Table.INVOICE, invoice(1, 1, 1, "40000.01"))
    put(Table.PAYMENT, payment(1, 1, "39999.99"))
    out = fold.advance(date(2026, 3, 1) + timedelta(days=10))
    put(Table.PAYMENT, payment(2, None, "5.00"))
    (position,) = fold.contract_positions().values()
    record = emit.position_record(position, fold.as_of)
    decoded = CODEC.decode(CODEC.encode(emit.POSITION_SCHEMA, record)).record
    assert decoded == record
    assert decoded["outstanding"] == Decimal("0.01") and decoded["currency"] == "EUR"
    assert decoded["overdue_31_60"] == Decimal("0.01")  # 38 days past due
    assert out.contracts  # the as-of date moved the position
    open_ = list(fold.open_discrepancies().values())
    assert len(open_) >= 3
    for d in open_:
        for status in ("raised", "resolved"):
            record = emit.discrepancy_record(d, status, NOW)
            decoded = CODEC.decode(CODEC.encode(emit.DISCREPANCY_SCHEMA, record)).record
            assert decoded == record


def test_a_contract_that_is_gone_is_a_tombstone_and_open_changes_are_not_alerts() -> None:
    fold = Receivables(MemoryKV())
    fold.apply(Table.CONTRACT, 1, SourcePosition(100, 0), contract(1, total="300.00"))
    out = fold.apply(Table.INSTALLMENT, 1, SourcePosition(110, 0),
                     installment(1, 1, 1, date(2026, 2, 1), "100.00"))
    assert out.changed and not out.raised  # the total mismatch's figures moved
    shown = {"installments_total_mismatch/contract=1"}
    assert emit.alerts(out, shown, NOW) == []
    out = fold.apply(Table.CONTRACT, 1, SourcePosition(120, 0), None)
    assert emit.positions(out, fold.as_of) == [(b"1", None)]
    assert [(k, r["status"]) for k, r in emit.alerts(out, shown, NOW)] == [
        (b"installments_total_mismatch/contract=1", "resolved")]


def test_a_position_its_schema_refuses_is_found_before_any_effect_and_can_be_left_out() -> None:
    """The output check (services/shared/output_check.py): a contract position whose
    contracted amount exceeds decimal(18, 2) is refused in the fold step; pruned, it is
    neither published nor written, and the other positions stay."""
    from dataclasses import replace
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry

    from services.receivables.effects import Outcome
    from services.receivables.outputs import Outputs, ReceivablesMetrics
    from services.shared.transaction_fold import Applied

    fold = Receivables(MemoryKV())
    fold.advance(date(2026, 1, 1))
    fold.apply(Table.CONTRACT, 1, SourcePosition(100, 0), contract(1, total="300.00"))
    (good,) = fold.contract_positions().values()
    bad = replace(good, contract_id=2, contracted=Decimal("1000000000000000000.00"))
    service = SimpleNamespace(codec=CODEC, registry=CollectorRegistry(), name="receivables")
    outputs = Outputs(service, ReceivablesMetrics(service))  # type: ignore[arg-type]
    shell = SimpleNamespace(core=fold)
    step = Applied(Outcome(contracts={1: good, 2: bad}))
    refused = outputs.check(step, shell)  # type: ignore[arg-type]
    assert refused is not None and "contracted" in refused.reason
    assert set(step.outcome.contracts) == {1, 2}  # checking changes nothing
    assert outputs.check(Applied(Outcome(contracts={1: good, 3: None})),
                         shell) is None  # type: ignore[arg-type]
    assert outputs.check(step, shell, prune=True) is not None  # type: ignore[arg-type]
    assert step.outcome.contracts == {1: good}


async def test_a_steps_effects_go_in_the_kits_order() -> None:
    from types import SimpleNamespace

    from aiokafka.structs import ConsumerRecord
    from prometheus_client import CollectorRegistry

    from services.receivables.effects import Outcome
    from services.receivables.outputs import Outputs, ReceivablesMetrics
    from services.shared.changes import ChangeOp
    from services.shared.errors import BadInput
    from services.shared.transaction_fold import Applied
    from services.shared.truncates import TruncateAnswer
    from tests.builders import change_event

    done: list[str] = []

    class Intake:
        async def reject(self, handle: Any, error: BadInput) -> None:
            done.append(f"dead letter {error.cause.value}")

    platform = SimpleNamespace(
        observe_end_to_end_lags=lambda *_: done.append("lag"),
        observe_service_lags=lambda *_: done.append("service lag"),
        event=lambda *_: done.append("applied"),
    )
    service = SimpleNamespace(codec=CODEC, registry=CollectorRegistry(), name="receivables",
                              metrics=platform, require_intake=Intake)
    outputs = Outputs(service, ReceivablesMetrics(service))  # type: ignore[arg-type]

    async def writes(out: Outcome, as_of: date) -> None:
        done.append("publish and write back")

    outputs._writes = writes  # type: ignore[method-assign]
    core = Receivables(MemoryKV())
    core.advance(date(2026, 1, 1))
    core.apply(Table.CONTRACT, 1, SourcePosition(100, 0), contract(1, total="300.00"))
    (position,) = core.contract_positions().values()
    fold = SimpleNamespace(core=core, held=SimpleNamespace(holders={}), awaiting_verdicts=0,
                           unjudged=0)
    cut = change_event("erp", "payment", op=ChangeOp.TRUNCATE, commit_lsn=5)
    record = ConsumerRecord("cdc.erp.payment", 0, 5, 0, 0, None, b"v", None, 0, 1, ())
    step = Applied(Outcome(contracts={1: position}), applied=1, commit_times=[NOW],
                   dead_letters=[(record, BadInput("bad"))],
                   truncates=[(cut, TruncateAnswer.NEEDS_RESNAPSHOT)])
    await outputs.apply(step, fold)  # type: ignore[arg-type]
    assert done == ["dead letter bad_input", "publish and write back", "lag", "service lag",
                    "applied"]
    counted = service.registry.get_sample_value(
        "ambidex_source_truncates_total",
        {"service": "receivables", "table": "erp.payment", "answer": "needs_resnapshot"})
    assert counted == 1

"""customer-value's in-process reader hook (services/customer_value/observer.py,
effects.py): the observer hears a step's figures and risks only after the checkpoint
commit (the runner's ``after_commit``), once per commit, never for a step whose commit
did not happen; a fold's full set (what ``loaded`` is given) is every account month
the state holds; and a fold reloaded by the runner keeps the write position the table
held at start (a write below it would be refused by the guard, i.e. lost).
Pure: the kit's fold in memory, the service built but not started."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from services.customer_value.effects import Effects
from services.customer_value.observer import Snapshot, Update
from services.customer_value.risks import STATUS_TOPIC
from services.shared.errors import BadInput
from services.shared.runtime import build_service
from services.shared.settings import load_settings
from services.shared.stateful import Handle
from tests.unit.test_customer_value_risks import status_record
from tests.unit.test_customer_value_service_fold import CODEC, Source


def source_time(n: int) -> datetime:
    return datetime(2026, 1 + n // 3, 1 + n, tzinfo=UTC)


class Heard:
    def __init__(self) -> None:
        self.updates: list[Update] = []

    def loaded(self, snapshot: Snapshot) -> None:
        raise AssertionError("not at start here")

    def committed(self, update: Update) -> None:
        self.updates.append(update)


class Intake:
    async def reject(self, handle: Handle, error: BadInput) -> None:
        raise AssertionError(f"no dead letter expected: {error}")


def test_the_observer_hears_a_step_once_after_its_commit() -> None:
    service = build_service(load_settings("customer-value", {}))
    service.intake = Intake()  # type: ignore[assignment]
    heard = Heard()
    effects = Effects(service, heard)
    source = Source()
    source.commit("crm", [("sales_order", {
        "id": 30, "number": "SO30", "account_id": 7, "state": "draft",
        "currency_code": "EUR", "amount_total": Decimal("10.00")})])
    source.step()
    value = CODEC.encode("fulfilment_status", status_record(30, "at_risk"))
    source.fold.published(source.record(STATUS_TOPIC, value, b"30"))
    step = source.step()

    async def run() -> None:
        await effects.apply(step, source.fold)
        assert heard.updates == []  # effects done, the commit not yet
        await effects.committed(source.fold)
        await effects.committed(source.fold)  # a second after_commit: nothing new

    asyncio.run(run())
    assert len(heard.updates) == 1
    update = heard.updates[0]
    assert update.values == {} and update.risks[7].counts == {"at_risk": 1}


def test_the_full_set_is_every_account_month_of_the_state() -> None:
    source = Source()
    rows: list[tuple[str, dict[str, Any]]] = [
        ("sales_order", {"id": n, "number": f"SO{n}", "account_id": n % 3, "state": "confirmed",
                         "currency_code": "EUR", "amount_total": Decimal(n),
                         "confirmed_at": source_time(n)}) for n in range(1, 10)]
    source.commit("crm", rows)
    out = source.step().outcome
    assert {v.key for v in source.fold.current()} == set(out.values) and len(out.values) == 9


def test_every_reload_of_the_fold_keeps_the_tables_write_position() -> None:
    from services.customer_value.app import Shell
    from services.shared.state.store import MemoryState

    shell = Shell(build_service(load_settings("customer-value", {})))
    shell._written = (datetime(2026, 5, 1, tzinfo=UTC), 40)
    fold = shell.load(MemoryState())  # as the runner reloads it after a failed batch
    assert fold.meta.revision == 40 and fold.meta.written_ms > 0

"""The kit's write-back shell (services/shared/write_back_shell.py) floors a service's
write position at the newest one its table holds, at start AND for every fold the
runner loads again (a reload after a failed batch, before the floor reached the durable
state, keeps it: production-status lost it before it used this shell). Both services
that write at their own position use it. Pure: a fake pool and runner."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from services.customer_value.app import Shell as ValueShell
from services.production_status.app import Shell as StatusShell
from services.shared.write_back_shell import WriteBackShell


class Fold:
    def __init__(self) -> None:
        self.floors: list[tuple[datetime, int]] = []

    def floor(self, at: datetime, revision: int) -> None:
        self.floors.append((at, revision))


class Pool:
    async def fetchrow(self, sql: str) -> tuple[int, int]:
        assert "fulfilment_status" in sql
        return (1_780_000_000_000, 42)


async def test_the_floor_read_at_start_is_kept_for_every_fold_loaded_again() -> None:
    shell: WriteBackShell[Any, Any] = WriteBackShell(
        SimpleNamespace(), "crm_integration.fulfilment_status", lambda kv: Fold())
    assert shell.load(None).floors == []  # type: ignore[arg-type]  # nothing read yet
    first = Fold()
    shell.runner = SimpleNamespace(fold=first)  # type: ignore[assignment]
    shell.pool = Pool()  # type: ignore[assignment]
    await shell._floor()
    at = datetime.fromtimestamp(1_780_000_000, UTC)
    assert first.floors == [(at, 42)]
    reloaded = shell.load(None)  # type: ignore[arg-type]
    assert reloaded.floors == [(at, 42)]


def test_both_services_writing_at_their_own_position_use_it() -> None:
    assert issubclass(StatusShell, WriteBackShell) and issubclass(ValueShell, WriteBackShell)

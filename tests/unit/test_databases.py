"""Invariant: every service opens its write-back pools one way — a database that is down
at start is waited for with readiness saying which one and why, the pool opens once it
answers, and from then on /readyz asks it live; the DSN's password never reaches
readiness."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydantic import SecretStr

from services.shared import databases
from services.shared.health import HealthState
from services.shared.resilience import RetryPolicy


async def _no_sleep(_: float) -> None:
    await asyncio.sleep(0)


@dataclass
class FakeSettings:
    crm_dsn: SecretStr = field(
        default_factory=lambda: SecretStr("postgresql://app:hunter2@crm:5432/crm"))
    erp_dsn: SecretStr = field(
        default_factory=lambda: SecretStr("postgresql://app:hunter2@erp:5432/erp"))


@dataclass
class FakeService:
    settings: FakeSettings = field(default_factory=FakeSettings)
    health: HealthState = field(default_factory=HealthState)
    retry: RetryPolicy = field(init=False)

    def __post_init__(self) -> None:
        self.retry = RetryPolicy(self.health, sleep=_no_sleep)


class FakePool:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    async def fetchval(self, query: str) -> int:
        return 1


async def test_a_database_down_at_start_is_waited_for_then_probed_live(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service = FakeService()
    attempts: list[str] = []
    seen_while_down: list[tuple[bool, str]] = []

    async def create_pool(dsn: str, **_: Any) -> FakePool:
        attempts.append(dsn)
        if len(attempts) < 3:
            if len(attempts) == 2:
                _, body = await service.health.readiness()
                check = body["checks"]["database:erp"]
                seen_while_down.append((check["ok"], check["detail"]))
            raise ConnectionRefusedError("connection refused")
        return FakePool(dsn)

    monkeypatch.setattr(databases.asyncpg, "create_pool", create_pool)
    pool = await databases.open_pool(service, "erp")  # type: ignore[arg-type]  # a fake
    assert isinstance(pool, FakePool) and pool.dsn.endswith("@erp:5432/erp")
    assert len(attempts) == 3
    assert seen_while_down and seen_while_down[0][0] is False
    assert "ERP" in seen_while_down[0][1] and "hunter2" not in seen_while_down[0][1]
    ok, body = await service.health.readiness()
    assert body["checks"]["database:erp"]["ok"] and ok

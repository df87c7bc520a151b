"""The write-back connection pools, opened one way by every service.

A database that is down when a service starts is waited for (retried with the
service's backoff; readiness check ``database:<name>`` says why), and once open its
``/readyz`` probe asks it live (``SELECT 1``, briefly cached).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import asyncpg

from services.shared.health import pool_probe

if TYPE_CHECKING:
    from services.shared.resilience import RetryPolicy
    from services.shared.runtime import Service

Database = Literal["crm", "erp"]
NAMES: dict[Database, str] = {"crm": "CRM", "erp": "ERP"}


async def open_pool(
    service: Service, database: Database, *, max_size: int = 2, retry: RetryPolicy | None = None
) -> asyncpg.Pool:
    """A pool on the service's DSN for ``database`` (``AMBIDEX_CRM_DSN`` /
    ``AMBIDEX_ERP_DSN``), with its readiness probe; ``retry``: the service's own
    derived policy (e.g. one that counts retries in its metrics)."""
    dsn = (service.settings.crm_dsn if database == "crm" else service.settings.erp_dsn)

    async def create() -> asyncpg.Pool:
        created = await asyncpg.create_pool(dsn.get_secret_value(), min_size=1,
                                            max_size=max_size)
        assert created is not None
        return created

    pool = await (retry or service.retry).call(
        create, check=f"database:{database}",
        what=f"connecting to the {NAMES[database]} database",
    )
    service.health.add_probe(f"database:{database}", pool_probe(pool))
    return pool

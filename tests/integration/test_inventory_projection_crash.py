"""Invariant (DESIGN.md 1, 6): after any crash the materialized figures equal a batch
recomputation from the two source databases.

inventory-projection is killed with SIGKILL (no shutdown, offsets and table changelog
possibly behind the write-back) twice while the sample workload runs against the real
CRM and ERP databases, and restarted each time; once the workload stops, the whole
``crm_integration.availability`` converges to exactly what
:func:`~services.inventory_projection.recompute.recompute_availability` gives (the
reconcile command's comparison is empty).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest

from ambidex.stack.local import StackAddresses
from ambidex.workload import run_workload
from services.inventory_projection.recompute import (
    Difference,
    diff_availability,
    read_projection,
    recompute_availability,
)
from tests.conftest import ServiceProcess, wait_until

pytestmark = pytest.mark.integration

SERVICE = "inventory-projection"


async def test_sigkill_under_load_converges_to_the_recomputation(
    service_process: Callable[[str], ServiceProcess], stack: StackAddresses
) -> None:
    process = service_process(SERVICE)
    if process.process is None or process.process.poll() is not None:
        process.start()
    await process.wait_ready()

    workload = asyncio.create_task(
        run_workload(
            stack.crm_admin_dsn,
            stack.erp_admin_dsn,
            rate=60,
            duration=30,
            seed=random.randrange(1_000_000),
        )
    )
    try:
        for pause in (6.0, 8.0):
            await asyncio.sleep(pause)  # let it work under load, then pull the plug
            process.kill()
            await asyncio.sleep(2.0)  # the workload goes on while it is down
            process.start()
            await process.wait_ready()
        summary = await workload
    finally:
        if not workload.done():
            workload.cancel()
    assert sum(summary.completed.values()) > 0

    last: list[list[Difference]] = []

    async def converged() -> bool:
        projected = await read_projection(stack.crm_admin_dsn)
        recomputed = await recompute_availability(stack.crm_admin_dsn, stack.erp_admin_dsn)
        last.append(diff_availability(projected, recomputed))
        return bool(projected) and not last[-1]

    try:
        await wait_until(converged, timeout=180, interval=2.0)
    except AssertionError:
        shown = "\n".join(str(d) for d in (last[-1] if last else [])[:20])
        raise AssertionError(f"still differs from the recomputation:\n{shown}") from None

"""Stopping a task (services.shared.tasks.cancel_and_wait).

Invariant protected: a stop that cancels a task of the service and waits for it never
swallows a cancellation of its own caller (``suppress(CancelledError)`` did, and a stop
that never came hung a CI run); the task's own end, cancelled or failed, is not raised
to the caller.
"""

from __future__ import annotations

import asyncio

import pytest

from services.shared.tasks import cancel_and_wait


async def test_the_task_is_cancelled_and_ended_when_it_returns() -> None:
    task = asyncio.create_task(asyncio.sleep(3600))
    await cancel_and_wait(task)
    assert task.cancelled()


async def test_a_task_that_failed_is_not_raised_to_the_stop() -> None:
    async def fails() -> None:
        raise RuntimeError("broken")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    await cancel_and_wait(task)  # no RuntimeError, no "never retrieved" warning
    assert isinstance(task.exception(), RuntimeError)


async def test_a_cancellation_of_the_caller_while_it_waits_goes_through() -> None:
    """The task takes its time to end (it cleans up); the stop waiting for it is
    cancelled meanwhile: the stop ends cancelled, not as if nothing happened."""
    cleaning = asyncio.Event()
    release = asyncio.Event()

    async def slow_to_end() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            cleaning.set()
            await release.wait()

    task = asyncio.create_task(slow_to_end())
    await asyncio.sleep(0)
    after: list[str] = []

    async def stop() -> None:
        await cancel_and_wait(task)
        after.append("ran on")

    stopping = asyncio.create_task(stop())
    await cleaning.wait()
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    assert after == []
    release.set()
    await asyncio.wait([task])

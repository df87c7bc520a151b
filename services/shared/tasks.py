"""Stopping a task of the service's own: one way, used everywhere a stop cancels one.

``task.cancel()`` then ``with suppress(CancelledError): await task`` looks right and is
not: a cancellation of the *caller* arriving while it waits (a stop of the service, a
test's timeout) is a ``CancelledError`` too, and is swallowed with the task's, so the
caller runs on as if never cancelled (a stop that never came hung a CI run once, in
:mod:`services.shared.fetch_ahead`). :func:`cancel_and_wait` waits with
:func:`asyncio.wait`, which never raises what the task ended with, so the caller's own
cancellation goes through.
"""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any] | asyncio.Future[Any]) -> None:
    """Cancel ``task`` and wait until it has ended, whatever it ends with (its error is
    marked retrieved: a stop is not where it is reported); a cancellation of the caller
    meanwhile propagates."""
    task.cancel()
    await asyncio.wait([task])
    if not task.cancelled():
        task.exception()


__all__ = ["cancel_and_wait"]

"""Long work on the event loop gives the loop back every few milliseconds.

A service does everything on one asyncio loop: its Kafka consumer's heartbeats, the
``/healthz``, ``/readyz`` and ``/metrics`` answers, its database and broker round trips.
Work that runs for seconds without an ``await`` that suspends (a batch of 20,000
records decoded, a large order folded) stops all of that: probes time out, the
consumer misses its session timeout (issue 9: stalls of 8.9 s). So loops over a batch
check a :class:`Slicer` and give the loop back once a slice of work (20 ms by default)
is used up, and pure code that must not know about asyncio is written as a generator
that yields at the points where it may be paused (:func:`run_to_end` runs it without a
loop, for tools and tests; :meth:`Slicer.drive` on the loop, in slices).

The check is one clock read, so hot loops can afford it per item::

    for record in batch:
        ...
        if slicer.due():
            await slicer.pause()

Pausing lets other tasks run in between: whatever they may touch must be consistent
at the pause points, or serialised with the work (e.g. by a lock).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Generator
from typing import Any, TypeVar

T = TypeVar("T")

#: Work between two pauses: well below the ~100 ms a probe or a heartbeat may wait.
DEFAULT_SLICE_SECONDS = 0.02

#: What pure work yields at its pause points (nothing: a bare ``yield``).
Pausable = Generator[None, None, T]


class Slicer:
    """Measures work since the last pause; :meth:`pause` gives the loop back."""

    __slots__ = ("_clock", "_since", "pauses", "slice_seconds")

    def __init__(
        self,
        slice_seconds: float = DEFAULT_SLICE_SECONDS,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.slice_seconds = slice_seconds
        self._clock = clock
        self._since = clock()
        self.pauses = 0

    def due(self) -> bool:
        """Whether a slice of work has been used up since the last pause."""
        return self._clock() - self._since >= self.slice_seconds

    async def pause(self) -> None:
        """Give the loop back (other ready tasks run), then start a new slice."""
        await asyncio.sleep(0)
        self.pauses += 1
        self._since = self._clock()

    async def tick(self) -> None:
        """:meth:`pause` if :meth:`due` (in loops that are not hot)."""
        if self.due():
            await self.pause()

    def restart(self) -> None:
        """Start a new slice now (e.g. after an ``await`` that did suspend)."""
        self._since = self._clock()

    async def drive(self, work: Pausable[T]) -> T:
        """Run ``work`` to its end on the loop, pausing at its yields when due."""
        while True:
            try:
                next(work)
            except StopIteration as done:
                result: T = done.value
                return result
            if self.due():
                await self.pause()


def run_to_end(work: Generator[Any, None, T]) -> T:
    """Run pausable ``work`` to its end without pausing (no loop needed)."""
    while True:
        try:
            next(work)
        except StopIteration as done:
            result: T = done.value
            return result


__all__ = ["DEFAULT_SLICE_SECONDS", "Pausable", "Slicer", "run_to_end"]

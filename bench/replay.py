"""What the replay benchmarks share: a service replaying its topics, timed from its
consumer group's committed offsets, and its event loop watched through /metrics.

:func:`replay_group` starts a :class:`~bench.common.BenchedService` and polls its
group's committed offsets on the given topics until they reach the topics' end:
changes/s from its first committed progress (start-up and the first batch left out)
and from its start, and the worker's CPU time a change. :class:`LoopWatch` samples the
event loop's stalls meanwhile and says whether the group session survived.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.common import BenchedService


def log(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


async def offsets(bootstrap: str, group: str | None, partitions: list[TopicPartition]) -> int:
    """The partitions' end offsets (``group`` None) or the group's committed ones, summed."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        if group is None:
            return sum((await consumer.end_offsets(partitions)).values())
        return sum([await consumer.committed(tp) or 0 for tp in partitions])
    finally:
        await consumer.stop()


async def partitions_of(bootstrap: str, topics: Iterable[str]) -> list[TopicPartition]:
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await probe.start()
    try:
        await probe._client.force_metadata_update()  # type: ignore[attr-defined]
        return [TopicPartition(t, p) for t in topics for p in probe.partitions_for_topic(t) or ()]
    finally:
        await probe.stop()


#: what aiokafka logs when the group's session is lost or the group rebalances
SESSION_LOST = re.compile(r"session expired|heartbeat failed|rebalanc|unknownmemberid",
                          re.IGNORECASE)


def sample(text: str, name: str, **labels: str) -> float | None:
    """One sample of a Prometheus text exposition (None: absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            return float(value)
    return None


class LoopWatch:
    """The event loop's stalls in a benched service, read from its /metrics."""

    def __init__(self, service: BenchedService) -> None:
        self.service = service
        self.longest = 0.0
        self.late = 0.0  # 0.1 s ticks more than 0.1 s late
        self.ticks = 0.0

    async def sample(self) -> None:
        try:
            text = await self.service.metrics()
        except httpx.HTTPError:  # missed (e.g. the loop blocked past the timeout)
            return
        name = "ambidex_event_loop_lag"
        self.longest = max(self.longest, sample(text, name + "_max_seconds") or 0.0)
        count = sample(text, name + "_seconds_count")
        within = sample(text, name + "_seconds_bucket", le="0.1")
        if count is not None and within is not None:
            self.ticks, self.late = count, count - within

    def session_lost(self) -> int:
        """Lines of the service's log saying the group session was lost or rebalanced."""
        try:
            text = self.service.log_path.read_text(errors="replace")
        except OSError:
            return 0
        return sum(1 for line in text.splitlines() if SESSION_LOST.search(line))


@dataclass(frozen=True)
class ReplayRun:
    #: changes/s from the first committed progress to caught up; None when the first
    #: commit covered them all (no rate between commits)
    first_rate: float | None
    #: changes/s from the process's start (start-up included)
    start_rate: float
    #: worker CPU (user + system) a change, µs
    cpu_us: float
    changes: int


async def replay_group(bootstrap: str, service: BenchedService, *, group: str,
                       topics: Iterable[str], watch: LoopWatch, label: str,
                       finished: Callable[[], Awaitable[bool]] | None = None) -> ReplayRun:
    """Start ``service`` and time its replay of ``topics`` (see the module docstring);
    with ``finished``, the replay ends once that also holds (e.g. every output written,
    not only every input committed)."""
    partitions = await partitions_of(bootstrap, topics)
    end = await offsets(bootstrap, None, partitions)
    service.start()
    first: tuple[float, int, float] | None = None
    last_log = last_watch = started = time.monotonic()
    while True:
        done = await offsets(bootstrap, group, partitions)
        now = time.monotonic()
        service.sample_rss()
        if now - last_watch > 5:
            await watch.sample()
            last_watch = now
        if first is None and done > 0:
            first = (now, done, service.cpu_seconds())
        if now - last_log > 10:
            log(f"{label} replay: {done:,}/{end:,} committed after {now - started:.0f}s, "
                f"RSS {service.rss_mb():.0f} MB")
            last_log = now
        if done >= end and (finished is None or await finished()):
            await watch.sample()
            break
        if service.process is not None and service.process.poll() is not None:
            raise RuntimeError(f"{label} exited, see {service.log_path}")
        await asyncio.sleep(0.5)
    assert first is not None
    from_start = end / max(now - started, 1e-9)
    if first[1] >= end:
        return ReplayRun(None, from_start, service.cpu_seconds() / max(end, 1) * 1e6, end)
    count = end - first[1]
    return ReplayRun(count / max(now - first[0], 1e-9), from_start,
                     (service.cpu_seconds() - first[2]) / count * 1e6, end)

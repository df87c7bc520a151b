"""Change topics read in whole fetched batches, committed only behind finished work.

Why not a Faust stream for the change topics (docs/adr/0001-faust-as-worker-shell.md):
on this 2-core machine a Faust agent that does nothing but acknowledge delivers about a
thousand events/s, a :class:`BatchSource` tens of thousands (``bench/faust_delivery.py``).
The services' own work per change is a few microseconds when it is batched, so
per-event stream machinery would be the whole budget. A :class:`BatchSource` is
therefore a plain aiokafka consumer that runs *inside* the service's Faust worker
(started and stopped with it, like every shared part), hands its handler everything one
fetch returned, and commits offsets itself.

Commit rule (invariants 1 and 3, at-least-once plus idempotent effects): a record's
offset becomes committable when the handler call that received it has returned, unless
the handler *held* it (e.g. a change waiting for the rest of its source transaction);
a held record becomes committable when it is released. Per partition the committed
offset is the lowest offset still held, or the next offset to fetch when nothing is
held, so a crash anywhere redelivers every record whose effect may be missing.

Latency: while the handler works, the source keeps fetching
(:mod:`services.shared.fetch_ahead`), so records that reach Kafka during a batch are in
the next one rather than the one after (aiokafka fetches one response ahead per
partition, and only once the last was taken).

Rebalances: aiokafka revokes every partition before an assignment (eager protocol).
On revocation the source commits what is committable, tells the handler to drop what
it holds (``on_reset``), and forgets every hold; after the assignment aiokafka resumes
each partition from its committed offset (or the positions ``resume_from`` gives, for a
handler that keeps its own offsets beside its state; those are committed with the next
commit, as if fetched up to there). Releases of holds taken before a
reset are ignored, so a batch that was in flight during the rebalance cannot commit
past a record that will be redelivered.

Outages (:mod:`services.shared.resilience`): a handler that fails because a database
or the broker is unavailable is not a crash. The batch's holds are voided, the handler
drops what it holds (``on_reset``), every partition is sought back to where a redo must
start (:func:`redo_positions`, or ``resume_from``'s positions), and the loop waits out
the outage with backoff and jitter before fetching again; readiness
(``source:<name>``) fails meanwhile, and while the consumer has lost its group
coordinator. Only an error that is neither bad input nor an outage stops the worker.

Consumer group: ``ambidex-<service>.<source name>`` (the Faust worker has no Kafka
client and no group of its own).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.errors import CommitFailedError, KafkaError

from services.shared.alignment import UNREAD, Buffers, limit
from services.shared.assignment import WholeSourceAssignor as WholeSourceAssignor
from services.shared.fetch_ahead import FetchAhead
from services.shared.kafka import client_options
from services.shared.memory import release_free_memory
from services.shared.offsets import Hold as Hold
from services.shared.offsets import OffsetLedger as OffsetLedger
from services.shared.offsets import redo_positions as redo_positions
from services.shared.record_batch import RecordBatch as RecordBatch
from services.shared.tasks import cancel_and_wait

if TYPE_CHECKING:
    from aiokafka.structs import ConsumerRecord

    from services.shared.runtime import Service

log = logging.getLogger(__name__)


class RedoBatch(Exception):
    """Raised by a batch handler: drop the batch and fetch it again from the committed
    (or ``resume_from``) position at once; neither an outage nor a crash."""


class CommitProgress(Protocol):
    """What a handler that keeps no state of its own (its offsets are the group's)
    records with every offset commit, as the commit's metadata, and is handed back when
    partitions are assigned: e.g. its transaction holders' progress (module docstring of
    :mod:`services.shared.holding`, "restarts")."""

    def recorded(self) -> str:
        """The metadata to commit now (short: Kafka bounds it, 4 KiB by default)."""
        ...

    def resume(self, recorded: Sequence[str]) -> None:
        """The metadata committed with each assigned partition (partitions committed at
        different times carry different values: the handler takes the newest)."""
        ...


BatchHandler = Callable[[RecordBatch], Awaitable[None]]
ResetHandler = Callable[[], Awaitable[None]]
ResumePositions = Callable[[Sequence[TopicPartition]], Awaitable[Mapping[TopicPartition, int]]]
#: told the partitions a rebalance assigned or revoked (a sharded state opens and
#: closes its shards: :mod:`services.shared.state.shards`)
PartitionsHook = Callable[[Sequence[TopicPartition]], Awaitable[None]]


class BatchSource:
    """One consumer group over ``topics``, feeding ``handler`` one fetched batch at a time."""

    def __init__(
        self,
        service: Service,
        name: str,
        topics: Sequence[str],
        handler: BatchHandler,
        *,
        on_reset: ResetHandler | None = None,
        resume_from: ResumePositions | None = None,
        max_records: int = 5000,
        partition_fetch_bytes: int = 512 * 1024,
        align_window_ms: int | None = 250,
        hand_out_window_ms: int = 250,
        fetch_wait_ms: int = 20,
        commit_interval: float = 1.0,
        progress: CommitProgress | None = None,
        release_memory: bool = True,
        assignor: AbstractPartitionAssignor | type[AbstractPartitionAssignor] | None = None,
        on_assigned: PartitionsHook | None = None,
        on_revoked: PartitionsHook | None = None,
    ) -> None:
        self.service = service
        self._progress = progress
        # give the C heap's free pages back after a batch, at most once per commit
        # interval (a handler whose checkpoint already does it each batch says False)
        self._release_memory = release_memory
        self._last_release = float("-inf")  # the first batch may trim, whatever the clock
        self.name = name
        self.topics = tuple(topics)
        self.group_id = f"ambidex-{service.name}.{name}"
        self._handler = handler
        self._on_reset = on_reset
        self._resume_from = resume_from
        #: None: every partition to one member (WholeSourceAssignor)
        self._assignor = assignor
        self._on_assigned = on_assigned
        self._on_revoked = on_revoked
        self._max_records = max_records
        self._partition_fetch_bytes = partition_fetch_bytes
        self._align_window_ms = align_window_ms
        self._hand_out_window_ms = hand_out_window_ms
        #: records fetched and not handed out yet (services.shared.alignment)
        self._buffers: Buffers[TopicPartition, ConsumerRecord[bytes, bytes]] = Buffers()
        self._last_timestamp: dict[TopicPartition, int] = {}
        #: the last hand-out stopped at ``max_records`` with more records due
        self._more_due = False
        self._fetch_wait_ms = fetch_wait_ms
        self._commit_interval = commit_interval
        self.ledger = OffsetLedger()
        self.consumer: AIOKafkaConsumer | None = None
        #: records fetched while the last batch was handled (services.shared.fetch_ahead)
        self._ahead: FetchAhead | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_commit = 0.0
        self._lag_reported = 0.0
        self._rewind: dict[TopicPartition, int] | None = None
        self._failing: str | None = None
        self.records_handled = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        settings = self.service.settings
        self.consumer = AIOKafkaConsumer(
            **client_options(settings.kafka),
            group_id=self.group_id,
            client_id=self.group_id,
            enable_auto_commit=False,
            partition_assignment_strategy=(self._assignor or WholeSourceAssignor(),),
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_poll_records=self._max_records,
            fetch_max_wait_ms=self._fetch_wait_ms,
            # small per-partition fetches keep partitions of related topics (changes and
            # their transaction markers) close together in a backlog
            max_partition_fetch_bytes=self._partition_fetch_bytes,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=1_000,
            # a slow batch (database unavailable, retrying) must not cost the assignment
            max_poll_interval_ms=600_000,
        )
        await self.consumer.start()
        self.consumer.subscribe(list(self.topics), listener=_Listener(self))
        self._task = asyncio.create_task(self._run(), name=f"{self.group_id}-loop")
        self.service.health.add_probe(self.check, self._probe)

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
        if self.consumer is not None:
            await self.commit()
            await self.consumer.stop()

    def release(self, holds: Iterable[Hold]) -> None:
        self.ledger.release(holds)

    async def commit(self) -> None:
        offsets = self.ledger.to_commit()
        if not offsets or self.consumer is None:
            return
        assigned = self.consumer.assignment()
        offsets = {tp: o for tp, o in offsets.items() if tp in assigned}
        if not offsets:
            return
        commits: dict[TopicPartition, int | tuple[int, str]] = dict(offsets)
        if self._progress is not None:
            metadata = self._progress.recorded()
            commits = {tp: (offset, metadata) for tp, offset in offsets.items()}
        try:
            await self.consumer.commit(commits)
        except (CommitFailedError, KafkaError) as error:
            # the group rebalanced: the records will be redelivered to whoever owns them
            log.warning("offset commit refused (%s); will be redelivered", error,
                        extra={"group": self.group_id})
            return
        self.ledger.committed(offsets)
        self._last_commit = time.monotonic()

    # ------------------------------------------------------------------ the loop

    @property
    def check(self) -> str:
        """The readiness check this source reports (consumer state, outages)."""
        return f"source:{self.name}"

    async def _run(self) -> None:
        assert self.consumer is not None
        consumer = self.consumer
        ahead = self._ahead = FetchAhead(consumer, self._max_records)
        health = self.service.health
        policy = self.service.retry
        failures = 0
        while True:
            try:
                if self._rewind is not None:
                    await self._redo_from_committed()
                # records fetched beside the last batch are handed out without a fetch
                # (and so are records kept and due already: no fetch wait)
                fetched = ahead.take()
                if not fetched:
                    wait_ms = 0 if self._more_due else 200
                    fetched = await consumer.getmany(timeout_ms=wait_ms,
                                                     max_records=self._max_records)
                if fetched or self._buffers.holding():
                    # records kept from earlier fetches are handed out once the others
                    # are known far enough, even when this fetch brought nothing
                    await ahead.beside(self._handle(fetched))
                now = time.monotonic()
                if now - self._last_commit >= self._commit_interval:
                    await self.commit()
                    self._last_commit = now
                if now - self._lag_reported >= 1.0:
                    self._report_lag()
                    self._lag_reported = now
                if failures:
                    failures = 0
                    self._failing = None
                    log.info("batches succeed again", extra={"group": self.group_id})
            except asyncio.CancelledError:
                raise
            except RedoBatch as redo:
                # the handler decided the batch must be folded again (a transaction to
                # refuse: services.shared.output_check): no outage, no delay
                log.warning("batch redone: %s", redo, extra={"group": self.group_id})
            except Exception as error:
                kind = policy.classify(error)
                if not kind.transient:
                    # a bug, not bad input (that goes to the dead-letter topic) nor an
                    # outage (retried below): fail loudly and stop the worker, so its
                    # supervisor restarts it from the committed offsets
                    health.record_fatal(f"{self.group_id} stopped: {error!r}")
                    log.exception("batch source stopped", extra={"group": self.group_id})
                    await self.service.app.crash(error)
                    raise
                # an outage (database, broker): the batch is redone from the committed
                # position once the component is back; the process stays up meanwhile
                failures += 1
                delay = policy.delay(failures)
                self._failing = f"retrying a batch: {type(error).__name__}: {error}"[:500]
                policy.report(error, kind, delay, check=None, what=f"{self.group_id} batch")
                await asyncio.sleep(delay)

    async def _handle(self, fetched: Mapping[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
                      ) -> None:
        if self._align_window_ms is not None:
            fetched = await self._aligned(fetched)
            if not fetched:
                await self._align()
                return
        generation = self.ledger.generation
        records: list[ConsumerRecord[bytes, bytes]] = []
        for part in fetched.values():
            records.extend(part)
        ends = {tp: part[-1].offset + 1 for tp, part in fetched.items()}
        starts = {tp: part[0].offset for tp, part in fetched.items()}
        try:
            await self._handler(RecordBatch(records, self.ledger, ends))
        except BaseException:
            # whatever the handler did with this batch may be half done: rewind to the
            # last committable position (before any record still held) and redo
            if self._rewind is None:
                self._rewind = redo_positions(self.ledger, starts)
            # nothing of the ledger may be committed any more (its holds are void now)
            self.ledger.reset()
            raise
        if generation == self.ledger.generation:
            for tp, part in fetched.items():
                self.ledger.fetched(tp, ends[tp])
                self._last_timestamp[tp] = part[-1].timestamp
        self.records_handled += len(records)
        if self._release_memory:
            now = time.monotonic()
            if now - self._last_release >= self._commit_interval:
                # a batch's decoded rows and buffers are freed by now; glibc keeps the
                # pages in its heap otherwise (order-sync: 166 -> 125 MB RSS at one
                # trim after 49 minutes of the soak)
                release_free_memory()
                self._last_release = now
        if self._align_window_ms is not None:
            await self._align()

    async def _redo_from_committed(self) -> None:
        """After a failed batch: forget every hold, let the handler drop its state, and
        seek back (to ``resume_from``'s positions when the handler keeps its own)."""
        assert self.consumer is not None and self._rewind is not None
        self._last_timestamp.clear()
        # records kept and not handed out are read again (the redo positions may not
        # name their partitions: nothing of them was handed out)
        kept = self._buffers.first_offsets()
        if self._ahead is not None:
            # fetched after the buffers' records: the buffers' first offsets come first
            kept = {**self._ahead.first_offsets(), **kept}
            self._ahead.clear()
        self._buffers.clear()
        self._more_due = False
        if self._on_reset is not None:
            await self._on_reset()
        positions = {**kept, **self._rewind}
        assigned = self.consumer.assignment()
        if self._resume_from is not None and assigned:
            positions.update(await self._resume_from(list(assigned)))
        for tp, offset in positions.items():
            if tp in assigned:
                self.consumer.seek(tp, offset)
        paused = self.consumer.paused()
        if paused:
            self.consumer.resume(*paused)
        self._rewind = None
        log.info("batch redone from the committed position", extra={"group": self.group_id})

    async def _probe(self) -> tuple[bool, str]:
        """Readiness of this source, asked live: not waiting out an outage, and the
        consumer in its group (a known group coordinator: aiokafka forgets it when the
        broker goes away)."""
        consumer = self.consumer
        if consumer is None or self._task is None or self._task.done():
            return False, "not running"
        if self._failing is not None:
            return False, self._failing
        coordinator = getattr(consumer, "_coordinator", None)
        if coordinator is not None and getattr(coordinator, "coordinator_id", 0) is None:
            return False, "group coordinator unknown (broker unreachable?)"
        return True, f"consuming, {len(consumer.assignment())} partition(s) assigned"

    async def _align(self) -> None:
        """Keep the partitions' read positions within ``align_window_ms`` of each other.

        A change and its transaction's other changes and markers sit on different
        partitions; in a backlog Kafka may hand out thousands of records of one before
        the others, and everything waiting for the rest would pile up in memory. Record
        timestamps are Connect's production times, in capture order across all
        partitions, so a partition whose last record is more than the window ahead of
        the slowest partition that still has records to fetch is paused until that one
        catches up. The slowest is never paused, so reading always progresses. (Pausing
        acts between fetches; within one, :meth:`_aligned` keeps what runs ahead, and
        a partition with records kept stays paused until they are handed out.)
        """
        assert self.consumer is not None
        consumer = self.consumer
        holding = self._buffers.holding()  # not fetched again until handed out
        behind: list[int] = []
        for tp in consumer.assignment():
            first_kept = self._buffers.first_time(tp)
            if first_kept is not None:
                behind.append(first_kept - 1)  # where it stands: before its next record
                continue
            if not await self._more_to_come(tp):
                continue  # caught up (or not fetched yet): constrains nobody
            behind.append(self._last_timestamp.get(tp, -1))
        paused = consumer.paused()
        window = self._align_window_ms or 0
        until = min(behind) + window if behind else None
        to_pause = [
            tp for tp in consumer.assignment()
            if tp not in paused and (tp in holding or (
                until is not None and self._last_timestamp.get(tp, -1) > until))
        ]
        to_resume = [
            tp for tp in paused
            if tp not in holding and (until is None or self._last_timestamp.get(tp, -1) <= until)
        ]
        if to_pause:
            consumer.pause(*to_pause)
        if to_resume:
            consumer.resume(*to_resume)

    async def _aligned(
        self, fetched: Mapping[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        """Keep what was fetched, and hand out what is within ``hand_out_window_ms`` of
        the point every partition with more to come is known to
        (:mod:`services.shared.alignment`: one fetch can run seconds ahead)."""
        assert self.consumer is not None
        consumer = self.consumer
        self._buffers.add(fetched)
        known_to: list[int] = []
        for tp in consumer.assignment():
            if not await self._more_to_come(tp):
                continue  # nothing more to come (or no answer from its leader yet)
            kept = self._buffers.last_time(tp)
            known_to.append(kept if kept is not None
                            else self._last_timestamp.get(tp, UNREAD))
        taken = self._buffers.take(limit(known_to, self._hand_out_window_ms), self._max_records)
        self._more_due = sum(len(part) for part in taken.values()) >= self._max_records
        return taken

    async def caught_up(self, topics: Collection[str]) -> bool:
        """Whether every assigned partition of ``topics`` has been read to its end (as
        of the last fetch); False while a partition's end is not known yet."""
        consumer = self.consumer
        if consumer is None:
            return False
        holding = self._buffers.holding()  # fetched, not handed out yet
        for tp in consumer.assignment():
            if tp.topic not in topics:
                continue
            if tp in holding:
                return False
            highwater = consumer.highwater(tp)
            if highwater is None or await self._more_to_come(tp):
                return False
        return True

    async def _more_to_come(self, tp: TopicPartition) -> bool:
        """Whether ``tp`` has records not handed out yet beyond those kept in the
        buffers: fetched ahead, or not fetched (False while its end is not known)."""
        assert self.consumer is not None
        if self._ahead is not None and self._ahead.holds(tp):
            return True
        highwater = self.consumer.highwater(tp)
        return highwater is not None and await self.consumer.position(tp) < highwater

    def _report_lag(self) -> None:
        if self.consumer is None:
            return
        metrics = self.service.metrics
        # lag from the committable offsets: what a restart right now would redo
        safe = self.ledger.safe_offsets()
        for tp in self.consumer.assignment():
            highwater = self.consumer.highwater(tp)
            position = safe.get(tp)
            if highwater is None or position is None:
                continue
            metrics.set_consumer_lag(tp.topic, tp.partition, max(0, highwater - position))

    async def _revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self.commit()
        self._rewind = None  # the next assignment resumes from the committed offsets
        self.ledger.reset()
        self._last_timestamp.clear()
        self._buffers.clear()
        if self._ahead is not None:
            self._ahead.clear()
        self._more_due = False
        if self._on_reset is not None:
            await self._on_reset()
        if self._on_revoked is not None:
            await self._on_revoked(list(revoked))

    async def _assigned(self, assigned: Iterable[TopicPartition]) -> None:
        partitions = list(assigned)
        if not partitions or self.consumer is None:
            return
        if self._on_assigned is not None:
            # before resume_from: what it reads (a shard's state) is opened here
            await self._on_assigned(partitions)
        if self._progress is not None:
            # the committed metadata (aiokafka's committed() returns the offset alone)
            committed = await self.consumer._coordinator.fetch_committed_offsets(partitions)
            self._progress.resume(
                [c.metadata for c in committed.values() if c is not None and c.metadata]
            )
        if self._resume_from is None:
            return
        positions = await self._resume_from(partitions)
        for tp, offset in positions.items():
            if tp in partitions:
                self.consumer.seek(tp, offset)
                # what the handler's own offsets cover is done: committed with the next
                # commit, so the group's offsets (lag, tests, tools) follow the state
                # even for a partition that gets no new record (its last records folded
                # by a worker killed before its group commit)
                self.ledger.fetched(tp, offset)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, source: BatchSource) -> None:
        self._source = source

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._source._revoked(revoked)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self._source._assigned(assigned)


def attach_sources(service: Service, *sources: BatchSource) -> None:
    """Start ``sources`` after the service's shared parts and stop them before."""

    async def start(_: Service) -> None:
        for source in sources:
            await source.start()

    async def stop(_: Service) -> None:
        for source in reversed(sources):
            await source.stop()

    service.on_start.append(start)
    service.on_stop.insert(0, stop)

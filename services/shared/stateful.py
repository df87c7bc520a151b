"""The runner of a service with local state: one batch loop, written once.

A stateful service is a *fold* (its pure policy: what a whole source transaction does
to the state, and what must happen because of it) run by this *runner* (the I/O: read,
hold, commit). The split is eventsourcing's policy and its runner; the order of the
durable steps is the :class:`~services.shared.state.checkpoint.Checkpoint`'s.

Per fetched batch (:meth:`StatefulRunner.on_batch`):

1. every record goes to the fold through the shared transactional intake
   (:func:`~services.shared.whole_transactions.read_records`): bad input to
   ``dlq.<service>``, changes held per source database until their transaction is whole;
2. overdue transactions are ended (``AMBIDEX_MAX_HOLD_SECONDS`` of source time, once the
   topics they wait for are read to their end);
3. the fold's :meth:`Fold.steps` folds the complete transactions through the
   checkpoint's overlay (pausable: the event loop is given back every slice, so health,
   metrics and the consumer's heartbeats answer while a large batch folds);
4. the service's ``check(step, fold)`` says whether every output of the step can be
   published (:mod:`~services.shared.output_check`); if one cannot, the transactions
   that made it are found (probes on scratch folds over the durable state), refused,
   and the batch is redone from the durable state: those transactions are then given up
   whole (dead letters with the reason), the others fold and publish as usual;
5. :meth:`Checkpoint.commit` runs the service's effects for the step (write-back,
   publishing, dead letters; idempotent), then makes the changelog, the state and the
   source offsets durable; only the step's ``release`` handles may be committed.

A crash anywhere redoes the batch from the offsets stored with the state; a rebalance
or a failed batch drops what the batch held and reloads the fold from the state.

What a service writes: its fold (a :class:`Fold`, usually around a
:class:`~services.shared.whole_transactions.HeldTransactions`), a ``load(kv)`` that
builds the fold from the state, and ``apply(step, fold)`` for the effects. Use::

    runner = StatefulRunner(service, state_topic="state.<service>", topics=CHANGE_TOPICS,
                            sources=SourceTopics.of(("crm", "erp"), heartbeats=True),
                            load=MyFold.load, apply=effects.apply, check=effects.check)
    # start hook: await runner.open(); stop hook: runner.close()
    attach_sources(service, runner.source)
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeAlias, TypeVar

from aiokafka.structs import ConsumerRecord

from services.shared.batches import BatchSource, RecordBatch, RedoBatch
from services.shared.cooperative import Pausable, Slicer
from services.shared.errors import BadInput
from services.shared.output_check import (
    Drained,
    Refusals,
    Unattributable,
    isolate,
    refused_reason,
    transaction_ref,
)
from services.shared.state.changelog import Changelog, Restored
from services.shared.state.checkpoint import Checkpoint, open_state
from services.shared.state.store import KeyValue, Overlay
from services.shared.whole_transactions import (
    HeldTransactions,
    SourceTopics,
    TransactionFeed,
    read_records,
)

if TYPE_CHECKING:
    from services.shared.runtime import Service

log = logging.getLogger(__name__)

#: what a stateful fold keeps of a record until its work is durable: the record
Handle: TypeAlias = "ConsumerRecord[bytes, bytes]"

S_co = TypeVar("S_co", covariant=True)
S = TypeVar("S", bound="FoldStep")
F = TypeVar("F", bound="Fold[Any]")
S_contra = TypeVar("S_contra", contravariant=True)
F_contra = TypeVar("F_contra", contravariant=True)


class FoldStep(Protocol):
    """What a fold's step must tell the runner: the records it may let go of."""

    @property
    def release(self) -> Sequence[Handle]: ...


class Fold(TransactionFeed[Handle], Protocol[S_co]):
    """A service's pure policy over whole source transactions (see the module)."""

    @property
    def held(self) -> HeldTransactions[Handle]: ...

    def steps(self, caught_up: Collection[str]) -> Pausable[S_co]:
        """Fold what the feed completed; ``caught_up``: the source databases whose
        reference topics are read to their end (verdicts that wait on them may be
        given)."""
        ...


def _itself(record: Handle) -> Handle:
    return record


class OutputCheck(Protocol[S_contra, F_contra]):
    """A service's check of a step's outputs (:mod:`~services.shared.output_check`):
    the first one its schema refuses, as the error, or None. ``prune``: also take every
    refused output out of the step (what cannot be rejected with a transaction is then
    not published, and reported)."""

    def __call__(self, step: S_contra, fold: F_contra, /, *, prune: bool = False
                 ) -> BadInput | None: ...


class StatefulRunner(Generic[F, S]):
    """The batch loop of a stateful service (see the module docstring).

    ``reference_topics``: per source database, the topics whose rows others refer to;
    a database is passed to :meth:`Fold.steps` as caught up once these are read to
    their end. ``options``: the :class:`BatchSource`'s (``max_records``, fetch sizes).
    """

    def __init__(
        self,
        service: Service,
        *,
        state_topic: str,
        topics: Sequence[str],
        sources: SourceTopics,
        load: Callable[[KeyValue], F],
        apply: Callable[[S, F], Awaitable[None]],
        reference_topics: Mapping[str, Collection[str]] | None = None,
        after_commit: Callable[[F], Awaitable[None]] | None = None,
        published: Callable[[F, Handle], None] | None = None,
        check: OutputCheck[S, F] | None = None,
        consumer: str = "changes",
        **options: Any,
    ) -> None:
        self.service = service
        self.sources = sources
        self._load = load
        self._apply = apply
        self._after_commit = after_commit
        #: ``published(fold, record)``: a record of ``sources.published`` (see
        #: :func:`~services.shared.whole_transactions.read_records`)
        self._published = published
        self._check = check
        #: transactions whose outputs were refused, given up when complete again (kept
        #: across the reloads of the fold: the redo needs them)
        self.refusals = Refusals()
        self.reference_topics: Mapping[str, Collection[str]] = dict(reference_topics or {})
        self.checkpoint = Checkpoint(Changelog(state_topic))
        self.source: BatchSource = self.checkpoint.batch_source(
            service, consumer, (*topics, *sources.topics), self.on_batch,
            on_reset=self.on_reset, **options,
        )
        self._fold: F | None = None
        self._slicer = Slicer()

    @property
    def fold(self) -> F:
        if self._fold is None:
            raise RuntimeError("the state is not open yet (StatefulRunner.open)")
        return self._fold

    async def open(self) -> Restored | None:
        """Open (or rebuild from the changelog) the local state and load the fold;
        what was restored, if anything (also in ``ambidex_state_restore_seconds`` and
        ``ambidex_state_restored_records``)."""
        settings = self.service.settings
        producer = self.service.producer
        assert producer is not None
        store = open_state(settings)
        self.service.metrics.memory.watch_state(store.memory)
        restored = await self.checkpoint.open(store, settings.kafka, producer)
        if restored is not None:
            self.service.metrics.state_restored(restored.seconds, restored.records)
        self._fold = self._loaded()
        return restored

    def _loaded(self) -> F:
        """The fold from the durable state, its holders told what was finished; the
        refusals outlive it (a redo needs them)."""
        fold = self._load(self.checkpoint.overlay)
        fold.held.resume_progress(self.checkpoint.overlay)
        fold.held.refusals = self.refusals
        return fold

    def close(self) -> None:
        self.service.metrics.memory.watch_state(None)
        self.checkpoint.close()

    async def on_reset(self) -> None:
        """Partitions revoked or a batch failed: the checkpoint dropped what the batch
        held; reload the fold from the durable state."""
        self._fold = self._loaded()

    async def on_batch(self, batch: RecordBatch) -> None:
        fold = self.fold
        slicer = self._slicer
        slicer.restart()
        intake = self.service.require_intake()
        published = self._published
        taken: list[Handle] = []

        def on_published(record: Handle, handle: Handle) -> None:
            assert published is not None
            taken.append(handle)
            published(fold, handle)

        await read_records(
            batch.records, fold, intake, self.sources, _itself, slicer,
            None if published is None else on_published,
        )
        caught_up = self.source.caught_up
        await fold.held.expire(caught_up)
        ready = [db for db, topics in self.reference_topics.items() if await caught_up(topics)]
        step: S = await slicer.drive(fold.steps(ready))
        if self._check is not None:
            await self._checked(step, fold, ready, taken)
        fold.held.drained = []
        fold.held.record_progress(self.checkpoint.overlay)
        await self.checkpoint.commit(batch, step.release, partial(self._apply, step, fold))
        if self._after_commit is not None:
            await self._after_commit(fold)

    async def _checked(self, step: S, fold: F, ready: Collection[str],
                       published: Sequence[Handle]) -> None:
        """Every output of ``step`` can be published, or the batch is redone without the
        transactions that made the refused ones (:mod:`~services.shared.output_check`)."""
        check = self._check
        assert check is not None
        error = check(step, fold)
        if error is None:
            return

        async def probe(wholes: Sequence[Drained]) -> BadInput | None:
            # a scratch fold over the durable state: the live fold is left as it is
            scratch = self._load(Overlay(self.checkpoint.state))
            scratch.held.replay(wholes)
            if self._published is not None:
                for handle in published:
                    self._published(scratch, handle)
            return check(await self._slicer.drive(scratch.steps(ready)), scratch)

        try:
            culprits = await isolate(fold.held.drained, probe)
        except Unattributable as unattributable:
            # nothing of this step to reject: the refused outputs are left out, reported
            pruned = check(step, fold, prune=True)
            self.service.metrics.outputs_refused_total.labels(self.service.name).inc()
            log.error("output refused, not published: %s", unattributable,
                      extra={"reason": str(pruned.reason if pruned else error.reason)})
            return
        for (database, whole), refusal in culprits:
            transaction = whole.transaction
            self.refusals.refuse(transaction_ref(database, transaction),
                                 refused_reason(database, transaction, refusal))
            log.warning("source transaction refused: its outputs cannot be published",
                        extra={"database": database, "transaction": transaction.id,
                               "reason": refusal.reason})
        raise RedoBatch(f"{len(culprits)} source transaction(s) refused: "
                        f"{error.reason}"[:500])

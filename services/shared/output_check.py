"""An output that cannot be published rejects the source transaction that made it.

A stateful service's outputs (the records its effects publish) are built from its state
at the end of a step. One the output schema refuses (a sum beyond a decimal's
precision, a text the fold passes through into an enum) used to fail the effects: the
worker stopped, its supervisor restarted it, and the same batch failed again (a crash
loop). The kit's runner (:class:`~services.shared.stateful.StatefulRunner`) therefore
*checks* a step's outputs before any effect (the service's ``check(step, fold)``, most
simply :func:`first_refused` over the records it will publish), and when one is refused:

1. **isolate** (:func:`isolate`): which of the step's whole transactions made it? Each
   probe folds a subset of them into a scratch fold loaded from the durable state (the
   savepoint: the state as of the last committed batch; the live fold and its in-memory
   caches are not touched) and checks its outputs. A bisection finds, per culprit, the
   first transaction whose addition turns a passing prefix into a failing one;
2. **refuse** (:class:`Refusals`): the culprits are noted with the reason and the batch
   is redone from the durable state (:class:`~services.shared.batches.RedoBatch`: the
   same path as a failed batch, so the fold and every in-memory cache are rebuilt
   from the state, and the records are fetched again);
3. when a refused transaction is complete again, the holder hands it on *given up
   whole* (:func:`reject_whole`, cause ``unpublishable``): every record of it to the
   dead letters with the reason, nothing of it applied, reported like any rejected
   transaction; the step's other transactions fold and publish as usual.

A refused output that no transaction of the step explains (its fold alone fails: a
value stored before this check existed, a record of a published topic) cannot be
rejected whole (:class:`Unattributable`); the runner then leaves the refused outputs out
(not written back, not published), logs the reason and counts them in
``ambidex_outputs_refused_total``, and the worker goes on.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeAlias, TypeVar

from services.shared.avro import AvroCodec
from services.shared.errors import BadInput
from services.shared.holding import GivenUp, GiveUpCause, Whole
from services.shared.transactions import CompleteTransaction

H = TypeVar("H")

#: a source transaction, stable across redeliveries: (database, its xid or, for a
#: change without a transaction block, the origin of its record)
TransactionRef: TypeAlias = tuple[str, str]
#: a whole transaction handed on for folding, with its database
Drained: TypeAlias = tuple[str, Whole[Any]]
#: at most this many refusals are remembered (a redo uses them at once)
REMEMBER_REFUSALS = 1_000


class OutputRefused(BadInput):
    """A transaction's outputs cannot be published (their schema refuses them)."""


class Unattributable(RuntimeError):
    """An output is refused that no transaction of the step made (see the module)."""


def transaction_ref(database: str, transaction: CompleteTransaction) -> TransactionRef:
    if transaction.id is not None:
        return database, transaction.id
    origin = transaction.events[0].origin if transaction.events else None
    return database, "" if origin is None else f"{origin.topic}@{origin.offset}"


def transaction_name(database: str, transaction: CompleteTransaction) -> str:
    """The transaction as a dead letter's reason names it."""
    return transaction_ref(database, transaction)[1]


def reject_whole(
    database: str,
    whole: Whole[H],
    cause: GiveUpCause,
    reason: str,
    bad: tuple[H | None, BadInput] | None = None,
) -> tuple[list[tuple[H, BadInput]], GivenUp]:
    """Every record of ``whole`` as a dead letter (``bad``: the record that made it fail
    gets its own error, the others ``reason``), and the transaction given up."""
    transaction = whole.transaction
    dead: list[tuple[H, BadInput]] = []
    for handle in whole.handles:
        if bad is not None and handle is bad[0]:
            dead.append((handle, bad[1]))
        else:
            dead.append((handle, OutputRefused(reason) if cause is GiveUpCause.UNPUBLISHABLE
                         else BadInput(reason)))
    given = GivenUp(database, transaction_name(database, transaction), cause, reason,
                    events=transaction.events)
    return dead, given


class Refusals:
    """Transactions to hand on given up whole, with the reason (bounded)."""

    def __init__(self, limit: int = REMEMBER_REFUSALS) -> None:
        self._limit = limit
        self._reasons: OrderedDict[TransactionRef, str] = OrderedDict()

    def __len__(self) -> int:
        return len(self._reasons)

    def refuse(self, ref: TransactionRef, reason: str) -> None:
        self._reasons[ref] = reason
        while len(self._reasons) > self._limit:
            self._reasons.popitem(last=False)

    def take(self, database: str, transaction: CompleteTransaction) -> str | None:
        """The reason ``transaction`` is refused (forgotten then), or None."""
        if not self._reasons:
            return None
        return self._reasons.pop(transaction_ref(database, transaction), None)


def refused_reason(database: str, transaction: CompleteTransaction, error: BadInput) -> str:
    return (f"source transaction {transaction_name(database, transaction)} rejected whole: "
            f"its outputs cannot be published: {error.reason}")


#: ``probe(wholes)``: fold exactly ``wholes`` (in order) over the durable state; the
#: refusal of its outputs, or None when they can all be published
Probe = Callable[[Sequence[Drained]], Awaitable[BadInput | None]]


async def isolate(
    wholes: Sequence[Drained], probe: Probe
) -> list[tuple[Drained, BadInput]]:
    """The transactions of ``wholes`` whose outputs are refused, each with the error
    its addition caused (see the module). Raises :class:`Unattributable` when folding
    none of them fails already. Probes: about log2(len) per culprit, plus one."""
    failure = await probe(())
    if failure is not None:
        raise Unattributable(f"an output is refused without any transaction of the step: "
                             f"{failure.reason}")
    culprits: list[tuple[Drained, BadInput]] = []
    accepted: list[Drained] = []
    remaining = list(wholes)
    while remaining:
        failure = await probe((*accepted, *remaining))
        if failure is None:
            break
        # the smallest prefix of ``remaining`` that fails after ``accepted``: the prefix
        # of length ``low`` passes, the one of length ``high`` fails
        low, high, error = 0, len(remaining), failure
        while high - low > 1:
            middle = (low + high) // 2
            found = await probe((*accepted, *remaining[:middle]))
            if found is None:
                low = middle
            else:
                high, error = middle, found
        culprits.append((remaining[high - 1], error))
        accepted.extend(remaining[:high - 1])
        remaining = remaining[high:]
    return culprits


def first_refused(codec: AvroCodec, items: Iterable[tuple[str, dict[str, Any]]]
                  ) -> BadInput | None:
    """The first of ``items`` ((schema, record)) its schema refuses, as the error."""
    catalogue = codec.catalogue
    entries: dict[str, Any] = {}
    for schema, record in items:
        entry = entries.get(schema)
        if entry is None:
            entry = entries[schema] = catalogue.get(schema)
        try:
            entry.validate(record)
        except BadInput as error:
            return error
    return None


T = TypeVar("T")


def publishable(codec: AvroCodec, schema: str, records: Iterable[T],
                record_of: Callable[[T], dict[str, Any]] | None = None
                ) -> tuple[list[T], BadInput | None]:
    """``records`` without those ``schema`` refuses (a check's ``prune``), and the first
    refusal; ``record_of`` builds the record of an item (default: the item is it)."""
    entry = codec.catalogue.get(schema)
    kept: list[T] = []
    first: BadInput | None = None
    for item in records:
        try:
            entry.validate(item if record_of is None else record_of(item))
        except BadInput as error:
            first = first or error
            continue
        kept.append(item)
    return kept, first


__all__ = [
    "Drained", "OutputRefused", "Probe", "Refusals", "TransactionRef", "Unattributable",
    "first_refused", "isolate", "publishable", "refused_reason", "reject_whole", "transaction_name",
    "transaction_ref",
]

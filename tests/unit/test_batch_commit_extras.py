"""What a batch source does beside handing batches over (fakes: the loop's logic only).

* A handler that keeps no state of its own (its offsets are the group's) gets its
  progress committed as the metadata of every offset commit, and the newest committed
  metadata back when partitions are assigned (:class:`CommitProgress`: order-sync's
  transaction holder, so a restart never gives up what was finished before it).
* The C heap's free pages go back after a batch, at most once per commit interval,
  unless the handler's checkpoint already does it (``release_memory=False``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from services.shared import batches as batches_module
from services.shared.batches import BatchSource, RecordBatch
from tests.unit.test_batch_outages import TP, FakeConsumer, FakeService, _record


class Progress:
    def __init__(self) -> None:
        self.value = "none"
        self.resumed: list[Sequence[str]] = []

    def recorded(self) -> str:
        return self.value

    def resume(self, recorded: Sequence[str]) -> None:
        self.resumed.append(recorded)


class Committed:
    def __init__(self, offset: int, metadata: str) -> None:
        self.offset, self.metadata = offset, metadata


class Coordinator:
    def __init__(self, committed: dict[Any, Committed]) -> None:
        self.committed = committed

    async def fetch_committed_offsets(self, partitions: list[Any]) -> dict[Any, Committed]:
        return {tp: self.committed[tp] for tp in partitions if tp in self.committed}


async def handled(source: BatchSource, offsets: range) -> None:
    await source._handle({TP: [_record(o) for o in offsets]})


def source_of(**options: Any) -> tuple[BatchSource, FakeConsumer]:
    async def handler(batch: RecordBatch) -> None:
        return None

    source = BatchSource(FakeService(), "crm", [TP.topic], handler,  # type: ignore[arg-type]
                         align_window_ms=None, **options)
    consumer = FakeConsumer(0)
    source.consumer = consumer  # type: ignore[assignment]
    return source, consumer


async def test_each_commit_carries_the_handlers_progress_as_its_metadata() -> None:
    progress = Progress()
    source, consumer = source_of(progress=progress)
    await handled(source, range(0, 3))
    progress.value = '{"crm":5000}'
    await source.commit()
    assert consumer.committed == {TP: (3, '{"crm":5000}')}


async def test_without_progress_the_offsets_are_committed_bare() -> None:
    source, consumer = source_of()
    await handled(source, range(0, 3))
    await source.commit()
    assert consumer.committed == {TP: 3}


async def test_the_committed_metadata_comes_back_on_assignment() -> None:
    progress = Progress()
    source, consumer = source_of(progress=progress)
    consumer._coordinator = Coordinator({TP: Committed(3, '{"crm":5000}')})  # type: ignore[attr-defined]
    await source._assigned([TP])
    assert progress.resumed == [['{"crm":5000}']]


@pytest.mark.parametrize("release_memory, trims", [(True, 1), (False, 0)])
async def test_free_memory_goes_back_after_a_batch_at_most_once_an_interval(
    monkeypatch: pytest.MonkeyPatch, release_memory: bool, trims: int
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(batches_module, "release_free_memory", lambda: calls.append("trim"))
    source, _ = source_of(release_memory=release_memory, commit_interval=3600.0)
    for start in range(0, 9, 3):
        await handled(source, range(start, start + 3))
    assert len(calls) == trims  # three batches within one interval: once at most

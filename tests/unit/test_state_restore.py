"""Rebuilding a service's local state from its changelog (services.shared.state, no servers).

Invariant protected: a restore is all or nothing across crashes. A state is only ever
taken as whole (and the restore skipped) when the restore that filled it finished; a
restore that crashed half way leaves its ``restoring`` marker, and the next start wipes
the partial state and restores again, ending equal to an uninterrupted restore. A
trailing producing batch cut short by a crash is not copied.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import pytest

from services.shared.state.changelog import (
    BATCH_HEADER,
    OFFSETS_KEY,
    RESTORING_KEY,
    ChangelogCopy,
    needs_restore,
)
from services.shared.state.rocks import RocksState
from services.shared.state.store import MemoryState, StateStore


class Entry(NamedTuple):
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


def changelog(batches: int, per_batch: int = 5) -> list[Entry]:
    """What a checkpoint produces: per batch its state entries, then the offsets entry."""
    out: list[Entry] = []
    for b in range(batches):
        headers = [(BATCH_HEADER, b.to_bytes(8, "big"))]
        for i in range(per_batch):
            key = f"a:{(b * 3 + i) % 17:04d}".encode()  # later batches overwrite keys
            out.append(Entry(key, f"{b}.{i}".encode(), headers))
        if b % 4 == 3:
            out.append(Entry(b"a:0001", None, headers))  # a delete
        out.append(Entry(OFFSETS_KEY, f'{{"t:0":{b}}}'.encode(), headers))
    return out


def restore(state: StateStore, records: Sequence[Entry], fetch: int = 7) -> ChangelogCopy:
    copy = ChangelogCopy(state)
    for start in range(0, len(records), fetch):
        copy.add(records[start : start + fetch])
    copy.finish()
    return copy


def contents(state: StateStore) -> dict[bytes, bytes]:
    return dict(state.scan(b""))


def test_an_interrupted_restore_is_redone_on_the_next_start() -> None:
    records = changelog(12)
    whole = MemoryState()
    assert needs_restore(whole)
    restore(whole, records)
    assert not needs_restore(whole)
    assert RESTORING_KEY not in contents(whole)
    assert contents(whole)[OFFSETS_KEY] == b'{"t:0":11}'

    state = MemoryState()
    copy = ChangelogCopy(state)
    for start in range(0, 30, 7):  # a crash after a few fetches: no finish()
        copy.add(records[start : start + 7])
    partial = contents(state)
    assert partial and partial != contents(whole)

    # the next start: not empty, but the marker says the restore never finished
    assert needs_restore(state)
    assert state.is_empty()
    restore(state, records)
    assert contents(state) == contents(whole)
    assert not needs_restore(state)


def test_a_trailing_batch_cut_short_is_not_copied() -> None:
    records = changelog(5)
    cut = records[:-2]  # the last batch without its offsets entry (and one more)
    state = MemoryState()
    copy = restore(state, cut)
    expected = MemoryState()
    restore(expected, changelog(4))
    assert contents(state) == contents(expected)
    assert copy.records == len(cut)
    assert not needs_restore(state)


def test_an_empty_changelog_leaves_an_empty_state() -> None:
    state = MemoryState()
    restore(state, [])
    assert state.is_empty()


@pytest.mark.parametrize("crash_after", [0, 14, 35])
def test_rocksdb_bulk_restore_interrupted_then_redone(tmp_path: Path, crash_after: int) -> None:
    """The same with RocksDB, whose restore writes skip the WAL: the reopened database
    (a new process) still has the marker, and the redone restore is whole."""
    records = changelog(10)
    expected = MemoryState()
    restore(expected, records)

    state = RocksState(tmp_path / "state")
    copy = ChangelogCopy(state)
    copy.add(records[:crash_after])
    state.close()  # the process ends without finish()

    state = RocksState(tmp_path / "state")
    try:
        assert needs_restore(state)
        assert state.is_empty()
        restore(state, records)
        assert contents(state) == contents(expected)
    finally:
        state.close()
    state = RocksState(tmp_path / "state")
    try:
        assert not needs_restore(state)
        assert contents(state) == contents(expected)
    finally:
        state.close()

"""Where a change sits in its source database's history.

Debezium's PostgreSQL connector (pgoutput) delivers changes in commit order and tags
each with ``source.sequence = [last_commit_lsn, lsn]``. Ordering on that pair is the
source's own order, so it is what every idempotent write compares against: a change
whose position is not greater than the stored one is stale or a redelivery.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True, slots=True)
class SourcePosition:
    """A totally ordered position in one source database's WAL.

    ``commit_lsn`` orders transactions (commit order), ``lsn`` orders the changes
    inside one transaction. Snapshot reads carry ``commit_lsn == 0``, so any streamed
    change wins over them.
    """

    commit_lsn: int
    lsn: int

    @classmethod
    def zero(cls) -> SourcePosition:
        return cls(0, 0)

    def __str__(self) -> str:
        return f"{_lsn_text(self.commit_lsn)}/{_lsn_text(self.lsn)}"


def _lsn_text(lsn: int) -> str:
    """PostgreSQL's own notation, e.g. ``0/16B3748``."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"

"""Small helpers every workload operation module shares."""

from __future__ import annotations

import datetime as dt


def today() -> dt.date:
    """The business day the workload acts on (the machine's local date, as the seed)."""
    return dt.date.today()


def changed_rows(status: str) -> int:
    """Row count from a command status such as ``INSERT 0 3`` or ``UPDATE 2``."""
    return int(status.rsplit(" ", 1)[-1])

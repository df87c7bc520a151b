"""What a service's reconciliation reports, and the comparison that finds it (pure).

A service checks its write-back against a recomputation from the final rows of both
databases: each compared thing (an order, an account's month) as a mapping of fields
on each side, the differences field by field (:func:`diff_rows`: a thing present on one
side only is a difference of field ``row``), and the source rows the service refuses
(:class:`RefusedRow`), left out of the recomputation as the service leaves them out.
``ambidex reconcile <service>`` prints both (:mod:`services.shared.reconcile_cli`).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

PRESENT, MISSING = "present", "missing"

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Difference:
    """One field of one compared thing that differs. ``subject`` names the thing for
    people ("CRM order 7"), ``ids`` for tools (``{"crm_order_id": 7}``)."""

    subject: str
    ids: tuple[tuple[str, Any], ...]
    field: str  # a column, a nested "line 2.carrier", or "row" (one side has no such thing)
    written: Any
    recomputed: Any

    def __str__(self) -> str:
        return (f"{self.subject}: {self.field}: written {self.written!r}, "
                f"recomputed {self.recomputed!r}")

    def as_json(self) -> dict[str, Any]:
        return {**dict(self.ids), "field": self.field, "written": str(self.written),
                "recomputed": str(self.recomputed)}


@dataclass(frozen=True, slots=True)
class RefusedRow:
    """A source row the service dead-letters (its transaction rejected whole)."""

    source: str  # the table (or record) it came from
    row_id: Any
    reason: str

    def __str__(self) -> str:
        return f"{self.source} {self.row_id} refused: {self.reason}"

    def as_json(self) -> dict[str, Any]:
        return {"source": self.source, "id": self.row_id, "refused": self.reason}


def diff_rows(
    written: Mapping[K, Mapping[str, Any]],
    recomputed: Mapping[K, Mapping[str, Any]],
    compared: Sequence[str],
    difference: Callable[[K, str, Any, Any], Difference],
) -> list[Difference]:
    """Every difference between ``written`` and ``recomputed`` (by key, in key order):
    ``row`` (present / missing) for a key one side lacks, else each field of
    ``compared`` whose values differ (``==``: ``Decimal("5") == Decimal("5.000")``)."""
    out: list[Difference] = []
    for key in sorted(set(written) | set(recomputed)):  # type: ignore[type-var]
        have, want = written.get(key), recomputed.get(key)
        if have is None or want is None:
            out.append(difference(key, "row", PRESENT if have is not None else MISSING,
                                  PRESENT if want is not None else MISSING))
            continue
        out += [difference(key, name, have[name], want[name])
                for name in compared if have[name] != want[name]]
    return out


__all__ = ["MISSING", "PRESENT", "Difference", "RefusedRow", "diff_rows"]

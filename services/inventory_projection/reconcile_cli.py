"""`ambidex reconcile`: the projection's write-back against a batch recomputation.

Compares :func:`~services.inventory_projection.recompute.read_projection` (what the
service wrote into ``crm_integration.availability``) with
:func:`~services.inventory_projection.recompute.recompute_availability` (what the two
source databases say now), prints every difference, one per line, and exits 1 if there
is any (0 when they agree). Source rows holding NaN or ±Infinity in a quantity are
listed too (they are left out of the recomputation) and also make it exit 1. On a live
system a key touched between the reads may differ once; run it again (``--retries``)
before calling it a defect.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from services.inventory_projection.recompute import (
    Difference,
    NonFiniteRow,
    diff_availability,
    non_finite_rows,
    read_projection,
    recompute_availability,
)
from services.shared.reconcile_cli import reconcile_command


@dataclass(frozen=True)
class AvailabilityReport:
    keys: int
    differences: list[Difference]
    bad_rows: list[NonFiniteRow]

    @property
    def lines(self) -> Sequence[NonFiniteRow | Difference]:
        return [*self.bad_rows, *self.differences]

    @property
    def summary(self) -> str:
        return (f"{self.keys} keys compared, {len(self.differences)} differences, "
                f"{len(self.bad_rows)} source rows not a number")

    def failing(self, options: Mapping[str, Any]) -> bool:
        return bool(self.differences or self.bad_rows)


async def compare(crm_dsn: str, erp_dsn: str, options: Mapping[str, Any]) -> AvailabilityReport:
    recomputed = await recompute_availability(crm_dsn, erp_dsn)
    projected = await read_projection(crm_dsn)
    return AvailabilityReport(
        len(set(recomputed) | set(projected)),
        diff_availability(projected, recomputed),
        await non_finite_rows(crm_dsn, erp_dsn),
    )


reconcile = reconcile_command("reconcile", compare)
reconcile.help = (
    "Compare inventory-projection's availability with a recomputation from the source "
    "databases; print every difference (exit code 1 if any)."
)

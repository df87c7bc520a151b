"""`ambidex reconcile production-status`: the write-back against a recomputation.

Compares what production-status wrote into ``crm_integration.fulfilment_status`` and
``fulfilment_line`` with a recomputation from both source databases
(:mod:`.reconcile`), prints every difference, one per line, and exits 1 if there is any
(0 when they agree). Source rows the service refuses (impossible dates, a bad value:
their transactions are dead-lettered whole) are listed too and also make it exit 1. On
a live system an order changed between the reads may differ once; run it again
(``--retries``) before calling it a defect. The command's shape (DSNs, ``--retries``,
``--json``, exit code) is the kit's :func:`~services.shared.reconcile_cli.reconcile_command`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from services.production_status.reconcile import Difference, RefusedRow, reconcile_once
from services.shared.reconcile_cli import reconcile_command


@dataclass(frozen=True)
class StatusReport:
    orders: int
    differences: list[Difference]
    refused: list[RefusedRow]

    @property
    def lines(self) -> Sequence[RefusedRow | Difference]:
        return [*self.refused, *self.differences]

    @property
    def summary(self) -> str:
        return (f"{self.orders} orders compared, {len(self.differences)} differences, "
                f"{len(self.refused)} source rows refused")

    def failing(self, options: Mapping[str, Any]) -> bool:
        return bool(self.differences or self.refused)


async def compare(crm_dsn: str, erp_dsn: str, options: Mapping[str, Any]) -> StatusReport:
    return StatusReport(*await reconcile_once(crm_dsn, erp_dsn))


reconcile_production_status = reconcile_command("production-status", compare)
reconcile_production_status.help = (
    "Compare production-status's fulfilment statuses with a recomputation from both "
    "databases; print every difference (exit code 1 if any)."
)

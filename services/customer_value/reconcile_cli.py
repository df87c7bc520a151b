"""`ambidex reconcile customer-value`: the write-back against a recomputation.

Compares what customer-value wrote into ``crm_integration.customer_value`` with a
recomputation from both source databases and receivables' positions (:mod:`.reconcile`),
prints every difference, one per line, and exits 1 if there is any (0 when they agree).
Source rows the service refuses (bad input: their transactions are dead-lettered whole)
are listed too and also make it exit 1. On a live system a row changed between the
reads may differ once; run it again (``--retries``) before calling it a defect. The
command's shape is the kit's :func:`~services.shared.reconcile_cli.reconcile_command`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from services.customer_value.reconcile import Difference, RefusedRow, reconcile_once
from services.shared.reconcile_cli import reconcile_command


@dataclass(frozen=True)
class ValueReport:
    months: int
    differences: list[Difference]
    refused: list[RefusedRow]

    @property
    def lines(self) -> Sequence[RefusedRow | Difference]:
        return [*self.refused, *self.differences]

    @property
    def summary(self) -> str:
        return (f"{self.months} account months compared, {len(self.differences)} "
                f"differences, {len(self.refused)} source rows refused")

    def failing(self, options: Mapping[str, Any]) -> bool:
        return bool(self.differences or self.refused)


async def compare(crm_dsn: str, erp_dsn: str, options: Mapping[str, Any]) -> ValueReport:
    return ValueReport(*await reconcile_once(crm_dsn, erp_dsn))


reconcile_customer_value = reconcile_command("customer-value", compare)
reconcile_customer_value.help = (
    "Compare customer-value's figures with a recomputation from both databases; print "
    "every difference (exit code 1 if any)."
)

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

from services.production_status.reconcile import reconcile_once
from services.shared.reconcile_cli import rows_command

reconcile_production_status = rows_command(
    "production-status", reconcile_once, "orders",
    "Compare production-status's fulfilment statuses with a recomputation from both "
    "databases; print every difference (exit code 1 if any)."
)

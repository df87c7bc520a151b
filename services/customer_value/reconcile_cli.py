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

from services.customer_value.reconcile import reconcile_once
from services.shared.reconcile_cli import rows_command

reconcile_customer_value = rows_command(
    "customer-value", reconcile_once, "account months",
    "Compare customer-value's figures with a recomputation from both databases; print "
    "every difference (exit code 1 if any)."
)

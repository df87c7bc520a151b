"""production-status's answer to a TRUNCATE of each captured table it consumes.

None can be cleared: a status is built from the history of an order's rows (its
production orders, inspections, shipments), and a truncate is a reload or a restore,
not the orders going back. Clearing ``erp.shipment`` would move every shipped order
back to production and publish delay risks for all of them to the CRM; clearing
``crm.sales_order`` would drop every status. Each truncate is dead-lettered with cause
``needs_resnapshot`` and alerted on (:mod:`services.shared.truncates`); the rest of its
source transaction is applied as usual (the kit's
:class:`~services.shared.transaction_fold.TransactionFold`).
"""

from __future__ import annotations

from collections.abc import Mapping

from services.shared.truncates import TruncateAnswer, TruncateAnswers

RESNAPSHOT = TruncateAnswer.NEEDS_RESNAPSHOT

#: THE declaration: every captured table production-status consumes -> answer
ANSWERS: Mapping[str, TruncateAnswer] = {
    "erp.sales_order": RESNAPSHOT,
    "erp.sales_order_line": RESNAPSHOT,
    "erp.production_order": RESNAPSHOT,
    "erp.quality_inspection": RESNAPSHOT,
    "erp.shipment": RESNAPSHOT,
    "erp.shipment_line": RESNAPSHOT,
    "crm.sales_order": RESNAPSHOT,
    "crm.service_case": RESNAPSHOT,
}
TRUNCATES = TruncateAnswers("production-status", ANSWERS)

"""customer-value's answer to a TRUNCATE of each captured table it consumes.

None is cleared: the figures are sums of what each row contributes, anchored on its
parent rows (a shipment line takes its account and month from its shipment, a
production order from its sales order), and a truncate is a reload or a restore, not
the business undoing a table's history. Clearing ``erp.sales_order`` would strand every
row anchored on it and publish emptied months for every account to the CRM; clearing
``crm.account`` would drop every service case's currency. Each truncate is
dead-lettered with cause ``needs_resnapshot`` and alerted on
(:mod:`services.shared.truncates`); the rest of its source transaction is applied as
usual (the kit's :class:`~services.shared.transaction_fold.TransactionFold`).
"""

from __future__ import annotations

from collections.abc import Mapping

from services.shared.truncates import TruncateAnswer, TruncateAnswers

RESNAPSHOT = TruncateAnswer.NEEDS_RESNAPSHOT

#: THE declaration: every captured table customer-value consumes -> answer
ANSWERS: Mapping[str, TruncateAnswer] = {
    "crm.account": RESNAPSHOT,
    "crm.sales_order": RESNAPSHOT,
    "crm.contract": RESNAPSHOT,
    "crm.service_case": RESNAPSHOT,
    "erp.customer": RESNAPSHOT,
    "erp.sales_order": RESNAPSHOT,
    "erp.production_order": RESNAPSHOT,
    "erp.quality_inspection": RESNAPSHOT,
    "erp.shipment": RESNAPSHOT,
    "erp.shipment_line": RESNAPSHOT,
    "erp.return_order": RESNAPSHOT,
}
TRUNCATES = TruncateAnswers("customer-value", ANSWERS)

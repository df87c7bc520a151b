"""receivables' answer to a TRUNCATE of each captured table it consumes.

None can be cleared: the figures are the contracts' plans set against the ERP's
invoices and payments, and a truncate is a reload or a restore, not the business
withdrawing every contract (or cancelling every invoice) at once. Clearing
``crm.installment`` would withdraw every expected-receivables plan in the ERP and raise
``unknown_installment`` for every invoice; clearing ``erp.payment`` would make every
paid installment overdue again. Each truncate is dead-lettered with cause
``needs_resnapshot`` and alerted on (:mod:`services.shared.truncates`); the rest of its
source transaction is applied as usual (the kit's
:class:`~services.shared.transaction_fold.TransactionFold`).
"""

from __future__ import annotations

from collections.abc import Mapping

from services.shared.truncates import TruncateAnswer, TruncateAnswers

RESNAPSHOT = TruncateAnswer.NEEDS_RESNAPSHOT

#: THE declaration: every captured table receivables consumes (``db.table``) -> answer
ANSWERS: Mapping[str, TruncateAnswer] = {
    "crm.contract": RESNAPSHOT,
    "crm.installment": RESNAPSHOT,
    "erp.invoice": RESNAPSHOT,
    "erp.payment": RESNAPSHOT,
}
TRUNCATES = TruncateAnswers("receivables", ANSWERS)

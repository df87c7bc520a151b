"""order-sync's answer to a TRUNCATE of each captured table it consumes.

None can be cleared: a truncated CRM order table does not mean the orders were
cancelled (the ERP orders stay), a truncated account or product table says nothing
about what the ERP should have, and the ERP tables are read for progress and
re-decisions of what they hold now. Each truncate is dead-lettered with cause
``needs_resnapshot`` and alerted on (:mod:`services.shared.truncates`); the rest of its
source transaction is applied as usual.
"""

from __future__ import annotations

from collections.abc import Mapping

from services.shared.truncates import TruncateAnswer

RESNAPSHOT = TruncateAnswer.NEEDS_RESNAPSHOT

#: THE declaration: every captured table order-sync consumes (``db.table``) -> answer
ANSWERS: Mapping[str, TruncateAnswer] = {
    "crm.sales_order": RESNAPSHOT,
    "crm.sales_order_line": RESNAPSHOT,
    "crm.account": RESNAPSHOT,
    "crm.product": RESNAPSHOT,
    "erp.sales_order": RESNAPSHOT,
    "erp.sales_order_line": RESNAPSHOT,
    "erp.item": RESNAPSHOT,
    "erp.currency": RESNAPSHOT,
    "erp.warehouse": RESNAPSHOT,
    # the documents that pin order lines (holds.py): a truncate does not release a pin
    # in the ERP's own tables, so what order-sync knows of them needs a re-snapshot
    "erp.stock_reservation": RESNAPSHOT,
    "erp.production_order": RESNAPSHOT,
    "erp.shipment_line": RESNAPSHOT,
    "erp.invoice_line": RESNAPSHOT,
}

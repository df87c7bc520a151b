"""order-sync's answer to a TRUNCATE of each captured table it consumes.

None can be cleared: a truncated CRM order table does not mean the orders were
cancelled (the ERP orders stay), a truncated account or product table says nothing
about what the ERP should have, and the ERP tables are read for progress and
re-decisions of what they hold now. Each truncate is dead-lettered with cause
``needs_resnapshot`` and alerted on (:mod:`services.shared.truncates`); the rest of its
source transaction is applied as usual (:class:`TruncateHandler`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from services.shared.changes import ChangeEvent
from services.shared.runtime import Service
from services.shared.transactions import CompleteTransaction
from services.shared.truncates import (
    TruncateAnswer,
    TruncateAnswers,
    TruncateCounter,
    split_truncates,
)

if TYPE_CHECKING:
    from aiokafka.structs import ConsumerRecord

log = logging.getLogger(__name__)

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


class TruncateHandler:
    """Gives the declared answer to each truncate order-sync reads: counted, alerted on
    (``needs_resnapshot``) and dead-lettered; the rest of its transaction goes on."""

    def __init__(self, service: Service, answers: TruncateAnswers) -> None:
        self.service = service
        self.answers = answers
        self.counter = TruncateCounter(service.registry, service.name)

    async def answer(
        self, event: ChangeEvent, record: ConsumerRecord[bytes, bytes] | None
    ) -> None:
        self.counter.seen(event, self.answers.answer(event))  # all: needs_resnapshot
        error = self.answers.error(event)
        if record is None:  # not held by this worker (cannot happen: logged, counted)
            log.error("%s (not dead-lettered: record not held)", error.reason)
            return
        await self.service.require_intake().reject(record, error)

    async def answer_in(
        self, transaction: CompleteTransaction, handles: list[tuple[Any, Any]]
    ) -> CompleteTransaction:
        """The declared answer to each truncate of a complete transaction; the rest of
        it, to apply as usual. ``handles``: (record, hold) of its records."""
        transaction, truncates = split_truncates(transaction)
        if truncates:
            records = {(r.topic, r.partition, r.offset): r for r, _ in handles}
            for event in truncates:
                origin = event.origin
                record = records.get((origin.topic, origin.partition, origin.offset))
                await self.answer(event, record)
        return transaction

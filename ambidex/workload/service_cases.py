"""CRM customer service: cases opened, moved along and resolved, one transaction each.

Most cases are about an order, and most of those about an order the ERP has produced,
inspected or shipped (:attr:`~.world.World.orders_in_fulfilment`), so production-status
has something to triage: a complaint about quality, a late delivery, or an order whose
every step went right. The category is the customer's, not the ERP's verdict.
"""

from __future__ import annotations

import random

from ambidex.workload.world import World

CASE_SUBJECTS = {
    "delivery": "Where is my delivery?",
    "quality": "Defective unit received",
    "billing": "Invoice amount disputed",
    "question": "Question about technical specification",
    "complaint": "Repeated delays on open orders",
}


async def handle_service_case(w: World, rng: random.Random, index: int) -> int | None:
    """Open a service case (often about an order), or move an open one along."""
    case_id = w.open_cases.choice(rng, w.busy, "case") if rng.random() < 0.4 else None
    async with w.crm.acquire() as conn:
        if case_id is not None:
            with w.claim("case", case_id):
                state = await conn.fetchval(
                    """UPDATE crm.service_case
                       SET state = CASE state WHEN 'new' THEN 'open'
                                              WHEN 'open' THEN $2
                                              ELSE 'resolved' END,
                           resolved_at = CASE WHEN state = 'waiting'
                                                OR (state = 'open' AND $2 = 'resolved')
                                              THEN now() END,
                           updated_at = now()
                       WHERE id = $1 AND state IN ('new', 'open', 'waiting')
                       RETURNING state""",
                    case_id,
                    "waiting" if rng.random() < 0.5 else "resolved",
                )
            if state is None or state == "resolved":
                w.open_cases.discard(case_id)
            return None if state is None else 1
        category = rng.choice(tuple(CASE_SUBJECTS))
        priority = rng.choice(("low", "normal", "normal", "high", "urgent"))
        about = rng.random()
        if about < 0.45 and w.orders_in_fulfilment:
            order_id = w.orders_in_fulfilment.choice(rng, w.busy, "order")
        elif about < 0.65:
            order_id = w.live_orders.choice(rng, w.busy, "order")
        else:
            order_id = None
        if order_id is not None:
            new_id = await conn.fetchval(
                """INSERT INTO crm.service_case (account_id, sales_order_id, subject, category,
                       priority)
                   SELECT account_id, id, $2, $3, $4 FROM crm.sales_order WHERE id = $1
                   RETURNING id""",
                order_id,
                CASE_SUBJECTS[category],
                category,
                priority,
            )
        else:
            account_id = w.account_ids.choice(rng, w.busy, "account")
            if account_id is None:
                return None
            new_id = await conn.fetchval(
                """INSERT INTO crm.service_case (account_id, subject, category, priority)
                   VALUES ($1, $2, $3, $4) RETURNING id""",
                account_id,
                CASE_SUBJECTS[category],
                category,
                priority,
            )
    if new_id is None:
        return None
    w.open_cases.add(new_id)
    return 1

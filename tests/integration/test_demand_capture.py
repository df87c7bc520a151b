"""demand signals' pure core on real captured rows: quotes, orders, products and
feasibility requests committed in the CRM arrive through the real Debezium connector
(jsonb lines as text, timestamps typed) and fold into demand and answers; figures come
from both real databases (services.demand_signals.snapshot, the recomputation).

Invariants protected here: a quote counts weighted by its stage under its warehouse and
an order in full; a good request gets a verdict, a NaN or negative quantity and an
unknown order a rejection with the reason (never silence); folding the same captured
changes again changes nothing and answers nothing twice.
"""

from __future__ import annotations

import json
from decimal import Decimal

import asyncpg

from ambidex.stack.local import StackAddresses
from services.demand_signals.feasibility import Verdict
from services.demand_signals.fold import DemandSignals, Outcome
from services.demand_signals.rates import DemandKey
from services.demand_signals.records import Table
from services.demand_signals.snapshot import load_snapshot
from services.shared.state.store import MemoryState
from tests.integration.support import CdcTap

TABLES = {"quote": Table.QUOTE, "quote_line": Table.QUOTE_LINE, "sales_order": Table.ORDER,
          "sales_order_line": Table.ORDER_LINE, "product": Table.PRODUCT,
          "feasibility_request": Table.REQUEST}


async def test_captured_quotes_orders_and_requests_fold_into_demand_and_answers(
    stack: StackAddresses,
) -> None:
    crm = await asyncpg.connect(stack.crm_admin_dsn)
    erp = await asyncpg.connect(stack.erp_admin_dsn)
    try:
        code = await erp.fetchval("SELECT min(code) FROM erp.warehouse")
        product_id, sku = await crm.fetchrow(
            "SELECT id, sku FROM crm.product ORDER BY id LIMIT 1")
        assert await erp.fetchval("SELECT count(*) FROM erp.item WHERE sku = $1", sku) == 1
        account = await crm.fetchval("SELECT min(id) FROM crm.account")
        async with CdcTap(stack.kafka_bootstrap, "crm", list(TABLES)) as tap:
            async with crm.transaction():
                await crm.execute("UPDATE crm.product SET updated_at = now() WHERE id = $1",
                                  product_id)
                quote = await crm.fetchval(
                    "INSERT INTO crm.quote (account_id, state, currency_code, warehouse_code)"
                    " VALUES ($1, 'sent', 'EUR', $2) RETURNING id", account, code)
                await crm.execute(
                    "INSERT INTO crm.quote_line (quote_id, line_no, product_id, quantity,"
                    " unit_price) VALUES ($1, 1, $2, 30, 1)", quote, product_id)
                order = await crm.fetchval(
                    "INSERT INTO crm.sales_order (account_id, state, currency_code,"
                    " warehouse_code, confirmed_at) VALUES ($1, 'confirmed', 'EUR', $2, now())"
                    " RETURNING id", account, code)
                await crm.execute(
                    "INSERT INTO crm.sales_order_line (order_id, line_no, product_id, quantity,"
                    " unit_price) VALUES ($1, 1, $2, 5, 1)", order, product_id)
                requests = {}
                for name, order_id, quantity in (("good", order, '"1"'),
                                                 ("nan", order, '"NaN"'),
                                                 ("negative", order, "-3"),
                                                 ("unknown", 2_000_000_000, '"1"')):
                    lines = (f'[{{"line_no": 1, "product_id": {product_id},'
                             f' "quantity": {quantity}}}]')
                    requests[name] = await crm.fetchval(
                        "INSERT INTO crm.feasibility_request (sales_order_id, lines)"
                        " VALUES ($1, $2::jsonb) RETURNING id", order_id, lines)
            await tap.until(lambda: tap.transaction_with("feasibility_request",
                                                         requests["unknown"]) is not None)
        view = await load_snapshot(stack.crm_admin_dsn, stack.erp_admin_dsn)
    finally:
        await crm.close()
        await erp.close()

    transaction = tap.transaction_with("feasibility_request", requests["good"])
    assert transaction is not None
    state = MemoryState()
    fold = DemandSignals(state, view)
    fold.advance(transaction.events[0].commit_time)

    def feed() -> Outcome:
        assert transaction is not None
        out = Outcome()
        for event in transaction.events:
            out.merge(fold.apply(TABLES[event.table], event.key["id"], event.position,
                                 event.after))
        return out

    out = feed()
    today = transaction.events[0].commit_time.date()
    # the quote half (sent), the order in full
    assert fold.rates.window(DemandKey(product_id, code), today).recent == Decimal("20.000")
    answers = {name: out.answers[rid] for name, rid in requests.items()}
    good = answers["good"]
    assert good is not None and good.verdict is not Verdict.REJECTED, good
    assert [(a.sku, a.quantity) for a in good.lines] == [(sku, Decimal("1.000"))]
    reasons = {name: a.reason for name, a in answers.items() if a is not None}
    assert reasons["nan"] == "bad_request: line 1 quantity is NaN, not a finite quantity"
    assert reasons["negative"] == "bad_request: line 1 quantity is -3: quantities are positive"
    assert reasons["unknown"] == "unknown_order: CRM order 2000000000 not known"
    assert json.loads(json.dumps(reasons))  # plain text, ready for the answer row
    before = dict(state.data)
    again = feed()
    assert again.answers == {} and again.events == [] and state.data == before

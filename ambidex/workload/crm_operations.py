"""CRM-side business operations: each function is one source transaction.

Each returns the number of rows it changed, or ``None`` when it found nothing to do
(no open quote to accept, the order moved on meanwhile…).
"""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal

from ambidex.workload import catalog
from ambidex.workload.common import changed_rows, today
from ambidex.workload.money import convert_price, quantize_qty
from ambidex.workload.world import World
from services.shared.money import line_net

DISCOUNTS = (
    Decimal("0"),
    Decimal("0"),
    Decimal("0"),
    Decimal("5"),
    Decimal("10"),
    Decimal("12.5"),
    Decimal("15"),
)
#: Share of orders the customer needs within days (promises production-status sees at risk).
RUSH_SHARE = 0.1


def order_quantity(rng: random.Random, uom: str) -> Decimal:
    """A plausible ordered quantity for the unit of measure (numeric(14,3))."""
    if uom == "Unit":
        return Decimal(rng.choice((1, 1, 2, 2, 3, 4, 5, 8, 10, 12, 20, 25, 40)))
    return Decimal(rng.randint(5, 500) * 5) / Decimal(2)


async def create_quote(w: World, rng: random.Random, index: int) -> int | None:
    account_id = w.account_ids.choice(rng, w.busy, "account")
    if account_id is None:
        return None
    currency = w.accounts[account_id]
    products = rng.sample(w.products, k=min(len(w.products), rng.randint(1, 6)))
    qty = [order_quantity(rng, p.uom) for p in products]
    price = [convert_price(p.list_price, currency) for p in products]
    disc = [rng.choice(DISCOUNTS) for _ in products]
    total = sum(
        (line_net(q, u, d, currency) for q, u, d in zip(qty, price, disc, strict=True)),
        Decimal(0),
    )
    async with w.crm.acquire() as conn, conn.transaction():
        quote_id = await conn.fetchval(
            """INSERT INTO crm.quote (account_id, contact_id, state, currency_code,
                   amount_total, valid_until)
               VALUES ($1, (SELECT min(id) FROM crm.contact WHERE account_id = $1),
                       $2, $3, $4, $5)
               RETURNING id""",
            account_id,
            "sent" if rng.random() < 0.7 else "draft",
            currency,
            total,
            today() + dt.timedelta(days=30),
        )
        await conn.execute(
            """INSERT INTO crm.quote_line (quote_id, line_no, product_id, quantity, unit_price,
                   discount_pct)
               SELECT $1, n, p, q, u, d
               FROM unnest($2::bigint[], $3::numeric[], $4::numeric[], $5::numeric[])
                    WITH ORDINALITY AS t(p, q, u, d, n)""",
            quote_id,
            [p.id for p in products],
            qty,
            price,
            disc,
        )
    w.open_quotes.add(quote_id)
    return 1 + len(products)


async def accept_quote(w: World, rng: random.Random, index: int) -> int | None:
    quote_id = w.open_quotes.choice(rng, w.busy, "quote")
    if quote_id is None:
        return None
    warehouse_code = rng.choice(list(w.warehouses.values()))
    rush = rng.random() < RUSH_SHARE
    requested = today() + dt.timedelta(days=rng.randint(2, 5) if rush else rng.randint(7, 60))
    with w.claim("quote", quote_id):
        async with w.crm.acquire() as conn, conn.transaction():
            quote = await conn.fetchrow(
                """UPDATE crm.quote SET state = 'accepted', updated_at = now()
                   WHERE id = $1 AND state IN ('draft', 'sent')
                   RETURNING account_id, currency_code, amount_total""",
                quote_id,
            )
            if quote is None:
                w.open_quotes.discard(quote_id)
                return None
            order_id = await conn.fetchval(
                """INSERT INTO crm.sales_order (account_id, quote_id, state, currency_code,
                       requested_date, warehouse_code, amount_total)
                   VALUES ($1, $2, 'draft', $3, $4, $5, $6) RETURNING id""",
                quote["account_id"],
                quote_id,
                quote["currency_code"],
                requested,
                warehouse_code,
                quote["amount_total"],
            )
            status = await conn.execute(
                """INSERT INTO crm.sales_order_line (order_id, line_no, product_id, quantity,
                       unit_price, discount_pct)
                   SELECT $1, line_no, product_id, quantity, unit_price, discount_pct
                   FROM crm.quote_line WHERE quote_id = $2 ORDER BY line_no""",
                order_id,
                quote_id,
            )
    w.open_quotes.discard(quote_id)
    w.draft_orders.add(order_id)
    return 2 + changed_rows(status)


async def confirm_order(w: World, rng: random.Random, index: int) -> int | None:
    order_id = w.draft_orders.choice(rng, w.busy, "order")
    if order_id is None:
        return None
    with w.claim("order", order_id):
        async with w.crm.acquire() as conn:
            status = await conn.execute(
                """UPDATE crm.sales_order
                   SET state = 'confirmed', confirmed_at = now(), updated_at = now()
                   WHERE id = $1 AND state = 'draft'""",
                order_id,
            )
    w.draft_orders.discard(order_id)
    if changed_rows(status) == 0:
        return None
    w.live_orders.add(order_id)
    return 1


async def amend_order(w: World, rng: random.Random, index: int) -> int | None:
    """Add or remove a line, or change a quantity or a price; bump the version."""
    order_id = w.live_orders.choice(rng, w.busy, "order")
    if order_id is None:
        return None
    with w.claim("order", order_id):
        async with w.crm.acquire() as conn, conn.transaction():
            currency = await conn.fetchval(
                """SELECT currency_code FROM crm.sales_order
                   WHERE id = $1 AND state IN ('confirmed', 'amended') FOR UPDATE""",
                order_id,
            )
            if currency is None:
                w.live_orders.discard(order_id)
                return None
            lines = [
                dict(r)
                for r in await conn.fetch(
                    """SELECT id, line_no, quantity, unit_price, discount_pct
                       FROM crm.sales_order_line WHERE order_id = $1 ORDER BY line_no""",
                    order_id,
                )
            ]
            roll = rng.random()
            if roll < 0.3 or not lines:
                product = rng.choice(w.products)
                line = {
                    "line_no": max((ln["line_no"] for ln in lines), default=0) + 1,
                    "quantity": order_quantity(rng, product.uom),
                    "unit_price": convert_price(product.list_price, currency),
                    "discount_pct": rng.choice(DISCOUNTS),
                }
                await conn.execute(
                    """INSERT INTO crm.sales_order_line (order_id, line_no, product_id,
                           quantity, unit_price, discount_pct)
                       VALUES ($1, $2, $3, $4, $5, $6)""",
                    order_id,
                    line["line_no"],
                    product.id,
                    line["quantity"],
                    line["unit_price"],
                    line["discount_pct"],
                )
                lines.append(line)
            elif roll < 0.45 and len(lines) > 1:
                line = lines.pop(rng.randrange(len(lines)))
                await conn.execute("DELETE FROM crm.sales_order_line WHERE id = $1", line["id"])
            elif roll < 0.85:
                line = rng.choice(lines)
                factor = Decimal(rng.choice((50, 75, 150, 200, 300))) / 100
                line["quantity"] = max(
                    Decimal(1), quantize_qty(line["quantity"] * factor)
                )
                await conn.execute(
                    "UPDATE crm.sales_order_line SET quantity = $2 WHERE id = $1",
                    line["id"],
                    line["quantity"],
                )
            else:
                line = rng.choice(lines)
                line["discount_pct"] = rng.choice(DISCOUNTS[3:])
                await conn.execute(
                    "UPDATE crm.sales_order_line SET discount_pct = $2 WHERE id = $1",
                    line["id"],
                    line["discount_pct"],
                )
            total = sum(
                (
                    line_net(ln["quantity"], ln["unit_price"], ln["discount_pct"], currency)
                    for ln in lines
                ),
                Decimal(0),
            )
            await conn.execute(
                """UPDATE crm.sales_order
                   SET state = 'amended', version = version + 1, amount_total = $2,
                       updated_at = now()
                   WHERE id = $1""",
                order_id,
                total,
            )
    return 2


async def cancel_order(w: World, rng: random.Random, index: int) -> int | None:
    pool = w.draft_orders if rng.random() < 0.7 else w.live_orders
    order_id = pool.choice(rng, w.busy, "order")
    if order_id is None:
        return None
    with w.claim("order", order_id):
        async with w.crm.acquire() as conn:
            status = await conn.execute(
                """UPDATE crm.sales_order
                   SET state = 'cancelled', cancelled_at = now(), updated_at = now()
                   WHERE id = $1 AND state IN ('draft', 'confirmed', 'amended')""",
                order_id,
            )
    w.draft_orders.discard(order_id)
    w.live_orders.discard(order_id)
    return changed_rows(status) or None


async def update_account_billing(w: World, rng: random.Random, index: int) -> int | None:
    account_id = w.account_ids.choice(rng, w.busy, "account")
    if account_id is None:
        return None
    currency = w.accounts[account_id]
    limit = convert_price(Decimal(rng.choice((10, 25, 50, 100, 250, 500, 1000)) * 1000), currency)
    with w.claim("account", account_id):
        async with w.crm.acquire() as conn:
            await conn.execute(
                """UPDATE crm.account
                   SET street = $2, postal_code = $3, credit_limit = $4, updated_at = now()
                   WHERE id = $1""",
                account_id,
                catalog.street(rng),
                f"{rng.randint(1000, 99999):05d}",
                limit,
            )
    return 1


async def create_account(w: World, rng: random.Random, index: int) -> int | None:
    spec = catalog.account(rng, 100_000_000 + w.seed % 1000 * 1_000_000 + index % 1_000_000)
    contacts = [catalog.contact(rng, spec.name) for _ in range(rng.randint(1, 2))]
    async with w.crm.acquire() as conn, conn.transaction():
        account_id = await conn.fetchval(
            """INSERT INTO crm.account (name, street, city, postal_code, country_code,
                   vat_number, currency_code, credit_limit, industry)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id""",
            spec.name,
            spec.street,
            spec.city,
            spec.postal_code,
            spec.country_code,
            spec.vat_number,
            spec.currency_code,
            spec.credit_limit,
            spec.industry,
        )
        for position, c in enumerate(contacts):
            await conn.execute(
                """INSERT INTO crm.contact (account_id, first_name, last_name, email, phone,
                       job_title, is_billing_contact)
                   VALUES ($1, $2, $3, $4, $5, $6, $7)""",
                account_id,
                c.first_name,
                c.last_name,
                c.email,
                c.phone,
                c.job_title,
                position == 0,
            )
    w.accounts[account_id] = spec.currency_code
    w.account_ids.add(account_id)
    return 1 + len(contacts)

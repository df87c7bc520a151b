"""The reference CRM and ERP databases: schema installation and master-data seeding.

``apply_reference_schema`` applies the versioned migrations ``deploy/sql/<database>/*.sql``
that the database has not had yet (``ambidex.migrations``: each file once, recorded in
``ambidex_meta.schema_migrations``) and sets the passwords of the two platform roles
when they do not already work; on an up-to-date database it runs no DDL at all.
``seed`` fills both databases with realistic, deterministic master data: a shared
product catalogue (CRM products and ERP items carry the same SKUs), accounts in
several currencies (a few in JPY, which the ERP does not accept), warehouses, opening
stock, and ERP customers for some of the accounts. Seeding again adds nothing that is
already there; ``seed_once`` (what ``stack up`` uses) records the seed in both databases
and does not touch live tables again.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Literal

import asyncpg

from ambidex.migrations import (
    MigrationReport,
    load_migrations,
    migrate,
    record_seed,
    seed_recorded,
)
from ambidex.workload import catalog

SQL_ROOT = Path(__file__).resolve().parent.parent / "deploy" / "sql"

#: Captured tables per database, in the PostgreSQL schema of the same name.
CAPTURED_TABLES: dict[str, tuple[str, ...]] = {
    "crm": (
        "account",
        "contact",
        "product",
        "quote",
        "quote_line",
        "sales_order",
        "sales_order_line",
        "contract",
        "installment",
        "service_case",
        "feasibility_request",
    ),
    "erp": (
        "currency",
        "customer",
        "item",
        "warehouse",
        "stock_quant",
        "stock_reservation",
        "sales_order",
        "sales_order_line",
        "production_order",
        "quality_inspection",
        "shipment",
        "shipment_line",
        "return_order",
        "invoice",
        "invoice_line",
        "payment",
    ),
}

#: Share of CRM accounts (outside JPY) that the ERP already knows as a customer.
LINKED_CUSTOMER_SHARE = 0.2
#: ERP-only customers (never in the CRM), as a share of the account count.
ERP_ONLY_CUSTOMER_SHARE = 0.1


def sql_files(database: Literal["crm", "erp"], sql_root: Path | None = None) -> list[Path]:
    """The migration files of ``database`` in the order they are applied."""
    folder = (sql_root or SQL_ROOT) / database
    return [folder / m.name for m in load_migrations(folder)]


async def apply_reference_schema(
    dsn: str,
    database: Literal["crm", "erp"],
    *,
    cdc_password: str,
    app_password: str,
    sql_root: Path | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> MigrationReport:
    """Bring the reference schema of ``database`` up to date (pending migrations only).

    ``dsn`` must connect as a superuser (publications for whole schemas and
    REPLICATION roles need it). Each migration runs in its own transaction.
    """
    if database not in CAPTURED_TABLES:
        raise ValueError(f"unknown reference database {database!r}")
    conn = await asyncpg.connect(dsn)
    try:
        report = await migrate(conn, database, (sql_root or SQL_ROOT) / database, progress=progress)
        for role, password in (("ambidex_cdc", cdc_password), ("ambidex_app", app_password)):
            if await _password_works(dsn, role, password):
                continue  # ALTER ROLE is DDL too: not on every start
            statement = await conn.fetchval(
                "SELECT format('ALTER ROLE %I PASSWORD %L', $1::text, $2::text)", role, password
            )
            await conn.execute(statement)
    finally:
        await conn.close()
    return report


async def _password_works(dsn: str, role: str, password: str) -> bool:
    try:
        connection = await asyncpg.connect(dsn, user=role, password=password)
    except (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError):
        return False
    await connection.close()
    return True


#: The seed ``stack up`` loads, recorded under this name in ``ambidex_meta.seed``.
REFERENCE_SEED = "reference"


async def seed_once(
    crm_dsn: str,
    erp_dsn: str,
    *,
    seed_value: int = 42,
    products: int = 200,
    accounts: int = 100,
    warehouses: int = 3,
) -> SeedSummary | None:
    """Seed both databases unless both record the reference seed; None when skipped.

    A seed interrupted half-way is recorded in neither (or one) database and runs again
    (it adds only what is missing).
    """
    recorded = []
    for dsn in (crm_dsn, erp_dsn):
        connection = await asyncpg.connect(dsn)
        try:
            recorded.append(await seed_recorded(connection, REFERENCE_SEED))
        finally:
            await connection.close()
    if all(r is not None for r in recorded):
        return None
    parameters = {
        "seed": seed_value,
        "products": products,
        "accounts": accounts,
        "warehouses": warehouses,
    }
    summary = await seed(crm_dsn, erp_dsn, **parameters)
    for dsn in (crm_dsn, erp_dsn):
        connection = await asyncpg.connect(dsn)
        try:
            await record_seed(connection, REFERENCE_SEED, parameters)
        finally:
            await connection.close()
    return summary


@dataclass(frozen=True, slots=True)
class SeedSummary:
    """Rows the seeder inserted this time (zero everywhere on a repeated seed)."""

    currencies: int
    warehouses: int
    products: int
    items: int
    stock_quants: int
    accounts: int
    contacts: int
    linked_customers: int
    erp_only_customers: int

    @property
    def total(self) -> int:
        return (
            self.currencies
            + self.warehouses
            + self.products
            + self.items
            + self.stock_quants
            + self.accounts
            + self.contacts
            + self.linked_customers
            + self.erp_only_customers
        )


async def seed(
    crm_dsn: str,
    erp_dsn: str,
    *,
    seed: int = 42,
    products: int = 200,
    accounts: int = 100,
    warehouses: int = 3,
) -> SeedSummary:
    """Fill both reference databases with master data; idempotent for equal arguments."""
    if products < 1 or accounts < 1:
        raise ValueError("products and accounts must be positive")
    rng = random.Random(f"ambidex-seed:{seed}")
    product_specs = catalog.products(rng, products)
    warehouse_specs = catalog.warehouses(warehouses)
    account_specs = [catalog.account(rng, serial) for serial in range(1, accounts + 1)]
    contact_specs = [
        [catalog.contact(rng, a.name) for _ in range(rng.randint(1, 3))] for a in account_specs
    ]
    linked = [
        a.currency_code != "JPY" and rng.random() < LINKED_CUSTOMER_SHARE for a in account_specs
    ]
    erp_only = [
        catalog.account(rng, 900_000 + n)
        for n in range(max(1, int(accounts * ERP_ONLY_CUSTOMER_SHARE)))
    ]
    erp_only = [a for a in erp_only if a.currency_code != "JPY"]
    stock_plan: list[tuple[int, int, Decimal]] = []  # (product index, warehouse index, qty)
    for p_index, p in enumerate(product_specs):
        for w_index in range(len(warehouse_specs)):
            if p.make_to_order:
                qty = Decimal(rng.choice((0, 0, 0, 1, 2, 5)))
            elif rng.random() < 0.1:
                qty = Decimal(0)
            else:
                qty = Decimal(rng.randint(20, 600))
            stock_plan.append((p_index, w_index, qty))

    crm = await asyncpg.connect(crm_dsn)
    erp = await asyncpg.connect(erp_dsn)
    try:
        async with erp.transaction():
            currencies = await erp.fetch(
                """INSERT INTO erp.currency (code, name, decimal_places, active)
                   SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::bool[])
                   ON CONFLICT (code) DO NOTHING RETURNING id""",
                [c[0] for c in catalog.ERP_CURRENCIES],
                [c[1] for c in catalog.ERP_CURRENCIES],
                [c[2] for c in catalog.ERP_CURRENCIES],
                [True] * len(catalog.ERP_CURRENCIES),
            )
            wh_rows = await erp.fetch(
                """INSERT INTO erp.warehouse (code, name, city, country_code)
                   SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
                   ON CONFLICT (code) DO NOTHING RETURNING id""",
                [w.code for w in warehouse_specs],
                [w.name for w in warehouse_specs],
                [w.city for w in warehouse_specs],
                [w.country_code for w in warehouse_specs],
            )
            item_rows = await erp.fetch(
                """INSERT INTO erp.item (sku, name, uom, standard_cost, list_price,
                                         currency_code, make_to_order, lead_time_days, active)
                   SELECT s, n, u, c, p, $6, m, l, a
                   FROM unnest($1::text[], $2::text[], $3::text[], $4::numeric[],
                               $5::numeric[], $7::bool[], $8::int[], $9::bool[])
                        AS t(s, n, u, c, p, m, l, a)
                   ON CONFLICT (sku) DO NOTHING RETURNING id""",
                [p.sku for p in product_specs],
                [p.name for p in product_specs],
                [p.uom for p in product_specs],
                [p.standard_cost for p in product_specs],
                [p.list_price for p in product_specs],
                catalog.CATALOGUE_CURRENCY,
                [p.make_to_order for p in product_specs],
                [p.lead_time_days for p in product_specs],
                [p.active for p in product_specs],
            )
            item_ids = dict(
                await erp.fetch(
                    "SELECT sku, id FROM erp.item WHERE sku = ANY($1::text[])",
                    [p.sku for p in product_specs],
                )
            )
            wh_ids = dict(
                await erp.fetch(
                    "SELECT code, id FROM erp.warehouse WHERE code = ANY($1::text[])",
                    [w.code for w in warehouse_specs],
                )
            )
            quant_rows = await erp.fetch(
                """INSERT INTO erp.stock_quant (item_id, warehouse_id, quantity)
                   SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::numeric[])
                   ON CONFLICT (item_id, warehouse_id) DO NOTHING RETURNING id""",
                [item_ids[product_specs[p].sku] for p, _, _ in stock_plan],
                [wh_ids[warehouse_specs[w].code] for _, w, _ in stock_plan],
                [q for _, _, q in stock_plan],
            )

        async with crm.transaction():
            product_rows = await crm.fetch(
                """INSERT INTO crm.product (sku, name, uom, list_price, currency_code, active)
                   SELECT s, n, u, p, $5, a
                   FROM unnest($1::text[], $2::text[], $3::text[], $4::numeric[], $6::bool[])
                        AS t(s, n, u, p, a)
                   ON CONFLICT (sku) DO NOTHING RETURNING id""",
                [p.sku for p in product_specs],
                [p.name for p in product_specs],
                [p.uom for p in product_specs],
                [p.list_price for p in product_specs],
                catalog.CATALOGUE_CURRENCY,
                [p.active for p in product_specs],
            )
            existing = {
                r["vat_number"]
                for r in await crm.fetch(
                    "SELECT vat_number FROM crm.account WHERE vat_number = ANY($1::text[])",
                    [a.vat_number for a in account_specs],
                )
            }
            new_accounts = 0
            new_contacts = 0
            for spec, contacts in zip(account_specs, contact_specs, strict=True):
                if spec.vat_number in existing:
                    continue
                account_id = await crm.fetchval(
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
                new_accounts += 1
                for position, c in enumerate(contacts):
                    await crm.execute(
                        """INSERT INTO crm.contact (account_id, first_name, last_name, email,
                               phone, job_title, is_billing_contact)
                           VALUES ($1, $2, $3, $4, $5, $6, $7)""",
                        account_id,
                        c.first_name,
                        c.last_name,
                        c.email,
                        c.phone,
                        c.job_title,
                        position == 0,
                    )
                    new_contacts += 1
            account_ids = dict(
                await crm.fetch(
                    "SELECT vat_number, min(id) FROM crm.account WHERE vat_number = ANY($1::text[])"
                    " GROUP BY vat_number",
                    [a.vat_number for a in account_specs],
                )
            )

        async with erp.transaction():
            linked_specs = [
                a for a, is_linked in zip(account_specs, linked, strict=True) if is_linked
            ]
            linked_rows = await erp.fetch(
                """INSERT INTO erp.customer (name, street, city, postal_code, country_code,
                       vat_number, currency_code, origin, crm_account_id)
                   SELECT n, s, c, p, cc, v, cur, 'erp', a
                   FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                               $6::text[], $7::text[], $8::bigint[])
                        AS t(n, s, c, p, cc, v, cur, a)
                   ON CONFLICT (crm_account_id) WHERE crm_account_id IS NOT NULL DO NOTHING
                   RETURNING id""",
                [a.name for a in linked_specs],
                [a.street for a in linked_specs],
                [a.city for a in linked_specs],
                [a.postal_code for a in linked_specs],
                [a.country_code for a in linked_specs],
                [a.vat_number for a in linked_specs],
                [a.currency_code for a in linked_specs],
                [account_ids[a.vat_number] for a in linked_specs],
            )
            erp_only_rows = await erp.fetch(
                """INSERT INTO erp.customer (code, name, street, city, postal_code,
                       country_code, vat_number, currency_code, origin)
                   SELECT 'E' || v, n, s, c, p, cc, v, cur, 'erp'
                   FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                               $6::text[], $7::text[]) AS t(n, s, c, p, cc, v, cur)
                   ON CONFLICT (code) DO NOTHING RETURNING id""",
                [a.name for a in erp_only],
                [a.street for a in erp_only],
                [a.city for a in erp_only],
                [a.postal_code for a in erp_only],
                [a.country_code for a in erp_only],
                [a.vat_number for a in erp_only],
                [a.currency_code for a in erp_only],
            )
    finally:
        await crm.close()
        await erp.close()

    return SeedSummary(
        currencies=len(currencies),
        warehouses=len(wh_rows),
        products=len(product_rows),
        items=len(item_rows),
        stock_quants=len(quant_rows),
        accounts=new_accounts,
        contacts=new_contacts,
        linked_customers=len(linked_rows),
        erp_only_customers=len(erp_only_rows),
    )

-- customer-value write-back (schema crm_integration, never captured).
-- Idempotent: safe to apply any number of times.
--
-- Per CRM account, month and currency: what the customer brought (CRM) beside what
-- serving them cost (ERP), as defined in docs/customer-value.md and computed by
-- services/customer_value (figures.py). Every amount is in the row's currency, never
-- converted; money is numeric(18,2). ERP costs count for the account its ERP customer
-- is linked to (erp.customer.crm_account_id). Written with position-guarded upserts
-- (services/shared/sinks.py): the figures derive from BOTH databases and receivables'
-- published positions, whose positions are not comparable, so source_commit_lsn /
-- source_lsn hold the service's own write position, as crm_integration.availability.
-- Value columns are nullable because a tombstone clears them; readers filter NOT deleted.
CREATE TABLE IF NOT EXISTS crm_integration.customer_value (
    account_id          bigint NOT NULL,              -- crm.account.id
    month               date NOT NULL,                -- first day of the month (UTC)
    currency_code       char(3) NOT NULL,
    erp_customer_id     bigint,                       -- erp.customer.id linked to the account
    revenue_booked      numeric(18,2),                -- confirmed orders + contracts without one
    orders_booked       integer,
    contracts_booked    integer,
    invoiced            numeric(18,2),                -- receivables, contracts started this month
    collected           numeric(18,2),
    outstanding         numeric(18,2),
    cost_of_goods       numeric(18,2),                -- shipped quantity x unit cost
    production_standard numeric(18,2),                -- done production orders at standard
    production_actual   numeric(18,2),                -- material + labour + machine
    production_variance numeric(18,2),                -- actual - standard
    rework              numeric(18,2),                -- failed inspections' rework cost
    freight             numeric(18,2),
    cost_to_serve       numeric(18,2),                -- goods + variance + rework + freight
    margin              numeric(18,2),                -- revenue_booked - cost_to_serve
    production_orders   integer,
    failed_inspections  integer,
    shipments           integer,
    service_cases       integer,                      -- crm.service_case opened this month
    sources             jsonb,   -- {"erp.shipment": {"amount": "12.00", "rows": 3}, ...}
    as_of               timestamptz,
    source_commit_lsn   bigint NOT NULL,
    source_lsn          bigint NOT NULL,
    deleted             boolean NOT NULL DEFAULT false,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, month, currency_code)
);
CREATE INDEX IF NOT EXISTS customer_value_month_idx
    ON crm_integration.customer_value (month, margin) WHERE NOT deleted;

GRANT USAGE ON SCHEMA crm_integration TO ambidex_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON crm_integration.customer_value TO ambidex_app;

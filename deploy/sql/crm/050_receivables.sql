-- receivables write-back (schema crm_integration, never captured).
-- Idempotent: safe to apply any number of times.
--
-- What a salesperson sees without asking finance, per CRM contract, installment and
-- customer (figures as defined in services/receivables/rules.py), and the open
-- discrepancies between the contract and the ERP's invoices and payments.
-- Every amount is in the row's currency, never converted; money is numeric(18,2).
-- Written by the service with services/shared/sinks.py (position-guarded upserts,
-- tombstones): the figures derive from BOTH databases, whose LSNs are not comparable, so
-- source_commit_lsn / source_lsn hold the service's own write position (as
-- inventory-projection's availability). Value columns are nullable because a tombstone
-- clears them; readers filter NOT deleted. Id lists and reasons are jsonb arrays (the
-- sink does not write array columns).

-- One row per CRM contract (also published on ambidex.receivable-position).
CREATE TABLE IF NOT EXISTS crm_integration.receivable_position (
    contract_id        bigint PRIMARY KEY,            -- crm.contract.id
    contract_number    text,
    account_id         bigint,                        -- crm.account.id
    state              text,                          -- crm.contract.state
    currency_code      char(3),
    contracted         numeric(18,2),                 -- crm.contract.total_amount
    installments       integer,
    scheduled          numeric(18,2),
    invoiced           numeric(18,2),
    paid               numeric(18,2),
    outstanding        numeric(18,2),
    overdue            numeric(18,2),
    overdue_1_30       numeric(18,2),
    overdue_31_60      numeric(18,2),
    overdue_61_90      numeric(18,2),
    overdue_over_90    numeric(18,2),
    next_due_date      date,
    next_due_amount    numeric(18,2),
    incomplete         jsonb,                         -- ["<table> <id>: <reason>", ...]
    as_of              date,
    source_commit_lsn  bigint NOT NULL,
    source_lsn         bigint NOT NULL,
    deleted            boolean NOT NULL DEFAULT false,
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS receivable_position_account_idx
    ON crm_integration.receivable_position (account_id) WHERE NOT deleted;

-- One row per installment of a contract ("paid on 12 Nov, 8,000 of 10,000").
CREATE TABLE IF NOT EXISTS crm_integration.receivable_installment (
    contract_id        bigint NOT NULL,
    seq                integer NOT NULL,
    installment_id     bigint,                        -- crm.installment.id
    due_date           date,
    currency_code      char(3),
    scheduled          numeric(18,2),
    invoiced           numeric(18,2),
    paid               numeric(18,2),
    outstanding        numeric(18,2),
    overdue            numeric(18,2),
    aging_bucket       text CHECK (aging_bucket IN ('0-30', '31-60', '61-90', '90+')),
    waived             boolean,
    last_paid_on       date,
    erp_invoice_ids    jsonb,                         -- [erp.invoice.id, ...]
    as_of              date,
    source_commit_lsn  bigint NOT NULL,
    source_lsn         bigint NOT NULL,
    deleted            boolean NOT NULL DEFAULT false,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (contract_id, seq)
);

-- One row per CRM account and currency, over its contracts in that currency.
CREATE TABLE IF NOT EXISTS crm_integration.receivable_customer (
    account_id         bigint NOT NULL,
    currency_code      char(3) NOT NULL,
    contracts          integer,
    contracted         numeric(18,2),
    scheduled          numeric(18,2),
    invoiced           numeric(18,2),
    paid               numeric(18,2),
    outstanding        numeric(18,2),
    overdue            numeric(18,2),
    overdue_1_30       numeric(18,2),
    overdue_31_60      numeric(18,2),
    overdue_61_90      numeric(18,2),
    overdue_over_90    numeric(18,2),
    next_due_date      date,
    next_due_amount    numeric(18,2),
    as_of              date,
    source_commit_lsn  bigint NOT NULL,
    source_lsn         bigint NOT NULL,
    deleted            boolean NOT NULL DEFAULT false,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, currency_code)
);

-- The open discrepancies (NOT deleted); a resolved one is a tombstone. Raised and
-- resolved events are published on ambidex.receivable-discrepancies.
CREATE TABLE IF NOT EXISTS crm_integration.receivable_discrepancy (
    discrepancy_id     text PRIMARY KEY,              -- kind/ids, e.g. payment_over/invoice=88
    kind               text,
    reason             text,
    currency_code      text,
    crm_amount         numeric(18,2),
    erp_amount         numeric(18,2),
    contract_id        bigint,
    installment_seq    integer,
    crm_installment_id bigint,
    erp_invoice_ids    jsonb,
    erp_payment_ids    jsonb,
    erp_customer_id    bigint,
    due_date           date,
    raised_at          timestamptz,
    source_commit_lsn  bigint NOT NULL,
    source_lsn         bigint NOT NULL,
    deleted            boolean NOT NULL DEFAULT false,
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS receivable_discrepancy_contract_idx
    ON crm_integration.receivable_discrepancy (contract_id) WHERE NOT deleted;
CREATE INDEX IF NOT EXISTS receivable_discrepancy_kind_idx
    ON crm_integration.receivable_discrepancy (kind) WHERE NOT deleted;

GRANT USAGE ON SCHEMA crm_integration TO ambidex_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON crm_integration.receivable_position,
    crm_integration.receivable_installment, crm_integration.receivable_customer,
    crm_integration.receivable_discrepancy TO ambidex_app;

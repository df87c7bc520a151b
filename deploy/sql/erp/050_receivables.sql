-- receivables: the expected-receivables plan finance works from (schema
-- erp_integration, never captured, so no write here echoes back into the pipeline).
-- Idempotent: safe to apply any number of times.
--
-- An active CRM contract's installment schedule is handed to the ERP here, kept in
-- step when the CRM amends it, and marked ended when the contract is terminated
-- (services/receivables/fold.py: PlanHeader, PlanEntry). Rows carry the CRM contract
-- id and installment number, as erp.invoice.crm_contract_id / installment_seq do.
-- Written with services/shared/sinks.py (position-guarded upserts; an installment the
-- CRM removed is a tombstone): source_commit_lsn / source_lsn hold CRM positions (the
-- plan derives from the CRM alone).

-- The head of a contract's plan. status: draft (not handed over yet) | active |
-- completed | ended (contract terminated) | withdrawn (contract deleted).
CREATE TABLE IF NOT EXISTS erp_integration.expected_receivable_plan (
    crm_contract_id     bigint PRIMARY KEY,
    status              text NOT NULL
                        CHECK (status IN ('draft', 'active', 'completed', 'ended', 'withdrawn')),
    crm_contract_number text,
    crm_account_id      bigint,                       -- = erp.customer.crm_account_id
    currency_code       char(3),
    contract_total      numeric(18,2),
    source_commit_lsn   bigint NOT NULL,
    source_lsn          bigint NOT NULL,
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- One row per installment of the plan.
CREATE TABLE IF NOT EXISTS erp_integration.expected_receivable (
    crm_contract_id     bigint NOT NULL,
    installment_seq     integer NOT NULL,
    crm_installment_id  bigint,
    due_date            date,
    amount              numeric(18,2),
    currency_code       char(3),
    waived              boolean,
    source_commit_lsn   bigint NOT NULL,
    source_lsn          bigint NOT NULL,
    deleted             boolean NOT NULL DEFAULT false,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (crm_contract_id, installment_seq)
);
CREATE INDEX IF NOT EXISTS expected_receivable_due_idx
    ON erp_integration.expected_receivable (due_date) WHERE NOT deleted;

-- What finance reads: every handed-over installment with its plan's status, the ERP
-- customer, and what the ERP has invoiced for it so far (cancelled and draft invoices
-- excluded). A draft or withdrawn plan is not shown.
CREATE OR REPLACE VIEW erp_integration.expected_receivables AS
SELECT e.crm_contract_id,
       p.crm_contract_number,
       e.installment_seq,
       e.crm_installment_id,
       p.status                 AS plan_status,
       c.id                     AS customer_id,
       c.code                   AS customer_code,
       e.due_date,
       e.amount,
       e.currency_code,
       e.waived,
       coalesce((SELECT sum(i.amount_total) FROM erp.invoice i
                 WHERE i.crm_contract_id = e.crm_contract_id
                   AND i.installment_seq = e.installment_seq
                   AND i.state IN ('posted', 'paid')), 0) AS invoiced
FROM erp_integration.expected_receivable e
JOIN erp_integration.expected_receivable_plan p ON p.crm_contract_id = e.crm_contract_id
LEFT JOIN erp.customer c ON c.crm_account_id = p.crm_account_id
WHERE NOT e.deleted AND p.status IN ('active', 'completed', 'ended');

GRANT USAGE ON SCHEMA erp_integration TO ambidex_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON erp_integration.expected_receivable_plan,
    erp_integration.expected_receivable TO ambidex_app;
GRANT SELECT ON erp_integration.expected_receivables TO ambidex_app;

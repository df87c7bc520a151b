-- order-sync's ERP-side state (schema erp_integration, never captured).
-- Idempotent: safe to apply any number of times. Everything here is written in the
-- SAME ERP transaction as the ERP orders/lines/customers it describes, so it can never
-- disagree with them (see services/order_sync/store.py).
--
-- order_state: the fold of each CRM order's header and line changes (as JSON, each row
-- with its source position; see services/order_sync/codec.py), plus the last decision.
-- It is order-sync's materialized CRM input: a line-only amendment is decided against
-- the whole order held here. The row is locked (SELECT ... FOR UPDATE) while an order
-- is decided, so two workers (e.g. during a rebalance) serialize per CRM order.
CREATE TABLE IF NOT EXISTS erp_integration.order_state (
    crm_order_id       bigint PRIMARY KEY,
    draft              jsonb,
    last_decision      text CHECK (last_decision IN
                           ('create', 'amend', 'cancel', 'reject', 'conflict', 'nothing')),
    crm_order_version  integer,
    crm_account_id     bigint,
    source_commit_lsn  bigint NOT NULL DEFAULT 0,   -- newest CRM position folded in
    source_lsn         bigint NOT NULL DEFAULT 0,
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS order_state_rejected_idx
    ON erp_integration.order_state (crm_account_id) WHERE last_decision = 'reject';

-- order_identity: CRM order <-> ERP order, first-class and queryable (also published,
-- compacted, on ambidex.order-identity). Position-guarded: a stale CRM version never
-- overwrites a newer one.
CREATE TABLE IF NOT EXISTS erp_integration.order_identity (
    crm_order_id       bigint PRIMARY KEY,
    erp_order_id       bigint NOT NULL UNIQUE,
    erp_order_name     text NOT NULL,
    crm_order_number   text NOT NULL,
    crm_order_version  integer NOT NULL,
    crm_account_id     bigint NOT NULL,
    erp_customer_id    bigint NOT NULL,
    source_commit_lsn  bigint NOT NULL,
    source_lsn         bigint NOT NULL,
    updated_at         timestamptz NOT NULL DEFAULT now()
);

-- written_row: per ERP row order-sync wrote, the fingerprints of its last writes
-- (newest first, services/order_sync/domain.py row_fingerprint or 'deleted'), so the
-- ERP change stream of order-sync's own writes is recognised as an echo.
CREATE TABLE IF NOT EXISTS erp_integration.written_row (
    tbl                text NOT NULL CHECK (tbl IN ('sales_order', 'sales_order_line')),
    row_id             bigint NOT NULL,
    fingerprints       text[] NOT NULL,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tbl, row_id)
);

GRANT USAGE ON SCHEMA erp_integration TO ambidex_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON erp_integration.order_state,
    erp_integration.order_identity, erp_integration.written_row TO ambidex_app;

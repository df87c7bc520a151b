-- order-sync write-back (schema crm_integration, never captured).
-- Idempotent: safe to apply any number of times.
--
-- order_sync_status: one row per CRM order order-sync has decided about. Two sources
-- write it, each guarded by its own source position (LSNs of the two databases are not
-- comparable):
--   * the CRM side (sync_state, reason, crm_order_version; CRM position columns
--     source_commit_lsn/source_lsn): synced | rejected | conflict | cancelled;
--   * the ERP side (progress; ERP position columns erp_commit_lsn/erp_lsn):
--     accepted | reserved | in_production | partially_shipped | shipped | invoiced |
--     cancelled, from ERP changes that are not order-sync's own writes.
-- status is what the CRM shows: a rejection, conflict or CRM cancellation wins;
-- otherwise the ERP progress once there is any; otherwise 'synced'.
CREATE TABLE IF NOT EXISTS crm_integration.order_sync_status (
    crm_order_id       bigint PRIMARY KEY,
    sync_state         text CHECK (sync_state IN ('synced', 'rejected', 'conflict', 'cancelled')),
    progress           text CHECK (progress IN ('accepted', 'reserved', 'in_production',
                                               'partially_shipped', 'shipped', 'invoiced',
                                               'cancelled')),
    status             text GENERATED ALWAYS AS (
                           CASE WHEN sync_state IN ('rejected', 'conflict', 'cancelled')
                                    THEN sync_state
                                WHEN progress IS NOT NULL THEN progress
                                ELSE coalesce(sync_state, 'synced') END) STORED,
    reason             text,
    crm_order_version  integer,
    erp_order_id       bigint,
    erp_order_name     text,
    source_commit_lsn  bigint NOT NULL DEFAULT 0,
    source_lsn         bigint NOT NULL DEFAULT 0,
    erp_commit_lsn     bigint NOT NULL DEFAULT 0,
    erp_lsn            bigint NOT NULL DEFAULT 0,
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS order_sync_status_status_idx
    ON crm_integration.order_sync_status (status);

GRANT USAGE ON SCHEMA crm_integration TO ambidex_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON crm_integration.order_sync_status TO ambidex_app;

-- demand signals (docs/demand-signals.md): the supply priorities planners work from
-- (schema erp_integration, never captured). Idempotent: safe to apply any number of times.
--
-- One row per item and warehouse ('*': over all warehouses) while a CRM demand surge is
-- open (services/demand_signals/surge.py): demand above its baseline, or projected
-- demand over the item's lead time beyond available-to-promise plus incoming
-- production. Updated while its figures move; a tombstone (deleted) when it clears.
-- Written with services/shared/sinks.py: source_commit_lsn / source_lsn hold the
-- service's own write position (as of in epoch milliseconds, revision), as
-- crm_integration.availability (the figures derive from both databases).
CREATE TABLE IF NOT EXISTS erp_integration.supply_priority (
    item_id             bigint NOT NULL,             -- erp.item.id
    warehouse_code      text NOT NULL,               -- erp.warehouse.code, '*' = overall
    warehouse_id        bigint,                      -- NULL = overall
    sku                 text,
    surge_id            text,                        -- '<sku>:<warehouse_code>:<n>'
    priority            text CHECK (priority IN ('high', 'normal', 'watch')),
    shortfall           numeric(14,3),               -- 0 when only above baseline
    needed_by           date,                        -- NULL when supply covers the lead time
    rate                numeric(14,3),               -- weighted CRM demand a day, last 7 days
    baseline            numeric(14,3),               -- the same over the 28 days before
    projected           numeric(14,3),               -- rate x lead time
    supply              numeric(14,3),               -- ATP + incoming within the lead time
    lead_time_days      integer,
    reasons             jsonb,                       -- ["above_baseline", "shortfall"]
    evidence            jsonb,                       -- [{"document": "quote", "id", "quantity"}]
    raised_at           date,
    source_commit_lsn   bigint NOT NULL,
    source_lsn          bigint NOT NULL,
    deleted             boolean NOT NULL DEFAULT false,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (item_id, warehouse_code)
);
CREATE INDEX IF NOT EXISTS supply_priority_open_idx
    ON erp_integration.supply_priority (priority, needed_by) WHERE NOT deleted;

GRANT USAGE ON SCHEMA erp_integration TO ambidex_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON erp_integration.supply_priority TO ambidex_app;

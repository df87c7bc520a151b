-- production-status write-back (schema crm_integration, never captured).
-- Idempotent: safe to apply any number of times.
--
-- What the ERP knows about each CRM order's production, quality control and shipping,
-- folded by services/production_status (status.py: stages and the predicted-delivery
-- formula; risk.py: delay-risk levels; triage.py: complaint triage). Written with
-- position-guarded upserts (services/shared/sinks.py): a status derives from BOTH
-- databases and the order identity, whose positions are not comparable, so
-- source_commit_lsn / source_lsn hold the service's own write position (as of, in epoch
-- milliseconds, and a revision), as in crm_integration.availability. Value columns are
-- nullable because a tombstone clears them; readers filter NOT deleted. Lists and
-- evidence are jsonb (the sink does not take array columns); quantities numeric(14,3).

-- One row per CRM order: stage, quantities, carrier/tracking of the latest shipment,
-- the promised and predicted dates (with the prediction's inputs) and the current risk.
CREATE TABLE IF NOT EXISTS crm_integration.fulfilment_status (
    crm_order_id       bigint PRIMARY KEY,           -- crm.sales_order.id
    crm_order_number   text,
    erp_order_id       bigint,                       -- erp.sales_order.id (order identity)
    erp_order_name     text,
    stage              text CHECK (stage IN ('awaiting_production', 'in_production',
                           'in_quality_control', 'qc_failed_rework', 'ready',
                           'partially_shipped', 'shipped', 'delivered', 'cancelled')),
    ordered            numeric(14,3),
    produced           numeric(14,3),
    passed             numeric(14,3),
    shipped            numeric(14,3),
    delivered          numeric(14,3),
    lines              integer,
    shipments          integer,
    production_orders  jsonb,            -- [{"stage": "qc", "count": 2}, ...]
    carrier            text,
    tracking_ref       text,
    promised_date      date,             -- crm.sales_order.requested_date
    predicted_p50      date,
    predicted_p90      date,
    prediction_inputs  jsonb,            -- [{"stage", "warehouse_id", "carrier", "since",
                                         --   "p50_minutes", "p90_minutes", "samples",
                                         --   "basis"}, ...]
    risk_level         text CHECK (risk_level IN ('none', 'at_risk', 'late')),
    risk_reason        text,
    missing            jsonb,            -- ["ERP order 12 not seen yet", ...]
    updated_at         timestamptz,
    source_commit_lsn  bigint NOT NULL,
    source_lsn         bigint NOT NULL,
    deleted            boolean NOT NULL DEFAULT false
);
CREATE INDEX IF NOT EXISTS fulfilment_status_stage_idx
    ON crm_integration.fulfilment_status (stage) WHERE NOT deleted;
CREATE INDEX IF NOT EXISTS fulfilment_status_risk_idx
    ON crm_integration.fulfilment_status (risk_level, predicted_p90)
    WHERE NOT deleted AND risk_level <> 'none';

-- One row per ERP order line of a CRM order: its own stage, quantities and dates.
CREATE TABLE IF NOT EXISTS crm_integration.fulfilment_line (
    crm_order_id       bigint NOT NULL,
    line_no            integer NOT NULL,             -- erp.sales_order_line.line_no
    erp_line_id        bigint,
    item_id            bigint,                       -- erp.item.id
    stage              text,
    ordered            numeric(14,3),
    produced           numeric(14,3),
    passed             numeric(14,3),
    shipped            numeric(14,3),
    delivered          numeric(14,3),
    carrier            text,
    tracking_ref       text,
    predicted_p50      date,
    predicted_p90      date,
    source_commit_lsn  bigint NOT NULL,
    source_lsn         bigint NOT NULL,
    deleted            boolean NOT NULL DEFAULT false,
    PRIMARY KEY (crm_order_id, line_no)
);

-- Every delay-risk event (raised or cleared), as on ambidex.delay-risks; inserted once
-- per risk_id (ON CONFLICT DO NOTHING), so a redelivery writes nothing.
CREATE TABLE IF NOT EXISTS crm_integration.delay_risk_event (
    risk_id            text PRIMARY KEY,             -- '<crm_order_id>:<n>'
    crm_order_id       bigint NOT NULL,
    level              text NOT NULL CHECK (level IN ('none', 'at_risk', 'late')),
    previous_level     text NOT NULL CHECK (previous_level IN ('none', 'at_risk', 'late')),
    cleared            boolean NOT NULL,
    reason             text,
    findings           jsonb NOT NULL,   -- [{"reason", "level", "evidence": {...}}, ...]
    promised_date      date,
    predicted_p50      date,
    predicted_p90      date,
    detected_at        timestamptz NOT NULL,
    CHECK (cleared = (level = 'none'))
);
CREATE INDEX IF NOT EXISTS delay_risk_event_order_idx
    ON crm_integration.delay_risk_event (crm_order_id, detected_at);

-- Per CRM service case: which stage of its order failed or ran late, with the evidence.
CREATE TABLE IF NOT EXISTS crm_integration.case_triage (
    case_id            bigint PRIMARY KEY,           -- crm.service_case.id
    case_number        text,
    crm_order_id       bigint,
    erp_order_id       bigint,
    culprit            text CHECK (culprit IN ('production', 'quality', 'transport', 'none')),
    summary            text,
    evidence           jsonb,            -- [{"stage", "subject", "verdict", "facts": {...}}]
    missing            jsonb,
    triaged_at         timestamptz,
    source_commit_lsn  bigint NOT NULL,
    source_lsn         bigint NOT NULL,
    deleted            boolean NOT NULL DEFAULT false
);
CREATE INDEX IF NOT EXISTS case_triage_order_idx
    ON crm_integration.case_triage (crm_order_id) WHERE NOT deleted;

-- The service desk's view: each case with its order's status and its triage beside it.
CREATE OR REPLACE VIEW crm_integration.service_case_triage AS
SELECT c.id                AS case_id,
       c.number            AS case_number,
       c.account_id,
       c.sales_order_id    AS crm_order_id,
       c.category,
       c.priority,
       c.state             AS case_state,
       c.opened_at,
       t.culprit,
       t.summary,
       t.evidence,
       t.missing           AS triage_missing,
       t.triaged_at,
       f.stage,
       f.carrier,
       f.tracking_ref,
       f.promised_date,
       f.predicted_p50,
       f.predicted_p90,
       f.risk_level,
       f.risk_reason
FROM crm.service_case c
LEFT JOIN crm_integration.case_triage t ON t.case_id = c.id AND NOT t.deleted
LEFT JOIN crm_integration.fulfilment_status f
       ON f.crm_order_id = c.sales_order_id AND NOT f.deleted;

GRANT USAGE ON SCHEMA crm_integration TO ambidex_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON crm_integration.fulfilment_status,
    crm_integration.fulfilment_line, crm_integration.delay_risk_event,
    crm_integration.case_triage TO ambidex_app;
GRANT SELECT ON crm_integration.service_case_triage TO ambidex_app;

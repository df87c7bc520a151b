-- inventory-projection write-back (schema crm_integration, never captured).
-- Idempotent: safe to apply any number of times.
--
-- availability: one row per ERP item and warehouse, plus one per item over all
-- warehouses (warehouse_code '*', warehouse_id NULL); figures as defined in
-- services/inventory_projection/domain.py:
--   available_to_promise = on_hand - reserved - pending_crm_demand
--   incoming = open production orders by planned finish date, as jsonb
--              [{"date": "YYYY-MM-DD" | null, "quantity": "12.000"}, ...] ascending,
--              undated last; quantities as decimal text (never floats).
-- Written by the service with services/shared/sinks.py (position-guarded upserts,
-- tombstones): source_commit_lsn / source_lsn hold RowStore.write_position(), i.e.
-- (as_of in epoch milliseconds, projection revision), because availability derives
-- from BOTH databases and their LSNs are not comparable. Value columns are nullable
-- because a tombstone clears them; readers filter NOT deleted.

CREATE TABLE IF NOT EXISTS crm_integration.availability (
    item_id              bigint NOT NULL,           -- erp.item.id
    warehouse_code       text NOT NULL,             -- erp.warehouse.code, '*' = overall
    sku                  text,                      -- erp.item.sku = crm.product.sku
    warehouse_id         bigint,                    -- erp.warehouse.id, NULL = overall
    on_hand              numeric(14,3),
    reserved             numeric(14,3),
    pending_crm_demand   numeric(14,3),
    available_to_promise numeric(14,3),
    next_incoming_date   date,
    next_incoming_qty    numeric(14,3),
    incoming             jsonb,
    as_of                timestamptz,
    source_commit_lsn    bigint NOT NULL,
    source_lsn           bigint NOT NULL,
    deleted              boolean NOT NULL DEFAULT false,
    PRIMARY KEY (item_id, warehouse_code),
    CHECK ((warehouse_code = '*') = (warehouse_id IS NULL) OR deleted)
);
CREATE INDEX IF NOT EXISTS availability_sku_idx
    ON crm_integration.availability (sku, warehouse_code) WHERE NOT deleted;

-- The quoting screen's one query: per line of an open quote (draft or sent), whether
-- its quantity can be promised now (overall available_to_promise >= quantity; quotes
-- carry no warehouse) and otherwise from which date: the first incoming date at which
-- available_to_promise plus the cumulative incoming covers the quantity, never before
-- today; NULL when even all dated incoming does not cover it, or when the product has
-- no availability row (unknown SKU in the ERP). Each line is judged on its own.
CREATE OR REPLACE VIEW crm_integration.quote_line_availability AS
SELECT q.id                    AS quote_id,
       q.number                AS quote_number,
       q.state                 AS quote_state,
       q.account_id,
       ql.id                   AS quote_line_id,
       ql.line_no,
       ql.product_id,
       p.sku,
       ql.quantity,
       a.item_id               AS erp_item_id,
       a.on_hand,
       a.reserved,
       a.pending_crm_demand,
       a.available_to_promise,
       a.next_incoming_date,
       a.next_incoming_qty,
       coalesce(a.available_to_promise >= ql.quantity, false) AS available_now,
       CASE
           WHEN a.available_to_promise >= ql.quantity THEN current_date
           ELSE (SELECT min(greatest(c.d, current_date))
                 FROM (SELECT (e ->> 'date')::date AS d,
                              sum((e ->> 'quantity')::numeric)
                                  OVER (ORDER BY (e ->> 'date')::date
                                        ROWS UNBOUNDED PRECEDING) AS cumulative
                       FROM jsonb_array_elements(a.incoming) AS e
                       WHERE e ->> 'date' IS NOT NULL) AS c
                 WHERE a.available_to_promise + c.cumulative >= ql.quantity)
       END                     AS available_from,
       a.as_of
FROM crm.quote q
JOIN crm.quote_line ql ON ql.quote_id = q.id
JOIN crm.product p ON p.id = ql.product_id
LEFT JOIN crm_integration.availability a
       ON a.sku = p.sku AND a.warehouse_code = '*' AND NOT a.deleted
WHERE q.state IN ('draft', 'sent');

GRANT USAGE ON SCHEMA crm_integration TO ambidex_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON crm_integration.availability TO ambidex_app;
GRANT SELECT ON crm_integration.quote_line_availability TO ambidex_app;

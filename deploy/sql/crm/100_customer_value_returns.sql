-- customer-value: returns (ERP 100_returns.sql) in the cost to serve (docs/customer-value.md).
-- Idempotent: safe to apply any number of times. Rows written before read as no returns
-- (the service rewrites a month when any of its figures changes; `ambidex reconcile
-- customer-value` finds months still to be written after an upgrade).
ALTER TABLE crm_integration.customer_value
    ADD COLUMN IF NOT EXISTS return_credit   numeric(18,2),  -- credited on returns received
    ADD COLUMN IF NOT EXISTS return_handling numeric(18,2),  -- their handling cost
    ADD COLUMN IF NOT EXISTS returns         integer;        -- erp.return_order received
COMMENT ON COLUMN crm_integration.customer_value.cost_to_serve IS
    'cost_of_goods + production_variance + rework + freight + return_credit + return_handling';

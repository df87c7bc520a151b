-- Reference ERP: schemas and the two platform roles.
-- Idempotent: safe to apply any number of times. Roles are cluster-wide, so the CRM
-- files create them the same way; passwords are set by the caller (never in SQL).

CREATE SCHEMA IF NOT EXISTS erp;              -- source tables (captured by Debezium)
CREATE SCHEMA IF NOT EXISTS erp_integration;  -- write-back tables (never captured)
CREATE SCHEMA IF NOT EXISTS ambidex_cdc;      -- heartbeat table (captured)

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ambidex_cdc') THEN
        CREATE ROLE ambidex_cdc LOGIN REPLICATION;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;  -- created concurrently
END
$$;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ambidex_app') THEN
        CREATE ROLE ambidex_app LOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;

-- Document numbers, as the ERP assigns them (Odoo-style names).
CREATE SEQUENCE IF NOT EXISTS erp.customer_code_seq;
CREATE SEQUENCE IF NOT EXISTS erp.sales_order_name_seq;
CREATE SEQUENCE IF NOT EXISTS erp.production_order_name_seq;
CREATE SEQUENCE IF NOT EXISTS erp.shipment_name_seq;
CREATE SEQUENCE IF NOT EXISTS erp.invoice_name_seq;
CREATE SEQUENCE IF NOT EXISTS erp.payment_name_seq;

-- Capture setup for the ERP: replica identity, heartbeat, publication, privileges.

DO $$
DECLARE t text;
BEGIN
    FOR t IN SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'erp' AND c.relkind = 'r' AND c.relreplident <> 'f'
    LOOP
        EXECUTE format('ALTER TABLE erp.%I REPLICA IDENTITY FULL', t);
    END LOOP;
END
$$;

CREATE TABLE IF NOT EXISTS ambidex_cdc.heartbeat (
    id      integer PRIMARY KEY,
    beat_at timestamptz
);
INSERT INTO ambidex_cdc.heartbeat (id, beat_at) VALUES (1, now()) ON CONFLICT (id) DO NOTHING;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'ambidex_erp') THEN
        CREATE PUBLICATION ambidex_erp FOR TABLES IN SCHEMA erp, TABLE ambidex_cdc.heartbeat;
    END IF;
END
$$;

-- Capture user: read the captured schema, beat the heartbeat, nothing else.
GRANT USAGE ON SCHEMA erp TO ambidex_cdc;
GRANT SELECT ON ALL TABLES IN SCHEMA erp TO ambidex_cdc;
ALTER DEFAULT PRIVILEGES IN SCHEMA erp GRANT SELECT ON TABLES TO ambidex_cdc;
GRANT USAGE ON SCHEMA ambidex_cdc TO ambidex_cdc;
GRANT SELECT, INSERT, UPDATE ON ambidex_cdc.heartbeat TO ambidex_cdc;

-- Services: read the source, own the integration schema.
GRANT USAGE ON SCHEMA erp TO ambidex_app;
GRANT SELECT ON ALL TABLES IN SCHEMA erp TO ambidex_app;
ALTER DEFAULT PRIVILEGES IN SCHEMA erp GRANT SELECT ON TABLES TO ambidex_app;
GRANT ALL ON SCHEMA erp_integration TO ambidex_app;
GRANT ALL ON ALL TABLES IN SCHEMA erp_integration TO ambidex_app;
GRANT ALL ON ALL SEQUENCES IN SCHEMA erp_integration TO ambidex_app;
ALTER DEFAULT PRIVILEGES IN SCHEMA erp_integration GRANT ALL ON TABLES TO ambidex_app;
ALTER DEFAULT PRIVILEGES IN SCHEMA erp_integration GRANT ALL ON SEQUENCES TO ambidex_app;

-- order-sync creates and amends ERP orders (and the customers they need).
GRANT INSERT, UPDATE ON erp.customer, erp.sales_order, erp.sales_order_line TO ambidex_app;
GRANT DELETE ON erp.sales_order_line TO ambidex_app;  -- an amendment can remove a line
GRANT USAGE ON SEQUENCE erp.customer_code_seq, erp.sales_order_name_seq TO ambidex_app;

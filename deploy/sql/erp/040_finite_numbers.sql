-- Money and quantity columns hold numbers, never NaN or ±Infinity.
-- Idempotent: safe to apply any number of times.
--
-- PostgreSQL numeric admits 'NaN' (and, unconstrained, ±Infinity), and NaN sorts above
-- every number, so the `>= 0` checks of 010 let it through; Debezium then sends "NAN",
-- which no service can compute with (issue 9). Each numeric column of a captured table
-- gets a CHECK named <table>_<column>_finite. Rows already holding NaN are not touched:
-- the constraint then stays NOT VALID (new writes are checked) and a WARNING names the
-- table; `ambidex reconcile` lists such rows.
DO $$
DECLARE
    target record;
    cname text;
BEGIN
    FOR target IN SELECT * FROM (VALUES
        ('item', 'standard_cost'),
        ('item', 'list_price'),
        ('stock_quant', 'quantity'),
        ('sales_order', 'amount_total'),
        ('sales_order_line', 'quantity'),
        ('sales_order_line', 'unit_price'),
        ('sales_order_line', 'discount_pct'),
        ('sales_order_line', 'qty_reserved'),
        ('sales_order_line', 'qty_delivered'),
        ('sales_order_line', 'qty_invoiced'),
        ('stock_reservation', 'quantity'),
        ('production_order', 'quantity'),
        ('production_order', 'qty_produced'),
        ('shipment_line', 'quantity'),
        ('invoice', 'amount_untaxed'),
        ('invoice', 'amount_tax'),
        ('invoice', 'amount_total'),
        ('invoice', 'amount_residual'),
        ('invoice_line', 'quantity'),
        ('invoice_line', 'unit_price'),
        ('invoice_line', 'discount_pct'),
        ('invoice_line', 'tax_pct'),
        ('invoice_line', 'amount_untaxed'),
        ('invoice_line', 'amount_tax'),
        ('payment', 'amount')
    ) AS t(tbl, col)
    LOOP
        cname := target.tbl || '_' || target.col || '_finite';
        IF NOT EXISTS (
            SELECT 1 FROM pg_constraint
            WHERE conname = cname AND conrelid = format('erp.%I', target.tbl)::regclass
        ) THEN
            EXECUTE format(
                'ALTER TABLE erp.%I ADD CONSTRAINT %I CHECK (%I NOT IN '
                '(''NaN''::numeric, ''Infinity''::numeric, ''-Infinity''::numeric)) NOT VALID',
                target.tbl, cname, target.col);
            BEGIN
                EXECUTE format('ALTER TABLE erp.%I VALIDATE CONSTRAINT %I', target.tbl, cname);
            EXCEPTION WHEN check_violation THEN
                RAISE WARNING 'erp.%.% holds NaN or Infinity in existing rows: constraint % '
                    'left NOT VALID (new rows are checked)', target.tbl, target.col, cname;
            END;
        END IF;
    END LOOP;
END
$$;

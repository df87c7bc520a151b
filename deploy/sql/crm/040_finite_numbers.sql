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
        ('account', 'credit_limit'),
        ('product', 'list_price'),
        ('quote', 'amount_total'),
        ('quote_line', 'quantity'),
        ('quote_line', 'unit_price'),
        ('quote_line', 'discount_pct'),
        ('sales_order', 'amount_total'),
        ('sales_order_line', 'quantity'),
        ('sales_order_line', 'unit_price'),
        ('sales_order_line', 'discount_pct'),
        ('contract', 'total_amount'),
        ('installment', 'amount')
    ) AS t(tbl, col)
    LOOP
        cname := target.tbl || '_' || target.col || '_finite';
        IF NOT EXISTS (
            SELECT 1 FROM pg_constraint
            WHERE conname = cname AND conrelid = format('crm.%I', target.tbl)::regclass
        ) THEN
            EXECUTE format(
                'ALTER TABLE crm.%I ADD CONSTRAINT %I CHECK (%I NOT IN '
                '(''NaN''::numeric, ''Infinity''::numeric, ''-Infinity''::numeric)) NOT VALID',
                target.tbl, cname, target.col);
            BEGIN
                EXECUTE format('ALTER TABLE crm.%I VALIDATE CONSTRAINT %I', target.tbl, cname);
            EXCEPTION WHEN check_violation THEN
                RAISE WARNING 'crm.%.% holds NaN or Infinity in existing rows: constraint % '
                    'left NOT VALID (new rows are checked)', target.tbl, target.col, cname;
            END;
        END IF;
    END LOOP;
END
$$;

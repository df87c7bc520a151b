-- customer-value (docs/customer-value.md): the costs the ERP records, so the cost of
-- serving a customer can be read from its change stream. Idempotent: safe to apply any
-- number of times.
--
-- Modelled on how real ERPs keep them: a production order carries its planned cost at
-- the item's standard (frozen when the order is confirmed, as SAP's standard cost
-- estimate or Odoo's cost at the time) and, once done, its actual cost by cost element
-- (material issued, labour and machine time: Odoo's stock valuation + work-centre
-- costs, SAP's actual costs per cost element); a failed quality inspection its rework
-- cost (SAP QM's appraisal/defect costs); a shipment the carrier's freight charge
-- (Odoo's stock.picking carrier_price); a shipment line the unit cost its goods left
-- the warehouse at (the cost of goods sold, Odoo's stock.move price_unit). All are NULL
-- until the ERP has recorded them. Each amount is in its own currency column, never
-- converted, and never recorded without it (the *_currency_check constraints), so
-- every service reading these rows can type them. The columns are captured like the rest of their tables (090 made the
-- identity FULL and the publication covers the schema), so no grant changes.

ALTER TABLE erp.production_order
    ADD COLUMN IF NOT EXISTS standard_cost numeric(18,2)
        CONSTRAINT production_order_standard_cost_finite CHECK (standard_cost >= 0
            AND standard_cost NOT IN ('NaN'::numeric, 'Infinity'::numeric)),
    ADD COLUMN IF NOT EXISTS material_cost numeric(18,2)
        CONSTRAINT production_order_material_cost_finite CHECK (material_cost >= 0
            AND material_cost NOT IN ('NaN'::numeric, 'Infinity'::numeric)),
    ADD COLUMN IF NOT EXISTS labour_cost numeric(18,2)
        CONSTRAINT production_order_labour_cost_finite CHECK (labour_cost >= 0
            AND labour_cost NOT IN ('NaN'::numeric, 'Infinity'::numeric)),
    ADD COLUMN IF NOT EXISTS machine_cost numeric(18,2)
        CONSTRAINT production_order_machine_cost_finite CHECK (machine_cost >= 0
            AND machine_cost NOT IN ('NaN'::numeric, 'Infinity'::numeric)),
    ADD COLUMN IF NOT EXISTS cost_currency_code char(3) REFERENCES erp.currency (code)
        CONSTRAINT production_order_cost_currency_check CHECK (cost_currency_code IS NOT NULL
            OR num_nulls(standard_cost, material_cost, labour_cost, machine_cost) = 4);

ALTER TABLE erp.quality_inspection
    ADD COLUMN IF NOT EXISTS rework_cost numeric(18,2)
        CONSTRAINT quality_inspection_rework_cost_finite CHECK (rework_cost >= 0
            AND rework_cost NOT IN ('NaN'::numeric, 'Infinity'::numeric)),
    ADD COLUMN IF NOT EXISTS cost_currency_code char(3) REFERENCES erp.currency (code)
        CONSTRAINT quality_inspection_cost_currency_check
        CHECK (cost_currency_code IS NOT NULL OR rework_cost IS NULL);

ALTER TABLE erp.shipment
    ADD COLUMN IF NOT EXISTS freight_cost numeric(18,2)
        CONSTRAINT shipment_freight_cost_finite CHECK (freight_cost >= 0
            AND freight_cost NOT IN ('NaN'::numeric, 'Infinity'::numeric)),
    ADD COLUMN IF NOT EXISTS freight_currency_code char(3) REFERENCES erp.currency (code)
        CONSTRAINT shipment_freight_currency_check
        CHECK (freight_currency_code IS NOT NULL OR freight_cost IS NULL);

ALTER TABLE erp.shipment_line
    ADD COLUMN IF NOT EXISTS unit_cost numeric(18,2)
        CONSTRAINT shipment_line_unit_cost_finite CHECK (unit_cost >= 0
            AND unit_cost NOT IN ('NaN'::numeric, 'Infinity'::numeric)),
    ADD COLUMN IF NOT EXISTS cost_currency_code char(3) REFERENCES erp.currency (code)
        CONSTRAINT shipment_line_cost_currency_check
        CHECK (cost_currency_code IS NOT NULL OR unit_cost IS NULL);

"""demand signals (issue 15): CRM demand surges raise ERP supply priority, and a change to
an order gets its feasibility answer from the ERP's figures. See docs/demand-signals.md."""

"""production-status: ERP production orders, quality inspections and shipments folded
into one fulfilment status per CRM order, with a predicted delivery date, delay risk
and complaint triage (issue 12; DESIGN.md pain 4, "blind customer service").

The pure core, no I/O (the service shell on the shared kit comes later):

* :mod:`.records` — the canonical rows and what links them to a CRM order (bad input:
  :class:`~services.shared.errors.BadInput` with a reason);
* :mod:`.progress` — what each production order, shipment and order line contributes
  to its ERP order's figures;
* :mod:`.fold` — :class:`~.fold.ProgressFold`, the incremental, position-guarded fold
  over a key-value state (:mod:`.ports`), O(1) per change, holding progress that arrives
  before the order identity;
* :mod:`.durations` — learned QC and transport durations (p50/p90 per warehouse and
  carrier) in bounded histograms;
* :mod:`.status` — stage, quantities, predicted delivery date (documented formula);
* :mod:`.risk` — delay-risk levels, one event per change of level;
* :mod:`.triage` — which stage a complaint's order failed or ran late in;
* :mod:`.recompute` — the same figures straight from the final rows (tests, reconcile);
* :mod:`.publish` — the Avro records of the published topics.
"""

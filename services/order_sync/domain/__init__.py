"""order-sync's pure core: CRM sales orders become ERP sales orders, ERP progress flows back.

Nothing here does I/O. The shell folds change events into orders (:mod:`.folding`),
calls :func:`.deciding.decide` and executes the returned decision (:mod:`.decisions`)
with idempotent, source-position-guarded writes; the decision's meaning for the CRM is
:mod:`.outcomes`. One module per concept, named for it: the records read from each
side (:mod:`.crm_orders`, :mod:`.erp_orders`, mapped from the shared canonical records
of :mod:`services.shared.source_records`; :mod:`.money`), what
a CRM order must satisfy (:mod:`.validation`), amending without contradicting the ERP
(:mod:`.amendments`, :mod:`.holds`), the customer master (:mod:`.customers`), the
CRM-facing progress (:mod:`.progress`) and order-sync's own writes coming back
(:mod:`.echoes`). The rules are in each module's docstring and tested in
``tests/unit/test_order_sync_*.py``.
"""

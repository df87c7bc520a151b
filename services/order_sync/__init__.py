"""order-sync: every confirmed CRM sales order becomes exactly one ERP sales order.

Where things are (each module's docstring says why it exists):

* :mod:`~services.order_sync.domain` — the pure core: CRM and ERP records, folding
  change events into orders, deciding what to write in the ERP, what a decision means
  for the CRM status, progress, recognising order-sync's own ERP writes (no I/O);
* :mod:`~services.order_sync.handlers` — the service layer: one batch decided over a
  :class:`~services.order_sync.unit_of_work.UnitOfWork` (the port);
* :mod:`~services.order_sync.erp_unit_of_work`, :mod:`~services.order_sync.erp_writes`,
  :mod:`~services.order_sync.erp_progress`, :mod:`~services.order_sync.echo_memory`,
  :mod:`~services.order_sync.crm_status` — the databases: I/O only;
* :mod:`~services.order_sync.crm_intake`, :mod:`~services.order_sync.erp_intake`,
  :mod:`~services.order_sync.syncing` — the two sources and the sync step with its
  retries, refusals and rejections; :mod:`~services.order_sync.app` wires them.
"""

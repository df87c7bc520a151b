"""customer-value: per CRM account and month, what the customer brought beside what
serving them cost (docs/customer-value.md): the pure core, the service process
(``app.py``) and its reconcile command; the dashboard follows."""

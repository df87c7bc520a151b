"""customer-value: per CRM account and month, what the customer brought beside what
serving them cost (docs/customer-value.md). This package holds the pure core; the
service shell, dashboard and reconcile command follow."""

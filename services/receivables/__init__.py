"""receivables: CRM contracts and installment plans reconciled against ERP invoices and
payments (issue 11). The pure core lives here (records, rules, fold, recompute); the
Faust shell is built on the shared service kit."""

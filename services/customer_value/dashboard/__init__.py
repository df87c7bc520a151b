"""customer-value's dashboard: a read-only web page over the published figures
(docs/customer-value.md, "Dashboard")."""

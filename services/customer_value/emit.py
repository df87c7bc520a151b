"""customer-value's records as written and published (pure).

:func:`key` is the Kafka key of ``schemas/published/customer_value/v2.avsc``
(``<account>:<YYYY-MM>:<currency>``), :func:`record` its value, :func:`row` the columns
of ``crm_integration.customer_value`` (deploy/sql/crm/080 and 100; the
position and ``deleted`` bookkeeping is the sink's). Both carry the same figures.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from services.customer_value.figures import COUNTS, MONEY, ROWS, CustomerValue, month_start
from services.customer_value.fold import ValueKey

SCHEMA = "ambidex.customer_value.CustomerValue"
DERIVED = ("production_variance", "cost_to_serve", "margin")
#: the columns :func:`row` fills (the sink manages the position and ``deleted``)
ROW_COLUMNS = ("account_id", "month", "currency_code", "erp_customer_id", *MONEY, *DERIVED,
               *COUNTS.values(), "sources", "as_of")


def key(value_key: ValueKey) -> bytes:
    account, month, currency = value_key
    return f"{account}:{month}:{currency}".encode()


def record(value: CustomerValue, as_of: datetime | None) -> dict[str, Any]:
    """The Avro record of one account's month."""
    out: dict[str, Any] = {
        "account_id": value.account_id,
        "month": month_start(value.month),
        "currency": value.currency,
        "erp_customer_ids": list(value.erp_customer_ids),
    }
    out |= {name: value[name] for name in (*MONEY, *DERIVED)}
    out |= {name: value.counts[name] for name in COUNTS.values()}
    out["sources"] = [
        {"source": source, "rows": entry[ROWS],
         "figures": [{"name": n, "amount": a} for n, a in sorted(entry.items()) if n != ROWS]}
        for source, entry in value.sources.items()
    ]
    out["as_of"] = as_of
    return out


def row(value: CustomerValue, as_of: datetime | None) -> dict[str, Any]:
    """The ``crm_integration.customer_value`` columns of one account's month."""
    out: dict[str, Any] = {
        "account_id": value.account_id,
        "month": month_start(value.month),
        "currency_code": value.currency,
        "erp_customer_id": value.erp_customer_ids[0] if value.erp_customer_ids else None,
    }
    out |= {name: value[name] for name in (*MONEY, *DERIVED)}
    out |= {name: value.counts[name] for name in COUNTS.values()}
    out["sources"] = orjson.dumps(
        {s: {k: (v if k == ROWS else str(v)) for k, v in e.items()}
         for s, e in value.sources.items()}).decode()
    out["as_of"] = as_of
    return out

"""What the dashboard shows of an account beside customer-value's figures: its name,
its open receivables and its open delay risks (the ports, and their PostgreSQL
implementation over what the other services write back to the CRM).

Every question is about the accounts of one page (a bounded list of ids) or one account,
answered by indexed queries: the cost of a page does not grow with the number of
customers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any, Protocol

import asyncpg


@dataclass(frozen=True, slots=True)
class DelayRisk:
    """An open delay risk of one of the account's CRM orders (production-status)."""

    crm_order_id: int
    order_number: str | None
    level: str  # at_risk or late
    reason: str | None
    stage: str | None
    promised_date: date | None
    predicted_p90: date | None

    def as_json(self) -> dict[str, Any]:
        return {"crm_order_id": self.crm_order_id, "order_number": self.order_number,
                "level": self.level, "reason": self.reason, "stage": self.stage,
                "promised_date": _day(self.promised_date),
                "predicted_p90": _day(self.predicted_p90)}


@dataclass(frozen=True, slots=True)
class Receivable:
    """The account's open receivables in one currency (receivables)."""

    currency: str
    outstanding: Decimal
    overdue: Decimal
    next_due_date: date | None

    def as_json(self) -> dict[str, Any]:
        return {"currency": self.currency, "outstanding": str(self.outstanding),
                "overdue": str(self.overdue), "next_due_date": _day(self.next_due_date)}


@dataclass(frozen=True, slots=True)
class AccountFacts:
    name: str | None
    receivables: tuple[Receivable, ...]
    delay_risks: tuple[DelayRisk, ...]


class Accounts(Protocol):
    """The dashboard's port to the accounts' names and the other services' figures."""

    async def names(self, account_ids: Sequence[int]) -> Mapping[int, str]: ...

    async def facts(self, account_id: int) -> AccountFacts: ...


def _day(value: date | None) -> str | None:
    return value.isoformat() if value is not None else None


NAMES_QUERY = "SELECT id, name FROM crm.account WHERE id = ANY($1::bigint[])"
RECEIVABLES_QUERY = """
    SELECT currency_code, outstanding, overdue, next_due_date
      FROM crm_integration.receivable_customer
     WHERE account_id = $1 AND NOT deleted AND outstanding <> 0
     ORDER BY currency_code"""
RISKS_QUERY = """
    SELECT f.crm_order_id, f.crm_order_number, f.risk_level, f.risk_reason, f.stage,
           f.promised_date, f.predicted_p90
      FROM crm.sales_order o
      JOIN crm_integration.fulfilment_status f ON f.crm_order_id = o.id
     WHERE o.account_id = $1 AND NOT f.deleted AND f.risk_level IN ('at_risk', 'late')
     ORDER BY f.risk_level DESC, f.promised_date NULLS LAST, f.crm_order_id
     LIMIT 100"""


class PostgresAccounts:
    """:class:`Accounts` over the CRM database: names from ``crm.account``, open
    receivables from ``crm_integration.receivable_customer`` (receivables), open delay
    risks from ``crm_integration.fulfilment_status`` (production-status)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def names(self, account_ids: Sequence[int]) -> Mapping[int, str]:
        if not account_ids:
            return {}
        rows = await self.pool.fetch(NAMES_QUERY, list(account_ids))
        return {row["id"]: row["name"] for row in rows}

    async def facts(self, account_id: int) -> AccountFacts:
        async with self.pool.acquire() as connection:
            name = await connection.fetchval(
                "SELECT name FROM crm.account WHERE id = $1", account_id)
            receivables = await connection.fetch(RECEIVABLES_QUERY, account_id)
            risks = await connection.fetch(RISKS_QUERY, account_id)
        return AccountFacts(
            name,
            tuple(Receivable(r["currency_code"].strip(), r["outstanding"],
                             r["overdue"] or Decimal(0), r["next_due_date"])
                  for r in receivables),
            tuple(DelayRisk(r["crm_order_id"], r["crm_order_number"], r["risk_level"],
                            r["risk_reason"], r["stage"], r["promised_date"],
                            r["predicted_p90"]) for r in risks),
        )

"""Open delay risks per CRM account, from production-status's published statuses (pure).

production-status publishes, per CRM order, its fulfilment status and current delay-risk
level on the compacted ``ambidex.fulfilment-status`` (key: the CRM order id). The record
does not name the account, so the account comes from ``crm.sales_order`` (which
customer-value reads anyway). An order *has an open risk* when its last published level
is not ``none`` (``at_risk`` or ``late``) and its account is known; the two facts may
arrive in any order, and either may change, so each change recomputes where the order
sits before and after and moves only that entry: a change costs a few reads and writes,
whatever the account's history.

Keys (``|``-separated text, beside the figures' keys of :mod:`.fold`):

- ``ro|<order>`` -> the CRM account of the order (from ``crm.sales_order``);
- ``rs|<order>`` -> the order's last status (offset on the topic, number, level,
  reason, stage, promised and predicted dates);
- ``rx|<account>|<order>`` -> an order of the account with an open risk (its status);
- ``rn|<account>`` -> how many, by level (absent: none).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

import orjson

from services.shared import rows
from services.shared.errors import BadInput
from services.shared.state.store import KeyValue

STATUS_TOPIC = "ambidex.fulfilment-status"
#: risk levels production-status publishes (services/production_status/risk.py)
LEVELS = ("none", "at_risk", "late")
NO_RISK = "none"


@dataclass(frozen=True, slots=True)
class OrderRisk:
    """What production-status last said of one CRM order."""

    crm_order_id: int
    number: str
    level: str
    reason: str | None
    stage: str
    promised_date: date | None
    predicted_p50: date | None

    @property
    def open(self) -> bool:
        return self.level != NO_RISK

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> OrderRisk:
        """From a ``FulfilmentStatus`` record (BadInput when it cannot be read)."""
        t = STATUS_TOPIC
        try:
            level = rows.text(record, "risk_level", t)
            if level not in LEVELS:
                raise BadInput(f"{t}: unknown risk_level {level!r}")
            return cls(rows.required_int(record, "crm_order_id", t),
                       rows.text(record, "crm_order_number", t), level,
                       rows.optional_text(record, "risk_reason", t), rows.text(record, "stage", t),
                       rows.optional_day(record, "promised_date", t),
                       rows.optional_day(record, "predicted_p50", t))
        except BadInput:
            raise
        except (TypeError, ValueError, KeyError) as error:
            raise BadInput(f"{t}: {error}") from None

    def encode(self) -> dict[str, Any]:
        return {"o": self.crm_order_id, "n": self.number, "l": self.level, "r": self.reason,
                "s": self.stage,
                "d": None if self.promised_date is None else self.promised_date.isoformat(),
                "p": None if self.predicted_p50 is None else self.predicted_p50.isoformat()}

    @classmethod
    def decode(cls, d: Mapping[str, Any]) -> OrderRisk:
        return cls(d["o"], d["n"], d["l"], d["r"], d["s"],
                   None if d["d"] is None else date.fromisoformat(d["d"]),
                   None if d["p"] is None else date.fromisoformat(d["p"]))


@dataclass(frozen=True, slots=True)
class AccountRisks:
    """The open delay risks of one account's orders (none: empty counts and orders)."""

    account_id: int
    #: level -> orders at it (``at_risk``, ``late``; a level with none is absent)
    counts: Mapping[str, int]
    orders: tuple[OrderRisk, ...]

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class DelayRisks:
    """The index over the state; :meth:`order` and :meth:`status` return the accounts
    whose open risks changed."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    def order(self, order_id: int, account: int | None) -> set[int]:
        """The account of a CRM order (None: the order was deleted)."""
        before = self._where(order_id)
        key = f"ro|{order_id}".encode()
        if account is None:
            self.kv.delete(key)
        else:
            self.kv.put(key, str(account).encode())
        return self._move(order_id, before)

    def status(self, order_id: int, offset: int, risk: OrderRisk | None) -> set[int] | None:
        """The order's status published at ``offset`` (None: a tombstone). None when
        the offset is not past the one folded (a redelivery or replay: stale)."""
        key = f"rs|{order_id}".encode()
        raw = self.kv.get(key)
        if raw is not None and offset <= orjson.loads(raw)["at"]:
            return None
        before = self._where(order_id)
        if risk is None:
            # the offset is kept so an older record replayed later stays stale
            self.kv.put(key, orjson.dumps({"at": offset, "risk": None}))
        else:
            self.kv.put(key, orjson.dumps({"at": offset, "risk": risk.encode()}))
        return self._move(order_id, before)

    def of(self, account: int) -> AccountRisks:
        raw = self.kv.get(f"rn|{account}".encode())
        counts: dict[str, int] = {} if raw is None else orjson.loads(raw)
        prefix = f"rx|{account}|".encode()
        orders = tuple(OrderRisk.decode(orjson.loads(v)) for _, v in self.kv.scan(prefix))
        return AccountRisks(account, counts, orders)

    def accounts(self) -> Iterator[int]:
        """Every account with an open risk."""
        for key, _ in self.kv.scan(b"rn|"):
            yield int(key[3:])

    # ------------------------------------------------------------------ the index

    def _where(self, order_id: int) -> tuple[int, OrderRisk] | None:
        account = self.kv.get(f"ro|{order_id}".encode())
        raw = self.kv.get(f"rs|{order_id}".encode())
        if account is None or raw is None:
            return None
        encoded = orjson.loads(raw)["risk"]
        if encoded is None:
            return None
        risk = OrderRisk.decode(encoded)
        return (int(account), risk) if risk.open else None

    def _move(self, order_id: int, before: tuple[int, OrderRisk] | None) -> set[int]:
        after = self._where(order_id)
        if before == after:
            return set()
        touched: set[int] = set()
        if before is not None:
            account, risk = before
            self.kv.delete(f"rx|{account}|{order_id}".encode())
            self._count(account, risk.level, -1)
            touched.add(account)
        if after is not None:
            account, risk = after
            self.kv.put(f"rx|{account}|{order_id}".encode(), orjson.dumps(risk.encode()))
            self._count(account, risk.level, 1)
            touched.add(account)
        return touched

    def _count(self, account: int, level: str, step: int) -> None:
        key = f"rn|{account}".encode()
        raw = self.kv.get(key)
        counts: dict[str, int] = {} if raw is None else orjson.loads(raw)
        counts[level] = counts.get(level, 0) + step
        if not counts[level]:
            del counts[level]
        if counts:
            self.kv.put(key, orjson.dumps(counts))
        else:
            self.kv.delete(key)


def order_key(key: bytes | None) -> int:
    """The CRM order id of a record's key on the status topic (BadInput if not one)."""
    try:
        return int((key or b"").decode())
    except ValueError:
        raise BadInput(f"{STATUS_TOPIC} record with key {key!r}: not a CRM order id") from None

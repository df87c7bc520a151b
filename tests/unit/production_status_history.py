"""Random ERP/CRM histories for production-status's unit tests (a builder, not a test).

:func:`history` makes a seeded sequence of row versions (inserts, updates, deletes,
re-parenting, children before their parents, identities before and after the ERP rows)
with increasing source positions; :func:`latest` is what the databases hold at the end.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from services.production_status.records import (
    CRM_ORDER,
    ERP_ORDER,
    ERP_ORDER_LINE,
    INSPECTION,
    PRODUCTION_ORDER,
    SERVICE_CASE,
    SHIPMENT,
    SHIPMENT_LINE,
    CrmOrder,
    ErpOrder,
    ErpOrderLine,
    Identity,
    Inspection,
    ProductionOrder,
    ServiceCase,
    Shipment,
    ShipmentLine,
)
from services.shared.position import SourcePosition

BASE = datetime(2026, 11, 1, 6, tzinfo=UTC)
NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)
CARRIERS = ("DHL", "UPS", "Fast|Freight")


@dataclass(frozen=True, slots=True)
class Version:
    table: str  # or "identity"
    row_id: int
    position: SourcePosition
    row: Any  # None: deleted


def _at(rng: random.Random, hours: int = 400) -> datetime:
    return BASE + timedelta(hours=rng.randint(0, hours), minutes=rng.randint(0, 59))


def _qty(rng: random.Random) -> Decimal:
    return Decimal(rng.randint(1, 40)) / 2


def history(seed: int, steps: int = 600, orders: int = 8) -> list[Version]:
    rng = random.Random(seed)
    out: list[Version] = []
    lsn = 0
    identity_version: dict[int, int] = {}

    def emit(table: str, row_id: int, row: Any) -> None:
        nonlocal lsn
        lsn += 1
        out.append(Version(table, row_id, SourcePosition(lsn // 3 + 1, lsn), row))

    for _ in range(steps):
        order = rng.randint(1, orders)
        kind = rng.random()
        deleting = rng.random() < 0.08
        if kind < 0.08:
            emit(ERP_ORDER, order, None if deleting else ErpOrder(
                order, f"S{order:06d}", rng.choice(["open", "in_production", "reserved",
                                                    "shipped", "cancelled"]),
                rng.randint(1, 3), None))
        elif kind < 0.22:
            line = rng.randint(1, orders * 4)
            emit(ERP_ORDER_LINE, line, None if deleting else ErpOrderLine(
                line, rng.choice([order, (line - 1) // 4 + 1]), line, 7, _qty(rng)))
        elif kind < 0.40:
            mo = rng.randint(1, orders * 5)
            started = _at(rng) if rng.random() < 0.7 else None
            finished = (started + timedelta(hours=rng.randint(0, 200))
                        if started is not None and rng.random() < 0.5 else None)
            state = "done" if finished else rng.choice(
                ["planned", "confirmed", "in_progress", "cancelled"])
            quantity = _qty(rng)
            start_day = date(2026, 11, rng.randint(1, 20))
            emit(PRODUCTION_ORDER, mo, None if deleting else ProductionOrder(
                mo, f"MO{mo:06d}", rng.choice([order, order, None]),
                rng.choice([None, rng.randint(1, orders * 4)]), rng.randint(1, 3), quantity,
                quantity if state == "done" else quantity * rng.randint(0, 2) / 2, state,
                start_day, start_day + timedelta(days=rng.randint(0, 9)), started, finished))
        elif kind < 0.55:
            inspection = rng.randint(1, orders * 7)
            created = _at(rng)
            state = rng.choice(["pending", "passed", "failed"])
            emit(INSPECTION, inspection, None if deleting else Inspection(
                inspection, rng.randint(1, orders * 5 + 2), state,
                None if state == "pending" else rng.choice(["ann", "bo"]),
                None if state == "pending" else created + timedelta(hours=rng.randint(0, 90)),
                "scratch" if state == "failed" else None, created))
        elif kind < 0.68:
            shipment = rng.randint(1, orders * 3)
            state = rng.choice(["draft", "ready", "shipped", "delivered", "cancelled"])
            shipped = _at(rng) if state in ("shipped", "delivered") else None
            delivered = (shipped + timedelta(hours=rng.randint(1, 300))
                         if shipped is not None and state == "delivered" else None)
            emit(SHIPMENT, shipment, None if deleting else Shipment(
                shipment, f"WH/OUT/{shipment:06d}", rng.choice([order, (shipment - 1) // 3 + 1]),
                rng.randint(1, 3), state, date(2026, 11, rng.randint(1, 25)), shipped,
                delivered, rng.choice((*CARRIERS, None)), f"TRK{shipment}"))
        elif kind < 0.84:
            shipment_line = rng.randint(1, orders * 8)
            emit(SHIPMENT_LINE, shipment_line, None if deleting else ShipmentLine(
                shipment_line, rng.randint(1, orders * 3 + 1), rng.randint(1, orders * 4),
                _qty(rng)))
        elif kind < 0.90:
            crm = 1000 + order
            emit(CRM_ORDER, crm, None if deleting else CrmOrder(
                crm, f"SO{crm}", rng.choice(["confirmed", "amended", "cancelled"]),
                date(2026, 11, rng.randint(5, 28)), rng.randint(1, 3)))
        elif kind < 0.95:
            case = rng.randint(1, orders * 2)
            emit(SERVICE_CASE, case, None if deleting else ServiceCase(
                case, f"CS{case}", rng.choice([1000 + order, None]), "late?",
                rng.choice(["delivery", "quality", "complaint"]), "open", _at(rng)))
        else:
            crm = 1000 + order
            # order-sync publishes each version once per key, in order: a new record
            # always carries a higher version than the ones before it
            version = identity_version[crm] = identity_version.get(crm, 0) + 1
            emit("identity", crm, Identity(crm, f"SO{crm}", version, order, f"S{order:06d}",
                                           rng.random() < 0.1))
    return out


def deliveries(versions: list[Version], seed: int) -> list[Version]:
    """The versions as a consumer may see them: reordered across rows, some delivered
    twice, a stretch replayed at the end."""
    rng = random.Random(seed * 7919)
    seen = list(versions)
    rng.shuffle(seen)
    seen += rng.sample(versions, k=len(versions) // 5)
    start = rng.randint(0, len(versions) // 2)
    return seen + versions[start:]


def latest(versions: list[Version]) -> dict[str, dict[int, Any]]:
    """Per table, per id, the row the source holds at the end (None: deleted); for
    identities the highest version (ties: the later one)."""
    out: dict[str, dict[int, Any]] = {}
    best: dict[tuple[str, int], Version] = {}
    for v in versions:
        key = (v.table, v.row_id)
        current = best.get(key)
        if v.table == "identity":
            if current is None or v.row.crm_order_version >= current.row.crm_order_version:
                best[key] = v
        elif current is None or v.position > current.position:
            best[key] = v
    for (table, row_id), v in best.items():
        out.setdefault(table, {})[row_id] = v.row
    return out

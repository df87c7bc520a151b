"""Random source histories for customer-value's property tests (a helper, no tests).

A small world (a few accounts, ERP customers, orders, production orders, inspections,
shipments and lines, returns) in which every row gets a few versions with random links, states,
dates, currencies and amounts, some ending deleted. Each version has a position
(increasing per row, as a source's WAL gives). :func:`deliveries` interleaves the rows'
versions (per-row order kept, as per-key Kafka order does), redelivers some older
versions late, and replays a tail again.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from services.customer_value.sources import ReceivablePosition
from services.shared.money import Money
from services.shared.source_records import crm, erp

D = Decimal
CURRENCIES = ("EUR", "EUR", "EUR", "USD", "JPY")


@dataclass(frozen=True)
class Version:
    source: str
    row_id: int
    position: tuple[int, ...]
    record: Any | None  # None: deleted


def _money(rng: random.Random, code: str, top: int = 5000) -> Money:
    amount = D(rng.randint(0, top * 100)) / 100
    if code == "JPY":
        amount = D(int(amount))
    return Money(amount.quantize(D("0.01")), code)


def _when(rng: random.Random) -> datetime:
    return datetime(2026, rng.randint(1, 4), rng.randint(1, 28), rng.randint(0, 23),
                    tzinfo=UTC)


def _maybe(rng: random.Random, value: Any, share: float = 0.8) -> Any:
    return value if rng.random() < share else None


def _version(rng: random.Random, source: str, i: int, n: int) -> Any:
    code = rng.choice(CURRENCIES)
    match source:
        case "crm.account":
            return crm.Account(i, f"A{i}", None, None, None, "DE", None, code)
        case "crm.sales_order":
            state = rng.choice(list(crm.CrmOrderState))
            confirmed = state in (crm.CrmOrderState.CONFIRMED, crm.CrmOrderState.AMENDED)
            return crm.SalesOrder(i, f"SO{i}", rng.randint(1, 3), state, code, None, None, 1,
                                  _money(rng, code), _when(rng) if confirmed else None)
        case "crm.contract":
            order = _maybe(rng, rng.randint(1, 4), 0.3)
            return crm.Contract(i, f"CT{i}", rng.randint(1, 3), order,
                                rng.choice(list(crm.ContractState)), _money(rng, code),
                                date(2026, rng.randint(1, 4), 1), _maybe(rng, _when(rng)))
        case "receivables.position":
            return ReceivablePosition(i, rng.randint(1, 3), _money(rng, code),
                                      _money(rng, code), _money(rng, code))
        case "crm.service_case":
            return crm.ServiceCase(i, rng.randint(1, 3), None, "quality",
                                   rng.choice(list(crm.CaseState)), _when(rng))
        case "erp.customer":
            return erp.Customer(i, _maybe(rng, rng.randint(1, 3), 0.7), "erp", f"C{i}", None,
                                None, None, None, None, code)
        case "erp.sales_order":
            state = rng.choice(list(erp.ErpOrderState))
            return erp.SalesOrder(i, f"S{i}", rng.randint(1, 3), state, code, None, 1, "erp",
                                  None, None, None, _money(rng, code))
        case "erp.production_order":
            state = rng.choice(list(erp.ProductionState))
            done = state is erp.ProductionState.DONE
            costs = [_maybe(rng, _money(rng, code, 800)) if done else None for _ in range(4)]
            return erp.ProductionOrder(i, 1, 1, _maybe(rng, rng.randint(1, 4)), None, D(5),
                                       state, None, None, None, _when(rng) if done else None,
                                       *costs)
        case "erp.quality_inspection":
            state = rng.choice(list(erp.InspectionState))
            return erp.QualityInspection(
                i, rng.randint(1, 4), state,
                None if state is erp.InspectionState.PENDING else _when(rng),
                _maybe(rng, _money(rng, code, 300)) if state is erp.InspectionState.FAILED
                else None)
        case "erp.shipment":
            state = rng.choice(list(erp.ShipmentState))
            gone = state in (erp.ShipmentState.SHIPPED, erp.ShipmentState.DELIVERED)
            return erp.Shipment(i, rng.randint(1, 4), 1, state, _when(rng) if gone else None,
                                None, "UPS", _maybe(rng, _money(rng, code, 200)) if gone else None)
        case "erp.shipment_line":
            return erp.ShipmentLine(i, rng.randint(1, 3), 1, 1, D(rng.randint(1, 9000)) / 1000,
                                    _maybe(rng, _money(rng, code, 90)))
        case "erp.return_order":
            state = rng.choice(list(erp.ReturnState))
            back = state is not erp.ReturnState.REQUESTED or rng.random() < 0.3
            credited = state is erp.ReturnState.CREDITED
            return erp.ReturnOrder(
                i, rng.randint(1, 4), 1, 1, D(rng.randint(1, 5000)) / 1000,
                rng.choice(list(erp.ReturnReason)), state, _when(rng),
                _when(rng) if back else None, None,
                _maybe(rng, _money(rng, code, 400)) if credited else None,
                _maybe(rng, _money(rng, code, 60)) if credited else None)
    raise AssertionError(source)


#: rows per source in the small world
SIZES = {
    "crm.account": 3, "crm.sales_order": 4, "crm.contract": 3, "receivables.position": 3,
    "crm.service_case": 3, "erp.customer": 3, "erp.sales_order": 4,
    "erp.production_order": 4, "erp.quality_inspection": 4, "erp.shipment": 3,
    "erp.shipment_line": 5, "erp.return_order": 3,
}


def history(seed: int) -> list[list[Version]]:
    """Per row, its versions in source order."""
    rng = random.Random(seed)
    clock = 0
    rows: list[list[Version]] = []
    for source, size in SIZES.items():
        for i in range(1, size + 1):
            versions = []
            for n in range(rng.randint(1, 4)):
                clock += rng.randint(1, 5)
                deleted = n > 0 and rng.random() < 0.15
                versions.append(Version(source, i, (clock, rng.randint(0, 9)),
                                        None if deleted else _version(rng, source, i, n)))
            rows.append(versions)
    return rows


def deliveries(rows: list[list[Version]], seed: int) -> list[Version]:
    """The versions interleaved (per-row order kept), with late redeliveries of older
    versions and a replayed tail."""
    rng = random.Random(seed * 7919)
    queues = [list(r) for r in rows]
    out: list[Version] = []
    while any(queues):
        queue = rng.choice([q for q in queues if q])
        out.append(queue.pop(0))
        if rng.random() < 0.15:
            out.append(rng.choice(out))  # a redelivery of anything seen so far
    out.extend(out[rng.randint(0, len(out) - 1):])  # a replay from some offset
    return out


def latest(rows: list[list[Version]]) -> list[Any]:
    """The rows as they end: each row's last version, unless deleted."""
    return [r[-1].record for r in rows if r[-1].record is not None]

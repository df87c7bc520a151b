"""The rows customer-value reads, as what each one contributes (pure).

Every source row becomes a :class:`Node`: where its contribution goes (an
:class:`Anchor`: the owner, the month, the currency; what the row does not say itself
it takes from its parent row), the money figures it contributes and whether it counts
as one row of its source. Rows are read through the canonical records
(``services/shared/source_records``); receivables' positions from the Avro record of
``ambidex.receivable-position``.

Owners: ``a:<crm account>`` for CRM rows, ``c:<erp customer>`` for ERP rows (an ERP
customer counts for the CRM account ``erp.customer.crm_account_id`` names). Parents:

=========================  =======================  ==================================
row                        parent                   contributes (when)
=========================  =======================  ==================================
crm.account                -                        currency for its service cases
crm.sales_order            -                        revenue_booked (confirmed/amended,
                                                    month of confirmed_at)
crm.contract               -                        revenue_booked (active/completed,
                                                    no sales order: the order books
                                                    it; month of signed_at, else
                                                    start_date)
receivable position        crm.contract             invoiced, collected, outstanding
                                                    (the contract's month)
crm.service_case           crm.account              a count (month opened)
erp.customer               -                        the link to a CRM account
erp.sales_order            -                        owner and currency for its rows
erp.production_order       erp.sales_order          production_standard/_actual
                                                    (done, month finished)
erp.quality_inspection     erp.production_order     rework (failed, month inspected)
erp.shipment               erp.sales_order          freight (shipped/delivered,
                                                    month shipped)
erp.shipment_line          erp.shipment             cost_of_goods = quantity x unit
                                                    cost (its shipment's month)
erp.return_order           erp.sales_order          return_credit, return_handling, a
                                                    count (goods received, not
                                                    cancelled; month received)
=========================  =======================  ==================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any

from services.customer_value.figures import month_of
from services.shared import rows
from services.shared.errors import BadInput
from services.shared.money import Money, round_money
from services.shared.source_records import crm, erp

POSITION = "receivables.position"
#: every source, in the order a recomputation loads them
SOURCES = (
    "crm.account", "crm.sales_order", "crm.contract", POSITION, "crm.service_case",
    "erp.customer", "erp.sales_order", "erp.production_order", "erp.quality_inspection",
    "erp.shipment", "erp.shipment_line", "erp.return_order",
)
#: the captured tables read (``schema.table``)
TABLES = tuple(s for s in SOURCES if s != POSITION)


@dataclass(frozen=True, slots=True)
class Anchor:
    owner: str | None = None
    month: str | None = None
    currency: str | None = None

    def over(self, parent: Anchor) -> Anchor:
        """This anchor with what it leaves open taken from ``parent``'s."""
        return Anchor(self.owner or parent.owner, self.month or parent.month,
                      self.currency or parent.currency)

    @property
    def complete(self) -> bool:
        return None not in (self.owner, self.month, self.currency)

    def encode(self) -> list[str | None]:
        return [self.owner, self.month, self.currency]

    @classmethod
    def decode(cls, raw: list[str | None]) -> Anchor:
        return cls(*raw)


NOWHERE = Anchor()


@dataclass(frozen=True, slots=True)
class Node:
    source: str
    id: int
    own: Anchor
    parent: tuple[str, int] | None = None
    figures: Mapping[str, Decimal] = field(default_factory=dict)
    counted: bool = False
    #: erp.customer: the CRM account it counts for
    link: int | None = None

    def contributes(self) -> bool:
        return self.counted or bool(self.figures)


@dataclass(frozen=True, slots=True)
class ReceivablePosition:
    """What customer-value reads of ``ambidex.receivable-position`` (one contract)."""

    contract_id: int
    account_id: int
    invoiced: Money
    paid: Money
    outstanding: Money

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ReceivablePosition:
        t = "ambidex.receivable-position"
        try:
            code = rows.currency(record, "currency", t)
            return cls(
                rows.required_int(record, "contract_id", t),
                rows.required_int(record, "account_id", t),
                *(rows.money(record, name, t, code, sign=rows.Sign.ANY)
                  for name in ("invoiced", "paid", "outstanding")),
            )
        except BadInput:
            raise
        except (TypeError, ValueError) as error:
            raise BadInput(f"{t}: {error}") from None


def _money(figures: dict[str, Decimal], name: str, *amounts: Money | None) -> str | None:
    """Adds the present amounts as ``name``; their currency (None if none present)."""
    present = [a for a in amounts if a is not None]
    if not present:
        return None
    total = present[0]
    for amount in present[1:]:
        total = total + amount  # Money refuses mixing currencies: a bad row
    figures[name] = total.amount
    return total.currency


def node_of(record: Any) -> Node:
    """The node of one canonical record (or receivables position). ``BadInput`` when
    the row's amounts cannot be read together (e.g. two currencies in one row)."""
    try:
        return _node(record)
    except ValueError as error:  # Money: adding two currencies
        raise BadInput(f"{type(record).__name__} {getattr(record, 'id', '?')}: {error}") \
            from None


def _node(r: Any) -> Node:
    figures: dict[str, Decimal] = {}
    match r:
        case crm.Account():
            return Node("crm.account", r.id, Anchor(f"a:{r.id}", None, r.currency))
        case crm.SalesOrder():
            booked = (r.state in (crm.CrmOrderState.CONFIRMED, crm.CrmOrderState.AMENDED)
                      and r.confirmed_at is not None)
            if not booked:
                return Node("crm.sales_order", r.id, NOWHERE)
            assert r.confirmed_at is not None
            return Node("crm.sales_order", r.id,
                        Anchor(f"a:{r.account_id}", month_of(r.confirmed_at), r.currency),
                        figures={"revenue_booked": r.amount_total.amount}, counted=True)
        case crm.Contract():
            booked = (r.state in (crm.ContractState.ACTIVE, crm.ContractState.COMPLETED)
                      and r.sales_order_id is None)
            when: date = r.signed_at.date() if r.signed_at is not None else r.start_date
            return Node("crm.contract", r.id,
                        Anchor(f"a:{r.account_id}", month_of(when), r.total.currency),
                        figures={"revenue_booked": r.total.amount} if booked else {},
                        counted=booked)
        case ReceivablePosition():
            return Node(POSITION, r.contract_id, Anchor(None, None, r.invoiced.currency),
                        parent=("crm.contract", r.contract_id),
                        figures={"invoiced": r.invoiced.amount, "collected": r.paid.amount,
                                 "outstanding": r.outstanding.amount})
        case crm.ServiceCase():
            return Node("crm.service_case", r.id,
                        Anchor(f"a:{r.account_id}", month_of(r.opened_at)),
                        parent=("crm.account", r.account_id), counted=True)
        case erp.Customer():
            return Node("erp.customer", r.id, NOWHERE, link=r.crm_account_id)
        case erp.SalesOrder():
            return Node("erp.sales_order", r.id, Anchor(f"c:{r.customer_id}", None, r.currency))
        case erp.ProductionOrder():
            parent = None if r.sales_order_id is None else ("erp.sales_order", r.sales_order_id)
            done = r.state is erp.ProductionState.DONE and r.date_finished is not None
            if not done:
                return Node("erp.production_order", r.id, NOWHERE, parent)
            assert r.date_finished is not None
            std = _money(figures, "production_standard", r.standard_cost)
            act = _money(figures, "production_actual", r.material_cost, r.labour_cost,
                         r.machine_cost)
            if std and act and std != act:
                raise ValueError(f"standard cost in {std}, actual cost in {act}")
            return Node("erp.production_order", r.id,
                        Anchor(None, month_of(r.date_finished), std or act), parent,
                        figures, counted=True)
        case erp.QualityInspection():
            parent = ("erp.production_order", r.production_order_id)
            if r.state is not erp.InspectionState.FAILED or r.inspected_at is None:
                return Node("erp.quality_inspection", r.id, NOWHERE, parent)
            code = _money(figures, "rework", r.rework_cost)
            return Node("erp.quality_inspection", r.id,
                        Anchor(None, month_of(r.inspected_at), code), parent, figures,
                        counted=True)
        case erp.Shipment():
            parent = ("erp.sales_order", r.sales_order_id)
            gone = r.state in (erp.ShipmentState.SHIPPED, erp.ShipmentState.DELIVERED)
            if not gone or r.shipped_at is None:
                return Node("erp.shipment", r.id, NOWHERE, parent)
            code = _money(figures, "freight", r.freight_cost)
            return Node("erp.shipment", r.id, Anchor(None, month_of(r.shipped_at), code),
                        parent, figures, counted=True)
        case erp.ShipmentLine():
            parent = ("erp.shipment", r.shipment_id)
            if r.unit_cost is None:
                return Node("erp.shipment_line", r.id, NOWHERE, parent)
            cost = round_money(r.quantity * r.unit_cost.amount, r.unit_cost.currency)
            return Node("erp.shipment_line", r.id, Anchor(None, None, r.unit_cost.currency),
                        parent, {"cost_of_goods": cost})
        case erp.ReturnOrder():
            parent = ("erp.sales_order", r.sales_order_id)
            # a return costs once its goods are back (a request may still be withdrawn);
            # a rejected one keeps what its handling cost
            back = r.state is not erp.ReturnState.CANCELLED and r.received_at is not None
            if not back:
                return Node("erp.return_order", r.id, NOWHERE, parent)
            assert r.received_at is not None
            code = _money(figures, "return_credit", r.credit_amount)
            code = _money(figures, "return_handling", r.handling_cost) or code
            return Node("erp.return_order", r.id, Anchor(None, month_of(r.received_at), code),
                        parent, figures, counted=True)
    raise TypeError(f"customer-value reads no {type(r).__name__}")

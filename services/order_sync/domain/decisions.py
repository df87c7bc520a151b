"""What order-sync decides to do in the ERP about one CRM order (the decision types).

:data:`SyncDecision` is one of: create an ERP order (:class:`CreateErpOrder`), amend it
(:class:`AmendErpOrder`), cancel it (:class:`CancelErpOrder`), refuse the CRM version
(:class:`Reject`: it cannot be synced), report a contradiction with what the ERP has
already done (:class:`Conflict`), or :class:`NothingToDo`. A decision carries the whole
desired state it writes (header and line specs, the customer upsert), so the shell only
executes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any, TypeAlias

from services.order_sync.domain.erp_orders import ORIGIN_AMBIDEX
from services.shared.money import Money
from services.shared.position import SourcePosition
from services.shared.source_records.erp import ErpOrderState


@dataclass(frozen=True, slots=True)
class CustomerUpsert:
    """The ERP customer of a CRM account, as it should be (upsert key crm_account_id).

    Insert sets ``origin`` = 'ambidex'; update leaves origin, code, payment terms and
    active alone (ERP-owned) and sets only the fields below.
    """

    crm_account_id: int
    name: str
    street: str | None
    city: str | None
    postal_code: str | None
    country_code: str | None
    vat_number: str | None
    currency: str
    origin: str = ORIGIN_AMBIDEX
    existing_customer_id: int | None = None


@dataclass(frozen=True, slots=True)
class ErpLineSpec:
    """An ERP order line as order-sync writes it."""

    line_no: int
    crm_line_id: int
    item_id: int
    sku: str
    quantity: Decimal
    unit_price: Money
    discount_pct: Decimal
    amount: Money


@dataclass(frozen=True, slots=True)
class ErpHeaderSpec:
    """An ERP order header as order-sync writes it.

    ``customer_id`` None means "the customer of ``crm_account_id``, created by the
    decision's customer upsert": the shell resolves it in the same ERP transaction.
    """

    crm_order_id: int
    crm_order_version: int
    client_order_ref: str
    crm_account_id: int
    customer_id: int | None
    currency: str
    requested_date: date | None
    warehouse_id: int
    amount_total: Money
    origin: str = ORIGIN_AMBIDEX
    state: ErpOrderState = ErpOrderState.OPEN  # on insert only


@dataclass(frozen=True, slots=True)
class FieldChange:
    field: str
    old: Any
    new: Any


@dataclass(frozen=True, slots=True)
class LineUpdate:
    erp_line_id: int
    line: ErpLineSpec
    changes: tuple[FieldChange, ...]


@dataclass(frozen=True, slots=True)
class LineRemoval:
    erp_line_id: int
    line_no: int


@dataclass(frozen=True, slots=True)
class CreateErpOrder:
    header: ErpHeaderSpec
    lines: tuple[ErpLineSpec, ...]
    customer: CustomerUpsert | None
    position: SourcePosition


@dataclass(frozen=True, slots=True)
class AmendErpOrder:
    """Bring ERP order ``erp_order_id`` to ``header`` + the listed line changes.

    ``header_changes`` lists what differs (for logs and the CRM); the shell may simply
    write the whole ``header``. Lines not mentioned are unchanged.
    """

    erp_order_id: int
    header: ErpHeaderSpec
    header_changes: tuple[FieldChange, ...]
    add_lines: tuple[ErpLineSpec, ...]
    update_lines: tuple[LineUpdate, ...]
    remove_lines: tuple[LineRemoval, ...]
    customer: CustomerUpsert | None
    position: SourcePosition


@dataclass(frozen=True, slots=True)
class CancelErpOrder:
    erp_order_id: int
    crm_order_id: int
    crm_order_version: int
    position: SourcePosition


@dataclass(frozen=True, slots=True)
class Reject:
    """The CRM order (version) cannot be synced; nothing is written."""

    crm_order_id: int
    crm_order_version: int
    reasons: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Conflict:
    """The CRM change contradicts what the ERP has already done; nothing is written."""

    crm_order_id: int
    crm_order_version: int
    erp_order_id: int
    reasons: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NothingToDo:
    crm_order_id: int
    why: str


SyncDecision: TypeAlias = (
    CreateErpOrder | AmendErpOrder | CancelErpOrder | Reject | Conflict | NothingToDo
)

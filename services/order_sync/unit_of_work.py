"""The port between order-sync's service layer and its databases: one unit of work.

:func:`services.order_sync.handlers.sync_orders` decides; a :class:`UnitOfWork` is all
it may ask of the outside world, inside ONE ERP transaction: lock and read the
persisted CRM order folds, read the reference data (CRM accounts and products, ERP
currencies, warehouses, items, customers, orders and what pins their lines), write the
ERP effects of the decisions, record the identity mapping and the new folds, commit.
Nothing is written unless :meth:`UnitOfWork.commit` is called before the ``async
with`` block ends (then everything is rolled back), so all of a CRM transaction or
none of it reaches the ERP.

The PostgreSQL implementation is :class:`services.order_sync.erp_unit_of_work.ErpUnitOfWork`;
unit tests use a fake over dictionaries (``tests/unit/test_order_sync_handlers.py``),
after cosmicpython's ``service_layer/unit_of_work.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, Self

from services.order_sync.domain.decisions import (
    AmendErpOrder,
    CancelErpOrder,
    CreateErpOrder,
    CustomerUpsert,
)
from services.order_sync.domain.erp_orders import ErpOrderSnapshot, StaticCatalogue
from services.order_sync.domain.folding import OrderDraft
from services.order_sync.domain.holds import Holds
from services.shared.position import SourcePosition
from services.shared.source_records.crm import Account
from services.shared.source_records.erp import Customer


@dataclass(frozen=True, slots=True)
class StoredOrder:
    """A CRM order's persisted fold and the kind of its last decision (None: never)."""

    draft: OrderDraft
    last_decision: str | None


@dataclass(frozen=True, slots=True)
class CrmOrderRows:
    """A CRM order read whole from the CRM database (header and every line)."""

    header: Mapping[str, Any]
    lines: Sequence[Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class References:
    """The reference data a batch is decided against (latest versions)."""

    accounts: Mapping[int, Account]
    catalogue: StaticCatalogue
    currencies: frozenset[str]
    customers: Mapping[int, Customer]  # by CRM account id


@dataclass
class ErpWrites:
    """Everything a batch writes to the ERP, gathered per statement.

    ``known_customers``: the ERP customer already linked to each CRM account, for
    headers whose customer is created by an upsert of the same batch.
    """

    known_customers: dict[int, int] = field(default_factory=dict)
    customers: dict[int, CustomerUpsert] = field(default_factory=dict)  # by account id
    creates: list[CreateErpOrder] = field(default_factory=list)
    amends: list[AmendErpOrder] = field(default_factory=list)
    cancels: list[CancelErpOrder] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Written:
    """What the ERP answered to :class:`ErpWrites`."""

    customer_ids: Mapping[int, int]  # ERP customer per CRM account (known and written)
    created: Mapping[int, tuple[int, str]]  # ERP (id, name) per CRM order created
    cancelled: frozenset[int]  # ERP order ids cancelled


@dataclass(frozen=True, slots=True)
class StateRow:
    """The new persisted fold of one CRM order and its last decision."""

    draft: OrderDraft
    last_decision: str | None
    crm_order_version: int | None
    crm_account_id: int | None


@dataclass(frozen=True, slots=True)
class IdentityRow:
    """One row of the CRM order <-> ERP order mapping (position-guarded upsert)."""

    record: Mapping[str, Any]  # the ambidex.order-identity record
    position: SourcePosition


class UnitOfWork(Protocol):
    """One ERP transaction of order-sync (see the module docstring)."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...

    async def lock_orders(self, crm_order_ids: Sequence[int]) -> Mapping[int, StoredOrder]:
        """Lock these orders' folds (created empty if new) in id order; return them."""
        ...

    async def rejected_in_crm(self, crm_order_ids: Sequence[int]) -> frozenset[int]:
        """Those of ``crm_order_ids`` whose CRM status says ``rejected``."""
        ...

    async def crm_orders(self, crm_order_ids: Sequence[int]) -> Mapping[int, CrmOrderRows]:
        """These orders as the CRM database has them now (absent: no such order)."""
        ...

    async def references(
        self, account_ids: Sequence[int], product_ids: Sequence[int]
    ) -> References:
        """Accounts and product SKUs (CRM), currencies, warehouses, the items of those
        SKUs and the accounts' customers (ERP)."""
        ...

    async def erp_orders(self, crm_order_ids: Sequence[int]) -> Mapping[int, ErpOrderSnapshot]:
        """The ERP orders of these CRM orders (locked), by CRM order id."""
        ...

    async def holds(self, snapshots: Iterable[ErpOrderSnapshot]) -> Holds:
        """The ERP documents pinning the lines of the open orders among ``snapshots``."""
        ...

    async def write(self, writes: ErpWrites) -> Written:
        """Write customers, new orders with their lines, amendments, cancellations."""
        ...

    async def record(self, identities: Sequence[IdentityRow], states: Sequence[StateRow]) -> None:
        """Record the identity mapping and the new folds."""
        ...

    async def commit(self) -> None:
        """Make everything of this unit of work durable (else it is rolled back)."""
        ...

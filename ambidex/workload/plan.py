"""Which business operation the workload runs next: a pure, seeded plan.

The sequence of operation kinds depends only on the seed, so two runs with the same
seed ask for the same business activity in the same order. Each operation also gets
its own random generator derived from ``(seed, index)``, so its parameters (which
quantities, which prices, partial or full) do not depend on how the operations were
interleaved by the concurrent workers.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from enum import StrEnum


class OperationKind(StrEnum):
    """One realistic source transaction, named as the business names it."""

    # CRM: sales, contracts, customer service
    CREATE_QUOTE = "create_quote"
    ACCEPT_QUOTE = "accept_quote"
    CONFIRM_ORDER = "confirm_order"
    AMEND_ORDER = "amend_order"
    CANCEL_ORDER = "cancel_order"
    UPDATE_ACCOUNT_BILLING = "update_account_billing"
    CREATE_ACCOUNT = "create_account"
    SIGN_CONTRACT = "sign_contract"
    AMEND_CONTRACT = "amend_contract"
    HANDLE_SERVICE_CASE = "handle_service_case"
    RUN_PROMOTION = "run_promotion"
    ASK_FEASIBILITY = "ask_feasibility"
    # ERP: the ERP's own users and processes
    ENTER_ERP_ORDER = "enter_erp_order"
    RECEIVE_STOCK = "receive_stock"
    ISSUE_STOCK = "issue_stock"
    RESERVE_STOCK = "reserve_stock"
    RELEASE_RESERVATION = "release_reservation"
    PLAN_PRODUCTION = "plan_production"
    PROGRESS_PRODUCTION = "progress_production"
    INSPECT_QUALITY = "inspect_quality"
    SHIP_ORDER = "ship_order"
    DISPATCH_SHIPMENT = "dispatch_shipment"
    CONFIRM_DELIVERY = "confirm_delivery"
    INVOICE_ORDER = "invoice_order"
    INVOICE_INSTALLMENT = "invoice_installment"
    REGISTER_PAYMENT = "register_payment"
    CANCEL_INVOICE = "cancel_invoice"
    CANCEL_ERP_ORDER = "cancel_erp_order"
    HANDLE_RETURN = "handle_return"

    @property
    def side(self) -> str:
        """``"crm"`` or ``"erp"``: which database the operation writes."""
        return "crm" if self in CRM_OPERATIONS else "erp"


CRM_OPERATIONS: frozenset[OperationKind] = frozenset(
    {
        OperationKind.CREATE_QUOTE,
        OperationKind.ACCEPT_QUOTE,
        OperationKind.CONFIRM_ORDER,
        OperationKind.AMEND_ORDER,
        OperationKind.CANCEL_ORDER,
        OperationKind.UPDATE_ACCOUNT_BILLING,
        OperationKind.CREATE_ACCOUNT,
        OperationKind.SIGN_CONTRACT,
        OperationKind.AMEND_CONTRACT,
        OperationKind.HANDLE_SERVICE_CASE,
        OperationKind.RUN_PROMOTION,
        OperationKind.ASK_FEASIBILITY,
    }
)

#: Relative frequency of each operation. Sales flow dominates the CRM side;
#: reservation, shipping, invoicing and cash dominate the ERP side. Contracts are a few
#: percent of the CRM's operations, each installment billing run and payment a few of
#: the ERP's (docs/workload.md).
WEIGHTS: dict[OperationKind, int] = {
    OperationKind.CREATE_QUOTE: 11,
    OperationKind.ACCEPT_QUOTE: 8,
    OperationKind.CONFIRM_ORDER: 7,
    OperationKind.AMEND_ORDER: 3,
    OperationKind.CANCEL_ORDER: 2,
    OperationKind.UPDATE_ACCOUNT_BILLING: 3,
    OperationKind.CREATE_ACCOUNT: 1,
    OperationKind.SIGN_CONTRACT: 3,
    OperationKind.AMEND_CONTRACT: 2,
    OperationKind.HANDLE_SERVICE_CASE: 3,
    OperationKind.RUN_PROMOTION: 1,
    OperationKind.ASK_FEASIBILITY: 2,
    OperationKind.ENTER_ERP_ORDER: 6,
    OperationKind.RECEIVE_STOCK: 4,
    OperationKind.ISSUE_STOCK: 2,
    OperationKind.RESERVE_STOCK: 8,
    OperationKind.RELEASE_RESERVATION: 1,
    OperationKind.PLAN_PRODUCTION: 3,
    OperationKind.PROGRESS_PRODUCTION: 6,
    OperationKind.INSPECT_QUALITY: 3,
    OperationKind.SHIP_ORDER: 7,
    OperationKind.DISPATCH_SHIPMENT: 3,
    OperationKind.CONFIRM_DELIVERY: 4,
    OperationKind.INVOICE_ORDER: 6,
    OperationKind.INVOICE_INSTALLMENT: 4,
    OperationKind.REGISTER_PAYMENT: 7,
    OperationKind.CANCEL_INVOICE: 1,
    OperationKind.CANCEL_ERP_ORDER: 1,
    OperationKind.HANDLE_RETURN: 2,
}

_KINDS: tuple[OperationKind, ...] = tuple(WEIGHTS)
_CUMULATIVE: tuple[int, ...] = tuple(itertools.accumulate(WEIGHTS[k] for k in _KINDS))


def iter_operations(seed: int) -> Iterator[OperationKind]:
    """The endless, seeded sequence of operation kinds."""
    rng = random.Random(f"ambidex-workload-plan:{seed}")
    while True:
        yield rng.choices(_KINDS, cum_weights=_CUMULATIVE, k=1)[0]


def plan_operations(seed: int, count: int) -> list[OperationKind]:
    """The first ``count`` operations of the plan for ``seed``."""
    if count < 0:
        raise ValueError("count must not be negative")
    return list(itertools.islice(iter_operations(seed), count))


def operation_rng(seed: int, index: int) -> random.Random:
    """The random generator for the parameters of operation number ``index``."""
    return random.Random(f"ambidex-workload-op:{seed}:{index}")

"""The ERP customer master follows the CRM account's billing data.

Billing data (name, address, VAT, currency) follow the CRM for every ERP customer
linked by ``crm_account_id``, whatever its origin; code, payment terms, active and
origin stay ERP-owned. An account with no ERP customer gets one only with its first
synced order (no customers that never order). A currency the ERP does not accept gives
:class:`CustomerRejected`.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from services.order_sync.domain.decisions import CustomerUpsert
from services.shared.source_records.crm import Account
from services.shared.source_records.erp import Customer


def customer_from_account(
    account: Account, existing: Customer | None = None
) -> CustomerUpsert:
    """The ERP customer an account should have (whole desired state)."""
    return CustomerUpsert(
        crm_account_id=account.id,
        name=account.name,
        street=account.street,
        city=account.city,
        postal_code=account.postal_code,
        country_code=account.country_code,
        vat_number=account.vat_number,
        currency=account.currency,
        existing_customer_id=None if existing is None else existing.id,
    )


_CUSTOMER_FIELDS = (
    "name", "street", "city", "postal_code", "country_code", "vat_number", "currency"
)


def customer_changes(account: Account, existing: Customer | None) -> CustomerUpsert | None:
    """The upsert needed to bring the account's ERP customer up to date, or None.

    Billing data follow the CRM for every customer linked by crm_account_id, whatever
    its origin (the link means the CRM is the master of that customer's billing data).
    """
    if existing is not None and existing.crm_account_id != account.id:
        raise ValueError(
            f"ERP customer {existing.id} is linked to CRM account {existing.crm_account_id}, "
            f"not {account.id}"
        )
    wanted = customer_from_account(account, existing)
    if existing is not None and all(
        getattr(wanted, name) == getattr(existing, name) for name in _CUSTOMER_FIELDS
    ):
        return None
    return wanted


@dataclass(frozen=True, slots=True)
class CustomerRejected:
    """An account's billing change that cannot reach the ERP customer master."""

    crm_account_id: int
    reasons: tuple[str, ...]


def decide_customer(
    account: Account, existing: Customer | None, accepted_currencies: Collection[str]
) -> CustomerUpsert | CustomerRejected | None:
    """What an account change means for the ERP customer master (None: nothing to do).

    Only customers already linked to the account follow its billing changes here; an
    account without ERP customer gets one when its first order is created (:func:`decide`),
    so the ERP is not filled with customers that never order.
    """
    if existing is None:
        return None
    upsert = customer_changes(account, existing)
    if upsert is None:
        return None
    if upsert.currency != existing.currency and upsert.currency not in accepted_currencies:
        return CustomerRejected(account.id, (
            f"account {account.id}: currency {account.currency} is not accepted by the ERP",
        ))
    return upsert

"""Whether a CRM order can become an ERP order, and the ERP order it becomes.

Every line is validated and *all* problems are collected into one rejection (unknown
CRM product, SKU without ERP item, inactive ERP item on a new or changed line,
missing/non-positive/over-precise quantity, missing/negative/over-precise price,
discount outside 0..100, duplicate line numbers, no lines, currency not accepted by the
ERP, unknown warehouse, unknown account, account currency the ERP does not accept when
a customer has to be created). A currency on the order different from the account's
currency is *allowed*: the ERP order carries its own currency; the customer's currency
is only its default. ERP line ``line_no`` = CRM ``line_no`` (both unique per order),
which is how lines are matched on amendment.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from decimal import Decimal

from services.order_sync.domain.crm_orders import CrmOrder
from services.order_sync.domain.customers import customer_changes
from services.order_sync.domain.decisions import CustomerUpsert, ErpHeaderSpec, ErpLineSpec
from services.order_sync.domain.erp_orders import (
    ErpOrderLineSnapshot,
    ErpOrderSnapshot,
    ItemCatalogue,
)
from services.order_sync.domain.money import PRICE_PLACES, QUANTITY_PLACES, line_amount
from services.shared.cooperative import Pausable
from services.shared.money import Money
from services.shared.source_records.crm import Account
from services.shared.source_records.erp import Customer, Item

_HUNDRED = Decimal(100)


def places(value: Decimal) -> int:
    exponent = value.normalize().as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def _build_lines(
    order: CrmOrder,
    catalogue: ItemCatalogue,
    existing: Mapping[int, ErpOrderLineSnapshot],
    problems: list[str],
) -> Pausable[list[ErpLineSpec]]:
    specs: list[ErpLineSpec] = []
    if not order.lines:
        problems.append("order has no lines")
    seen: dict[int, int] = {}
    for line in order.lines:
        yield
        label = f"line {line.line_no}"
        if line.line_no in seen:
            problems.append(f"{label}: line number used twice (lines {seen[line.line_no]} "
                            f"and {line.id})")
            continue
        seen[line.line_no] = line.id
        bad = False

        item: Item | None = None
        sku = catalogue.product_sku(line.product_id)
        if sku is None:
            problems.append(f"{label}: CRM product {line.product_id} is unknown")
            bad = True
        else:
            item = catalogue.erp_item(sku)
            previous = existing.get(line.line_no)
            if item is None:
                problems.append(f"{label}: SKU {sku} has no ERP item")
                bad = True
            elif not item.active and (previous is None or previous.item_id != item.id):
                problems.append(f"{label}: ERP item {sku} is inactive")
                bad = True

        quantity = line.quantity
        if quantity is None:
            problems.append(f"{label}: quantity missing")
            bad = True
        elif not quantity.is_finite() or quantity <= 0:
            problems.append(f"{label}: quantity must be positive, got {quantity}")
            bad = True
        elif places(quantity) > QUANTITY_PLACES:
            problems.append(f"{label}: quantity {quantity} has more than "
                            f"{QUANTITY_PLACES} decimal places")
            bad = True

        price = line.unit_price
        if price is None:
            problems.append(f"{label}: unit price missing")
            bad = True
        elif price.amount < 0:
            problems.append(f"{label}: unit price must not be negative, got {price}")
            bad = True
        elif places(price.amount) > PRICE_PLACES:
            problems.append(f"{label}: unit price {price.amount} has more than "
                            f"{PRICE_PLACES} decimal places")
            bad = True

        discount = line.discount_pct
        if not discount.is_finite() or not Decimal(0) <= discount <= _HUNDRED:
            problems.append(f"{label}: discount {discount}% is not between 0 and 100")
            bad = True

        if bad or item is None or sku is None or quantity is None or price is None:
            continue
        specs.append(ErpLineSpec(
            line_no=line.line_no,
            crm_line_id=line.id,
            item_id=item.id,
            sku=sku,
            quantity=quantity,
            unit_price=price,
            discount_pct=discount,
            amount=line_amount(quantity, price, discount),
        ))
    return specs


def validate(
    order: CrmOrder,
    account: Account | None,
    erp_customer: Customer | None,
    erp_order: ErpOrderSnapshot | None,
    catalogue: ItemCatalogue,
    accepted_currencies: Collection[str],
) -> Pausable[tuple[ErpHeaderSpec | None, list[ErpLineSpec], CustomerUpsert | None, list[str]]]:
    """The ERP header and lines ``order`` becomes, the customer upsert it needs, and
    every problem found (the header is None if there is any); pausable per line."""
    problems: list[str] = []
    if order.currency not in accepted_currencies:
        problems.append(f"currency {order.currency} is not accepted by the ERP")
    customer: CustomerUpsert | None = None
    if account is None:
        problems.append(f"account {order.account_id} is unknown")
    elif account.id != order.account_id:
        raise ValueError(f"account {account.id} given for order of account {order.account_id}")
    else:
        customer = customer_changes(account, erp_customer)
        if (
            customer is not None
            and customer.currency not in accepted_currencies
            and (erp_customer is None or erp_customer.currency != customer.currency)
        ):
            problems.append(
                f"account {account.id} currency {account.currency} is not accepted by the "
                "ERP, so its ERP customer cannot be "
                + ("created" if erp_customer is None else "updated")
            )
    warehouse_id = catalogue.warehouse_id(order.warehouse_code)
    if warehouse_id is None:
        problems.append(
            "no default ERP warehouse" if order.warehouse_code is None
            else f"warehouse {order.warehouse_code} is unknown in the ERP"
        )
    existing = {} if erp_order is None else {line.line_no: line for line in erp_order.lines}
    lines = yield from _build_lines(order, catalogue, existing, problems)
    if problems or warehouse_id is None:
        return None, lines, customer, problems
    total = Money.zero(order.currency)
    for line in lines:
        yield
        total = total + line.amount
    header = ErpHeaderSpec(
        crm_order_id=order.id,
        crm_order_version=order.version,
        client_order_ref=order.number,
        crm_account_id=order.account_id,
        customer_id=None if erp_customer is None else erp_customer.id,
        currency=order.currency,
        requested_date=order.requested_date,
        warehouse_id=warehouse_id,
        amount_total=total,
    )
    return header, lines, customer, problems

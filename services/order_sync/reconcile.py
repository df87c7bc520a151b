"""`ambidex reconcile order-sync`: every CRM order against its ERP order.

Reads both databases (in pages of CRM order ids, so it runs in bounded memory and can
show progress) and compares, per CRM order that is not a draft:

* existence: a confirmed/amended order has exactly one ERP order (``crm_order_id``);
* state: a cancelled CRM order's ERP order is cancelled, a live one's is not;
* header: currency; the ERP ``amount_total`` equals the CRM total and what the ERP's own
  SQL computes from its lines (``sum(round(qty * price * (100 - discount) / 100, 2))``);
* lines by ``line_no``: SKU (CRM product vs ERP item), quantity, unit price, discount.

Each difference says what the CRM shows for the order (``order_sync_status``): a
difference the CRM has been told about (status ``rejected`` or ``conflict`` for that
version) is *known*; any other — above all one whose status says ``synced`` — is a
defect. The pure comparison is :func:`compare_order`; I/O is :func:`reconcile_orders`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import asyncpg

from services.shared.money import line_net

PAGE = 1_000

_CRM_ORDERS = """
SELECT id, number, state, version, currency_code, amount_total FROM crm.sales_order
WHERE id > $1 AND state <> 'draft' AND ($3::bigint[] IS NULL OR id = ANY($3::bigint[]))
ORDER BY id LIMIT $2
"""
_CRM_LINES = """
SELECT l.order_id, l.line_no, p.sku, l.quantity, l.unit_price, l.discount_pct
FROM crm.sales_order_line l LEFT JOIN crm.product p ON p.id = l.product_id
WHERE l.order_id = ANY($1::bigint[])
"""
_CRM_STATUS = """
SELECT crm_order_id, status, sync_state, reason, crm_order_version
FROM crm_integration.order_sync_status WHERE crm_order_id = ANY($1::bigint[])
"""
_ERP_ORDERS = """
SELECT o.id, o.name, o.crm_order_id, o.state, o.currency_code, o.amount_total,
       o.crm_order_version,
       (SELECT coalesce(sum(round(l.quantity * l.unit_price * (100 - l.discount_pct) / 100,
                                  c.decimal_places)), 0)
        FROM erp.sales_order_line l WHERE l.order_id = o.id) AS lines_total
FROM erp.sales_order o JOIN erp.currency c ON c.code = o.currency_code
WHERE o.crm_order_id = ANY($1::bigint[])
"""
_ERP_LINES = """
SELECT l.order_id, l.line_no, i.sku, l.quantity, l.unit_price, l.discount_pct
FROM erp.sales_order_line l JOIN erp.item i ON i.id = l.item_id
WHERE l.order_id = ANY($1::bigint[])
"""


@dataclass(frozen=True, slots=True)
class OrderLine:
    line_no: int
    sku: str | None
    quantity: Decimal
    unit_price: Decimal
    discount_pct: Decimal


@dataclass(frozen=True, slots=True)
class CrmSide:
    id: int
    number: str
    state: str
    version: int
    currency: str
    amount_total: Decimal
    lines: tuple[OrderLine, ...]
    status: str | None = None
    status_version: int | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class ErpSide:
    id: int
    name: str
    state: str
    currency: str
    amount_total: Decimal
    lines_total: Decimal
    lines: tuple[OrderLine, ...]


@dataclass(frozen=True, slots=True)
class OrderDifference:
    crm_order_id: int
    erp_order: str | None
    field: str
    crm: str
    erp: str
    status: str | None
    known: bool

    def __str__(self) -> str:
        shown = f"status {self.status}" if self.status else "no status"
        tag = "known" if self.known else "DEFECT"
        return (f"{tag} CRM order {self.crm_order_id} / ERP {self.erp_order or '-'}: "
                f"{self.field}: CRM {self.crm} != ERP {self.erp} ({shown})")

    def as_json(self) -> dict[str, Any]:
        return {
            "crm_order_id": self.crm_order_id, "erp_order": self.erp_order,
            "field": self.field, "crm": self.crm, "erp": self.erp,
            "status": self.status, "known": self.known,
        }


def _text(value: Any) -> str:
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    return "-" if value is None else str(value)


def compare_order(crm: CrmSide, erp: Sequence[ErpSide]) -> list[OrderDifference]:
    """Every difference between a (non-draft) CRM order and its ERP order(s)."""
    known = (crm.status in ("rejected", "conflict") and crm.status_version == crm.version)
    found: list[OrderDifference] = []

    def differ(field_name: str, crm_value: Any, erp_value: Any, erp_name: str | None) -> None:
        found.append(OrderDifference(crm.id, erp_name, field_name, _text(crm_value),
                                     _text(erp_value), crm.status, known))

    live = crm.state != "cancelled"
    if len(erp) > 1:
        differ("ERP orders", 1, len(erp), ", ".join(e.name for e in erp))
    if not erp:
        if live:
            differ("ERP order", "exists", "missing", None)
        return found
    order = erp[0]
    if live and order.state == "cancelled":
        differ("state", crm.state, order.state, order.name)
    if not live:
        if order.state != "cancelled":
            differ("state", crm.state, order.state, order.name)
        return found
    if crm.currency != order.currency:
        differ("currency", crm.currency, order.currency, order.name)
    expected_total = sum(
        (line_net(ln.quantity, ln.unit_price, ln.discount_pct, crm.currency)
         for ln in crm.lines), Decimal(0),
    )
    if crm.amount_total != order.amount_total:
        differ("total", crm.amount_total, order.amount_total, order.name)
    elif expected_total != order.amount_total:
        differ("total of the lines", expected_total, order.amount_total, order.name)
    if order.lines_total != order.amount_total:
        differ("ERP total vs the ERP's sum of its lines", order.lines_total,
               order.amount_total, order.name)
    wanted = {ln.line_no: ln for ln in crm.lines}
    have = {ln.line_no: ln for ln in order.lines}
    for line_no in sorted(set(wanted) | set(have)):
        a, b = wanted.get(line_no), have.get(line_no)
        if a is None or b is None:
            differ(f"line {line_no}", "present" if a else "absent",
                   "present" if b else "absent", order.name)
            continue
        for name in ("sku", "quantity", "unit_price", "discount_pct"):
            if getattr(a, name) != getattr(b, name):
                differ(f"line {line_no} {name}", getattr(a, name), getattr(b, name), order.name)
    return found


def _lines(rows: Iterable[Mapping[str, Any]]) -> dict[int, list[OrderLine]]:
    grouped: dict[int, list[OrderLine]] = {}
    for r in rows:
        grouped.setdefault(int(r["order_id"]), []).append(OrderLine(
            int(r["line_no"]), None if r["sku"] is None else str(r["sku"]),
            Decimal(r["quantity"]), Decimal(r["unit_price"]), Decimal(r["discount_pct"]),
        ))
    return grouped


@dataclass
class Report:
    orders: int = 0
    differences: list[OrderDifference] = field(default_factory=list)

    @property
    def defects(self) -> list[OrderDifference]:
        return [d for d in self.differences if not d.known]

    @property
    def lines(self) -> list[OrderDifference]:
        return self.differences

    @property
    def summary(self) -> str:
        return (f"{self.orders} orders compared, {len(self.differences)} differences "
                f"({len(self.defects)} not known to the CRM)")

    def failing(self, options: Mapping[str, Any]) -> bool:
        """Defects fail the run; with ``strict`` the known differences too."""
        return bool(self.differences if options.get("strict") else self.defects)


async def reconcile_orders(
    crm_dsn: str,
    erp_dsn: str,
    *,
    order_ids: Sequence[int] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Report:
    """Compare every non-draft CRM order (or ``order_ids``) with the ERP."""
    crm = await asyncpg.connect(crm_dsn)
    erp = await asyncpg.connect(erp_dsn)
    report = Report()
    ids = None if order_ids is None else sorted(set(order_ids))
    try:
        total = int(await crm.fetchval(
            "SELECT count(*) FROM crm.sales_order WHERE state <> 'draft' "
            "AND ($1::bigint[] IS NULL OR id = ANY($1::bigint[]))", ids))
        after = 0
        while True:
            headers = await crm.fetch(_CRM_ORDERS, after, PAGE, ids)
            if not headers:
                break
            after = int(headers[-1]["id"])
            page = [int(h["id"]) for h in headers]
            crm_lines = _lines(await crm.fetch(_CRM_LINES, page))
            statuses = {int(r["crm_order_id"]): r for r in await crm.fetch(_CRM_STATUS, page)}
            erp_headers = await erp.fetch(_ERP_ORDERS, page)
            erp_lines = _lines(await erp.fetch(_ERP_LINES, [int(h["id"]) for h in erp_headers]))
            by_crm: dict[int, list[ErpSide]] = {}
            for h in erp_headers:
                by_crm.setdefault(int(h["crm_order_id"]), []).append(ErpSide(
                    int(h["id"]), str(h["name"]), str(h["state"]),
                    str(h["currency_code"]).strip(), Decimal(h["amount_total"]),
                    Decimal(h["lines_total"]),
                    tuple(sorted(erp_lines.get(int(h["id"]), []), key=lambda x: x.line_no)),
                ))
            for h in headers:
                order_id = int(h["id"])
                status = statuses.get(order_id)
                side = CrmSide(
                    order_id, str(h["number"]), str(h["state"]), int(h["version"]),
                    str(h["currency_code"]).strip(), Decimal(h["amount_total"]),
                    tuple(sorted(crm_lines.get(order_id, []), key=lambda x: x.line_no)),
                    None if status is None else status["status"],
                    None if status is None else status["crm_order_version"],
                    None if status is None else status["reason"],
                )
                report.differences.extend(compare_order(side, by_crm.get(order_id, [])))
            report.orders += len(headers)
            if progress is not None:
                progress(report.orders, total)
    finally:
        await crm.close()
        await erp.close()
    return report

"""production-status's write-back against a recomputation from both databases (I/O).

:func:`recompute_statuses` reads the final rows (ERP sales orders and lines, production
orders, inspections, shipments and their lines; CRM sales orders; the order identity
order-sync keeps in ``erp_integration.order_identity``), folds them into a fresh
:class:`~.fold.ProgressFold` in memory (the same core the service runs, without its
history, positions or holds: :mod:`.recompute` proves the two agree) and builds each
CRM order's status. :func:`read_statuses` reads what the service wrote into
``crm_integration.fulfilment_status`` / ``fulfilment_line``; :func:`diff_statuses`
compares them field by field.

Compared: what follows from the rows alone (stage, quantities, counts, carrier and
tracking, promised date, ids, per line the same). Not compared: the predicted dates
and the risk level, which depend on the time they were assessed at and on durations
learned from other orders since (a status is rewritten when its order changes, not
when another order's delivery moves a learned p90). The report's shapes and the
comparison are the kit's (:mod:`services.shared.reconcile`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from functools import partial
from typing import Any

import asyncpg

from services.production_status import publish
from services.production_status.fold import ProgressFold
from services.production_status.records import (
    CRM_ORDER,
    ERP_ORDER,
    ERP_ORDER_LINE,
    INSPECTION,
    PRODUCTION_ORDER,
    SHIPMENT,
    SHIPMENT_LINE,
    Identity,
    parse,
)
from services.production_status.risk import Level
from services.production_status.status import line_statuses, order_status
from services.production_status.writeback import FULFILMENT_LINE, FULFILMENT_STATUS
from services.shared.errors import BadInput
from services.shared.position import SourcePosition
from services.shared.reconcile import Difference, RefusedRow, diff_rows
from services.shared.state.store import MemoryState

COMPARED = ("crm_order_number", "erp_order_id", "erp_order_name", "stage", "ordered",
            "produced", "passed", "shipped", "delivered", "lines", "shipments", "carrier",
            "tracking_ref", "promised_date")
LINE_COMPARED = ("erp_line_id", "item_id", "stage", "ordered", "produced", "passed", "shipped",
                 "delivered", "carrier", "tracking_ref")
ERP_SOURCES = {
    ERP_ORDER: "erp.sales_order", ERP_ORDER_LINE: "erp.sales_order_line",
    PRODUCTION_ORDER: "erp.production_order", INSPECTION: "erp.quality_inspection",
    SHIPMENT: "erp.shipment", SHIPMENT_LINE: "erp.shipment_line",
}
IDENTITIES = """
SELECT i.crm_order_id, i.crm_order_number, i.crm_order_version, i.erp_order_id,
       i.erp_order_name, coalesce(o.state = 'cancelled', false) AS cancelled
FROM erp_integration.order_identity i LEFT JOIN erp.sales_order o ON o.id = i.erp_order_id"""
#: the figures of a status, as the write-back holds them
Status = dict[str, Any]


def difference(crm_order_id: int, field: str, written: Any, recomputed: Any) -> Difference:
    """A difference of one CRM order's status (``field``: a column, "line <n>.<column>",
    "line <n>" or "row")."""
    return Difference(f"CRM order {crm_order_id}", (("crm_order_id", crm_order_id),), field,
                      written, recomputed)


def _comparable(record: Mapping[str, Any]) -> Status:
    status = {name: record[name] for name in COMPARED}
    status["lines"] = len(record["lines"]) if isinstance(record["lines"], list) else \
        record["lines"]
    status["line"] = {line["line_no"]: {n: line[n] for n in LINE_COMPARED}
                      for line in record.get("line_rows", record["lines"])
                      if isinstance(line, Mapping)}
    return status


def line_difference(crm_order_id: int, line_no: int, field: str, written: Any,
                    recomputed: Any) -> Difference:
    name = f"line {line_no}" if field == "row" else f"line {line_no}.{field}"
    return difference(crm_order_id, name, written, recomputed)


async def recompute_statuses(
    crm_dsn: str, erp_dsn: str, crm_orders: Collection[int] | None = None
) -> tuple[dict[int, Status], list[RefusedRow]]:
    """Every CRM order's status (only ``crm_orders`` if given) from the final rows, and
    the source rows the service refuses (left out here, as there)."""
    fold = ProgressFold(MemoryState())
    refused: list[RefusedRow] = []
    position = SourcePosition(1, 1)
    erp = await asyncpg.connect(erp_dsn)
    try:
        for table, source in ERP_SOURCES.items():
            for row in await erp.fetch(f"SELECT * FROM {source}"):
                try:
                    fold.apply(table, row["id"], position, parse(table, dict(row)))
                except BadInput as error:
                    refused.append(RefusedRow(source, row["id"], error.reason))
        identities = await erp.fetch(IDENTITIES)
    finally:
        await erp.close()
    crm = await asyncpg.connect(crm_dsn)
    try:
        for row in await crm.fetch("SELECT * FROM crm.sales_order"):
            try:
                fold.apply(CRM_ORDER, row["id"], position, parse(CRM_ORDER, dict(row)))
            except BadInput as error:
                refused.append(RefusedRow("crm.sales_order", row["id"], error.reason))
    finally:
        await crm.close()
    for row in identities:
        fold.apply_identity(Identity(row["crm_order_id"], row["crm_order_number"],
                                     row["crm_order_version"], row["erp_order_id"],
                                     row["erp_order_name"], row["cancelled"]))
    now = datetime.now(UTC)  # only for the predictions, which are not compared
    wanted = set(crm_orders) if crm_orders is not None else {r["crm_order_id"] for r in identities}
    out: dict[int, Status] = {}
    for crm_order_id in sorted(wanted):
        status = order_status(fold, crm_order_id, now)
        if status is None:
            continue
        lines = line_statuses(fold, status.erp_order_id, now)
        record = publish.status_record(status, lines, (Level.NONE, None), now)
        out[crm_order_id] = _comparable(record)
    return out, refused


async def read_statuses(crm_dsn: str, crm_orders: Collection[int] | None = None
                        ) -> dict[int, Status]:
    """What the service wrote (rows not deleted), in the same shape."""
    crm = await asyncpg.connect(crm_dsn)
    try:
        where = "" if crm_orders is None else " AND crm_order_id = ANY($1::bigint[])"
        args: list[Any] = [] if crm_orders is None else [list(crm_orders)]
        heads = await crm.fetch(f"SELECT * FROM {FULFILMENT_STATUS} WHERE NOT deleted{where}",
                                *args)
        lines = await crm.fetch(f"SELECT * FROM {FULFILMENT_LINE} WHERE NOT deleted{where}",
                                *args)
    finally:
        await crm.close()
    by_order: dict[int, list[dict[str, Any]]] = {}
    for line in lines:
        by_order.setdefault(line["crm_order_id"], []).append(dict(line))
    return {head["crm_order_id"]: _comparable({**dict(head), "line_rows":
                                               by_order.get(head["crm_order_id"], [])})
            for head in heads}


def diff_statuses(written: Mapping[int, Status], recomputed: Mapping[int, Status]
                  ) -> list[Difference]:
    out: list[Difference] = []
    for crm_order_id in sorted(set(written) | set(recomputed)):
        mine, theirs = written.get(crm_order_id), recomputed.get(crm_order_id)
        out += diff_rows({} if mine is None else {crm_order_id: mine},
                         {} if theirs is None else {crm_order_id: theirs}, COMPARED,
                         difference)
        if mine is not None and theirs is not None:
            out += diff_rows(mine["line"], theirs["line"], LINE_COMPARED,
                             partial(line_difference, crm_order_id))
    return out


async def reconcile_once(crm_dsn: str, erp_dsn: str, crm_orders: Collection[int] | None = None
                         ) -> tuple[int, list[Difference], list[RefusedRow]]:
    """``(orders compared, differences, refused source rows)``."""
    recomputed, refused = await recompute_statuses(crm_dsn, erp_dsn, crm_orders)
    written = await read_statuses(crm_dsn, crm_orders)
    return len(set(recomputed) | set(written)), diff_statuses(written, recomputed), refused

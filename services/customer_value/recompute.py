"""customer-value from scratch: the figures a batch recomputation from both databases
gives (invariant 1: every materialized figure equals this).

:func:`recompute` is pure: the latest rows (canonical records and receivables'
positions) in, every (account, month, currency) figure set out. It shares with the fold
only what a single row contributes (:func:`~.sources.node_of`) and the bucket
arithmetic; the joins (a row to its parent, an ERP customer to its CRM account) are
done here directly over the rows. :func:`load` reads the rows from the two databases
(positions from ``crm_integration.receivable_position``, what receivables published).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import asyncpg

from services.customer_value.figures import Bucket, CustomerValue, add_to
from services.customer_value.fold import ValueKey
from services.customer_value.sources import (
    NOWHERE,
    POSITION,
    Anchor,
    Node,
    ReceivablePosition,
    node_of,
)
from services.shared.errors import BadInput
from services.shared.source_records import record_type

#: the columns each captured table is read with (every column its record reads)
QUERIES: Mapping[str, str] = {
    "crm.account": "SELECT * FROM crm.account",
    "crm.sales_order": "SELECT * FROM crm.sales_order",
    "crm.contract": "SELECT * FROM crm.contract",
    "crm.service_case": "SELECT * FROM crm.service_case",
    "erp.customer": "SELECT * FROM erp.customer",
    "erp.sales_order": "SELECT * FROM erp.sales_order",
    "erp.production_order": "SELECT * FROM erp.production_order",
    "erp.quality_inspection": "SELECT * FROM erp.quality_inspection",
    "erp.shipment": "SELECT * FROM erp.shipment",
    "erp.shipment_line": "SELECT * FROM erp.shipment_line",
    "erp.return_order": "SELECT * FROM erp.return_order",
}
POSITIONS_QUERY = """SELECT contract_id, account_id, currency_code AS currency, invoiced, paid,
                       outstanding
                FROM crm_integration.receivable_position WHERE NOT deleted"""


def recompute(records: Iterable[Any]) -> dict[ValueKey, CustomerValue]:
    """Every figure set, from the latest version of each row."""
    nodes: dict[tuple[str, int], Node] = {}
    for record in records:
        node = node_of(record)
        nodes[(node.source, node.id)] = node

    resolved: dict[tuple[str, int], Anchor] = {}

    def anchor(key: tuple[str, int]) -> Anchor:
        if key not in resolved:
            node = nodes.get(key)
            if node is None:
                resolved[key] = NOWHERE
            elif node.parent is None:
                resolved[key] = node.own
            else:
                resolved[key] = node.own.over(anchor(node.parent))
        return resolved[key]

    links: dict[int, int] = {
        node.id: node.link for node in nodes.values()
        if node.source == "erp.customer" and node.link is not None
    }
    buckets: dict[ValueKey, Bucket] = defaultdict(dict)
    theirs: dict[ValueKey, dict[int, list[Node]]] = defaultdict(lambda: defaultdict(list))
    for row, node in nodes.items():
        where = anchor(row)
        if not (where.complete and node.contributes()):
            continue
        assert where.owner is not None and where.month and where.currency
        kind, number = where.owner.split(":")
        account = int(number) if kind == "a" else links.get(int(number))
        if account is None:
            continue  # an ERP customer no CRM account is linked to
        key = (account, where.month, where.currency)
        add_to(buckets[key], node.source, node.figures, node.counted)
        if kind == "c":
            theirs[key][int(number)].append(node)
    values: dict[ValueKey, CustomerValue] = {}
    for key, bucket in sorted(buckets.items()):
        if not bucket:
            continue
        # an ERP customer whose rows of this month net to nothing is not named
        customers = [c for c, nodes in theirs[key].items() if _nets_to_something(nodes)]
        values[key] = CustomerValue.of(*key, bucket, customers)
    return values


def _nets_to_something(nodes: list[Node]) -> bool:
    bucket: Bucket = {}
    for node in nodes:
        add_to(bucket, node.source, node.figures, node.counted)
    return bool(bucket)


async def load(crm: asyncpg.Connection, erp: asyncpg.Connection,
               refused: list[tuple[str, Any, BadInput]] | None = None) -> list[Any]:
    """The latest rows of every source, as records. A bad row raises ``BadInput``, or,
    with ``refused`` given, is left out and listed there as (source, id, error): the
    service dead-letters its transaction."""
    records: list[Any] = []

    def read(source: str, parse: Callable[[dict[str, Any]], Any], row: dict[str, Any]) -> None:
        try:
            records.append(parse(row))
        except BadInput as error:
            if refused is None:
                raise
            refused.append((source, row.get("id", row.get("contract_id")), error))

    for source, query in QUERIES.items():
        database, table = source.split(".")
        connection = crm if database == "crm" else erp
        reader = record_type(database, table)
        for row in await connection.fetch(query):
            read(source, reader.from_row, dict(row))
    for row in await crm.fetch(POSITIONS_QUERY):
        read(POSITION, ReceivablePosition.from_record, dict(row))
    return records

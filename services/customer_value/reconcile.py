"""customer-value's write-back against a recomputation from both databases (I/O).

:func:`reconcile_once` reads the final rows of both databases and receivables' positions
(:func:`.recompute.load`), recomputes every (account, month, currency) from scratch
(:func:`.recompute.recompute`), reads what the service wrote into
``crm_integration.customer_value`` and compares them figure by figure: every money
figure, every count, the linked ERP customer and the per-source breakdown
(``sources``). A month the service holds and the recomputation does not (or the other
way round) is a difference of field ``row``. Not compared: ``as_of`` (when, not what).

Source rows the service refuses (bad input: their transactions are dead-lettered whole)
are left out of the recomputation and listed, so a figure they would change is not
reported twice. The report's shapes and the comparison are the kit's
(:mod:`services.shared.reconcile`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import date
from typing import Any

import asyncpg
import orjson

from services.customer_value import emit
from services.customer_value.effects import TABLE
from services.customer_value.figures import COUNTS, MONEY, month_of
from services.customer_value.fold import ValueKey
from services.customer_value.recompute import load, recompute
from services.customer_value.sources import node_of
from services.shared.errors import BadInput
from services.shared.reconcile import Difference, RefusedRow, diff_rows

COMPARED = ("erp_customer_id", *MONEY, *emit.DERIVED, *COUNTS.values(), "sources")
WRITTEN = f"SELECT * FROM {TABLE} WHERE NOT deleted"


def difference(key: ValueKey, field: str, written: Any, recomputed: Any) -> Difference:
    """A difference of one (account, month, currency)."""
    account, month, currency = key
    return Difference(f"account {account} {month} {currency}",
                      (("account_id", account), ("month", month), ("currency", currency)),
                      field, written, recomputed)


def _comparable(row: Mapping[str, Any]) -> dict[str, Any]:
    out = {name: row[name] for name in COMPARED}
    sources = out["sources"]
    out["sources"] = orjson.loads(sources) if isinstance(sources, str | bytes) else sources
    return out


async def read_written(crm: asyncpg.Connection) -> dict[ValueKey, dict[str, Any]]:
    """What the service wrote (tombstones left out), comparable."""
    found: dict[ValueKey, dict[str, Any]] = {}
    for row in await crm.fetch(WRITTEN):
        month: date = row["month"]
        found[(int(row["account_id"]), month_of(month), str(row["currency_code"]))] = \
            _comparable(dict(row))
    return found


async def recomputed(crm: asyncpg.Connection, erp: asyncpg.Connection,
                     refused: list[RefusedRow]) -> dict[ValueKey, dict[str, Any]]:
    """The figures from the final rows, comparable; bad rows go to ``refused``."""
    bad: list[tuple[str, Any, BadInput]] = []
    records = await load(crm, erp, bad)
    usable = []
    for record in records:
        try:
            node_of(record)
        except BadInput as error:
            bad.append((type(record).__name__, getattr(record, "id", "?"), error))
            continue
        usable.append(record)
    refused.extend(RefusedRow(source, row_id, error.reason) for source, row_id, error in bad)
    return {key: _comparable(emit.row(value, None))
            for key, value in recompute(usable).items()}


def diff(written: Mapping[ValueKey, Mapping[str, Any]],
         expected: Mapping[ValueKey, Mapping[str, Any]]) -> list[Difference]:
    return diff_rows(written, expected, COMPARED, difference)


async def reconcile_once(crm_dsn: str, erp_dsn: str, accounts: Collection[int] | None = None,
                         ) -> tuple[int, list[Difference], list[RefusedRow]]:
    """(months compared, differences, refused source rows); ``accounts``: only these."""
    crm = await asyncpg.connect(crm_dsn)
    erp = await asyncpg.connect(erp_dsn)
    try:
        refused: list[RefusedRow] = []
        expected = await recomputed(crm, erp, refused)
        written = await read_written(crm)
    finally:
        await crm.close()
        await erp.close()
    if accounts is not None:
        mine = set(accounts)
        expected = {k: v for k, v in expected.items() if k[0] in mine}
        written = {k: v for k, v in written.items() if k[0] in mine}
    return len(set(expected) | set(written)), diff(written, expected), refused


__all__ = ["COMPARED", "Difference", "RefusedRow", "diff", "reconcile_once"]

"""Canonical records of the captured source tables, shared by every service.

:mod:`.crm` and :mod:`.erp` hold one frozen dataclass per table that services read,
each with ``from_row(row)`` built on :mod:`services.shared.rows`. :func:`record_type`
finds the record of a table. This is where a declarative mapping of a user's own
CRM/ERP tables onto these records will plug in: it will produce the row images
``from_row`` reads.
"""

from __future__ import annotations

from typing import Any

from services.shared.source_records import crm, erp

#: (database, table) -> its record type
RECORD_TYPES: dict[tuple[str, str], Any] = {
    record.table: record for record in (*crm.RECORDS, *erp.RECORDS)
}


def record_type(database: str, table: str) -> Any:
    """The canonical record type of ``database.table`` (``KeyError`` if none)."""
    try:
        return RECORD_TYPES[(database, table)]
    except KeyError:
        raise KeyError(f"no canonical record for {database}.{table}") from None


__all__ = ["RECORD_TYPES", "crm", "erp", "record_type"]

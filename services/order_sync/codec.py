"""order-sync's pure encodings: the persisted CRM order fold and the published records.

* :func:`encode_draft` / :func:`decode_draft` turn an :class:`OrderDraft` (header and
  line rows, each with its source position, deleted lines as tombstones) into JSON for
  ``erp_integration.order_state.draft`` and back, losslessly: ``Decimal`` stays a
  Decimal (as text, never a float), ``date``/``datetime`` keep their type. A decoded
  draft folds exactly like the original (same positions, same tombstones), so the
  fold survives restarts and is shared by every worker.
* :func:`identity_record`, :func:`status_record`, :func:`conflict_record` build the
  Avro records of ``ambidex.order-identity``, ``ambidex.order-status`` and
  ``ambidex.order-conflicts`` (schemas in ``schemas/published/``).

No I/O here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Any

import orjson

from services.order_sync.domain.folding import OrderDraft, RowVersion
from services.shared.cooperative import Pausable, run_to_end
from services.shared.position import SourcePosition

IDENTITY_SCHEMA = "order_identity"
STATUS_SCHEMA = "order_status"
CONFLICT_SCHEMA = "order_conflict"

IDENTITY_TOPIC = "ambidex.order-identity"
STATUS_TOPIC = "ambidex.order-status"
CONFLICT_TOPIC = "ambidex.order-conflicts"

_DECIMAL = "$d"
_DATE = "$date"
_DATETIME = "$dt"


# --------------------------------------------------------------------------- values


def _encode_value(value: Any) -> Any:
    if isinstance(value, Decimal):
        return {_DECIMAL: str(value)}
    if isinstance(value, datetime):  # before date: datetime is a date
        return {_DATETIME: value.isoformat()}
    if isinstance(value, date):
        return {_DATE: value.isoformat()}
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        raise TypeError("order-sync state never holds floats (money is exact)")
    raise TypeError(f"cannot persist {type(value).__name__} in order-sync state")


def _decode_value(value: Any) -> Any:
    if isinstance(value, dict) and len(value) == 1:
        ((tag, text),) = value.items()
        if tag == _DECIMAL:
            return Decimal(text)
        if tag == _DATE:
            return date.fromisoformat(text)
        if tag == _DATETIME:
            return datetime.fromisoformat(text)
    return value


def _encode_version(version: RowVersion) -> list[Any]:
    row = None if version.row is None else {k: _encode_value(v) for k, v in version.row.items()}
    return [version.position.commit_lsn, version.position.lsn, row]


def _decode_version(data: Sequence[Any]) -> RowVersion:
    commit, lsn, row = data
    decoded = None if row is None else MappingProxyType(
        {k: _decode_value(v) for k, v in row.items()}
    )
    return RowVersion(SourcePosition(int(commit), int(lsn)), decoded)


# --------------------------------------------------------------------------- drafts


def encode_draft(draft: OrderDraft) -> str:
    """JSON text of ``draft`` (see the module docstring)."""
    return run_to_end(encode_draft_steps(draft))


def encode_draft_steps(draft: OrderDraft) -> Pausable[str]:
    """:func:`encode_draft`, pausable after each line."""
    lines: dict[str, list[Any]] = {}
    for i, version in sorted(draft.lines.items()):
        yield
        lines[str(i)] = _encode_version(version)
    document = {
        "order_id": draft.order_id,
        "header": None if draft.header is None else _encode_version(draft.header),
        "lines": lines,
    }
    return orjson.dumps(document).decode()


def decode_draft(text: str | None, order_id: int) -> OrderDraft:
    """The draft stored as ``text`` (an empty draft of ``order_id`` for None)."""
    return run_to_end(decode_draft_steps(text, order_id))


def decode_draft_steps(text: str | None, order_id: int) -> Pausable[OrderDraft]:
    """:func:`decode_draft`, pausable after each line."""
    if text is None:
        return OrderDraft(order_id)
    document = orjson.loads(text)
    if document.get("order_id") != order_id:
        raise ValueError(f"stored draft of order {document.get('order_id')} read as {order_id}")
    header = document.get("header")
    lines: dict[int, RowVersion] = {}
    for i, version in (document.get("lines") or {}).items():
        yield
        lines[int(i)] = _decode_version(version)
    return OrderDraft(
        order_id,
        header=None if header is None else _decode_version(header),
        lines=MappingProxyType(lines),
    )


# --------------------------------------------------------------------------- records


def kafka_key(crm_order_id: int) -> bytes:
    """Published topics are keyed by the CRM order id as decimal text."""
    return str(crm_order_id).encode()


@dataclass(frozen=True, slots=True)
class StatusRow:
    """One ``crm_integration.order_sync_status`` row as order-sync wants it.

    ``sync_state``/``progress`` None means "leave the stored value alone" when written
    by the other side; :attr:`status` is the same rule as the table's generated column.
    """

    crm_order_id: int
    sync_state: str | None
    progress: str | None
    reason: str | None
    crm_order_version: int | None
    erp_order_id: int | None
    erp_order_name: str | None

    @property
    def status(self) -> str:
        return derived_status(self.sync_state, self.progress)


def derived_status(sync_state: str | None, progress: str | None) -> str:
    """What the CRM shows (mirrors ``order_sync_status.status``'s generated column)."""
    if sync_state in ("rejected", "conflict", "cancelled"):
        return sync_state
    if progress is not None:
        return progress
    return sync_state or "synced"


def status_record(row: StatusRow, now: datetime | None = None) -> dict[str, Any]:
    return {
        "crm_order_id": row.crm_order_id,
        "status": row.status,
        "sync_state": row.sync_state,
        "progress": row.progress,
        "reason": row.reason,
        "crm_order_version": row.crm_order_version,
        "erp_order_id": row.erp_order_id,
        "erp_order_name": row.erp_order_name,
        "updated_at": now or datetime.now(UTC),
    }


def identity_record(
    *,
    crm_order_id: int,
    crm_order_number: str,
    crm_order_version: int,
    crm_account_id: int,
    erp_order_id: int,
    erp_order_name: str,
    erp_customer_id: int,
    amount_total: Decimal,
    currency: str,
    cancelled: bool,
    now: datetime | None = None,
) -> dict[str, Any]:
    return {
        "crm_order_id": crm_order_id,
        "crm_order_number": crm_order_number,
        "crm_order_version": crm_order_version,
        "crm_account_id": crm_account_id,
        "erp_order_id": erp_order_id,
        "erp_order_name": erp_order_name,
        "erp_customer_id": erp_customer_id,
        "amount_total": amount_total,
        "currency": currency,
        "cancelled": cancelled,
        "synced_at": now or datetime.now(UTC),
    }


def conflict_event_id(
    crm_order_id: int, crm_order_version: int, kind: str, reasons: Sequence[str]
) -> str:
    digest = hashlib.sha256("\n".join(reasons).encode()).hexdigest()[:16]
    return f"{crm_order_id}:{crm_order_version}:{kind}:{digest}"


def conflict_record(
    *,
    kind: str,
    crm_order_id: int,
    crm_order_version: int,
    erp_order_id: int | None,
    reasons: Sequence[str],
    now: datetime | None = None,
) -> dict[str, Any]:
    if kind not in ("rejected", "conflict"):
        raise ValueError(f"conflict kind {kind!r} is not rejected/conflict")
    return {
        "event_id": conflict_event_id(crm_order_id, crm_order_version, kind, reasons),
        "kind": kind,
        "crm_order_id": crm_order_id,
        "crm_order_version": crm_order_version,
        "erp_order_id": erp_order_id,
        "reasons": list(reasons),
        "detected_at": now or datetime.now(UTC),
    }


def reason_text(reasons: Sequence[str]) -> str:
    return "; ".join(reasons)

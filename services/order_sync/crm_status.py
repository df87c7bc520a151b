"""order-sync's CRM write-back: ``crm_integration.order_sync_status`` and what it publishes.

:class:`StatusWriter` does the CRM write-back and publishing *after* the ERP commit,
in this order: read the stored status rows, publish the events of the rows that change
(identity, status, conflict), then upsert those rows (position-guarded). A crash
anywhere before the CRM upsert leaves the row unchanged, so the redelivered batch
(deciding NothingToDo) publishes again: at-least-once, consumers keep the latest
record per key (state topics) or deduplicate on ``event_id`` (alerts). A replay from
the beginning changes no row and publishes nothing.

Two sides write these rows: the CRM side (the sync state of a decision,
:meth:`StatusWriter.write_sync`) and the ERP side (progress,
:meth:`StatusWriter.write_progress`), each guarded by its own source position.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import asyncpg

from services.order_sync import codec
from services.order_sync.codec import StatusRow
from services.order_sync.domain.outcomes import OrderOutcome
from services.order_sync.erp_progress import ProgressCandidate
from services.shared.runtime import AvroPublisher

_STATUS_READ = """
SELECT crm_order_id, sync_state, progress, reason, crm_order_version, erp_order_id,
       erp_order_name, source_commit_lsn, source_lsn, erp_commit_lsn, erp_lsn
FROM crm_integration.order_sync_status WHERE crm_order_id = ANY($1::bigint[])
"""
_STATUS_SYNC_UPSERT = """
INSERT INTO crm_integration.order_sync_status AS s (crm_order_id, sync_state, reason,
    crm_order_version, erp_order_id, erp_order_name, source_commit_lsn, source_lsn)
SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::integer[], $5::bigint[],
                     $6::text[], $7::bigint[], $8::bigint[])
ON CONFLICT (crm_order_id) DO UPDATE SET
    sync_state = EXCLUDED.sync_state, reason = EXCLUDED.reason,
    crm_order_version = EXCLUDED.crm_order_version,
    erp_order_id = coalesce(EXCLUDED.erp_order_id, s.erp_order_id),
    erp_order_name = coalesce(EXCLUDED.erp_order_name, s.erp_order_name),
    source_commit_lsn = EXCLUDED.source_commit_lsn, source_lsn = EXCLUDED.source_lsn,
    updated_at = now()
WHERE (s.source_commit_lsn, s.source_lsn) <= (EXCLUDED.source_commit_lsn, EXCLUDED.source_lsn)
"""
_STATUS_PROGRESS_UPSERT = """
INSERT INTO crm_integration.order_sync_status AS s (crm_order_id, progress, erp_order_id,
    erp_order_name, erp_commit_lsn, erp_lsn)
SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::bigint[],
                     $6::bigint[])
ON CONFLICT (crm_order_id) DO UPDATE SET
    progress = EXCLUDED.progress,
    erp_order_id = coalesce(s.erp_order_id, EXCLUDED.erp_order_id),
    erp_order_name = coalesce(s.erp_order_name, EXCLUDED.erp_order_name),
    erp_commit_lsn = EXCLUDED.erp_commit_lsn, erp_lsn = EXCLUDED.erp_lsn, updated_at = now()
WHERE (s.erp_commit_lsn, s.erp_lsn) <= (EXCLUDED.erp_commit_lsn, EXCLUDED.erp_lsn)
"""

PublishItem = tuple[str, str, bytes, dict[str, Any]]


class StatusWriter:
    """CRM write-back plus publishing; see the module docstring for the order of steps.

    One lock per process: the CRM side and the ERP side both write these rows, and the
    last record published per key must be the row's final state.
    """

    def __init__(self, crm: asyncpg.Pool, publisher: AvroPublisher) -> None:
        self.crm = crm
        self.publisher = publisher
        self._lock = asyncio.Lock()

    async def write_sync(self, outcomes: Sequence[OrderOutcome]) -> int:
        """CRM-side outcomes (create/amend/cancel/reject/conflict/nothing); returns
        how many status rows changed (and were published)."""
        wanted = {o.crm_order_id: o for o in outcomes if o.status is not None}
        if not wanted:
            return 0
        async with self._lock:
            stored = await self._read(list(wanted))
            changed: list[OrderOutcome] = []
            items: list[PublishItem] = []
            for order_id, outcome in sorted(wanted.items()):
                assert outcome.status is not None
                row = stored.get(order_id)
                if row is not None and (row["source_commit_lsn"], row["source_lsn"]) > (
                    outcome.position.commit_lsn, outcome.position.lsn
                ):
                    continue  # a newer CRM version has been decided already
                new = outcome.status
                if row is not None and (
                    row["sync_state"], row["reason"], row["crm_order_version"],
                    row["erp_order_id"], row["erp_order_name"],
                ) == (new.sync_state, new.reason, new.crm_order_version,
                      new.erp_order_id or row["erp_order_id"],
                      new.erp_order_name or row["erp_order_name"]):
                    continue
                merged = StatusRow(
                    order_id, new.sync_state, row["progress"] if row is not None else None,
                    new.reason, new.crm_order_version,
                    new.erp_order_id or (row["erp_order_id"] if row is not None else None),
                    new.erp_order_name or (row["erp_order_name"] if row is not None else None),
                )
                key = codec.kafka_key(order_id)
                if outcome.identity is not None:
                    items.append((codec.IDENTITY_TOPIC, codec.IDENTITY_SCHEMA, key,
                                  outcome.identity))
                if outcome.conflict is not None:
                    items.append((codec.CONFLICT_TOPIC, codec.CONFLICT_SCHEMA, key,
                                  outcome.conflict))
                items.append((codec.STATUS_TOPIC, codec.STATUS_SCHEMA, key,
                              codec.status_record(merged)))
                changed.append(outcome)
            if not changed:
                return 0
            await self.publisher.publish_many(items)
            statuses = [o.status for o in changed if o.status is not None]
            await self.crm.execute(
                _STATUS_SYNC_UPSERT,
                [s.crm_order_id for s in statuses],
                [s.sync_state for s in statuses],
                [s.reason for s in statuses],
                [s.crm_order_version for s in statuses],
                [s.erp_order_id for s in statuses],
                [s.erp_order_name for s in statuses],
                [o.position.commit_lsn for o in changed],
                [o.position.lsn for o in changed],
            )
            return len(changed)

    async def write_progress(
        self, progress: Sequence[tuple[ProgressCandidate, str]], *, known_only: bool = False
    ) -> int:
        """ERP-side progress per CRM order; returns how many rows changed.

        ``known_only``: only rows that already have a progress (after order-sync's own
        amendment: an order the ERP has not touched yet has none to correct)."""
        if not progress:
            return 0
        async with self._lock:
            stored = await self._read([c.crm_order_id for c, _ in progress])
            changed: list[tuple[ProgressCandidate, str]] = []
            items: list[PublishItem] = []
            for candidate, status in sorted(progress, key=lambda p: p[0].crm_order_id):
                row = stored.get(candidate.crm_order_id)
                if known_only and (row is None or row["progress"] is None):
                    continue
                if row is not None and (
                    (row["erp_commit_lsn"], row["erp_lsn"])
                    > (candidate.position.commit_lsn, candidate.position.lsn)
                    or row["progress"] == status
                ):
                    continue
                merged = StatusRow(
                    candidate.crm_order_id,
                    row["sync_state"] if row is not None else None,
                    status,
                    row["reason"] if row is not None else None,
                    row["crm_order_version"] if row is not None else None,
                    (row["erp_order_id"] if row is not None else None) or candidate.erp_order_id,
                    (row["erp_order_name"] if row is not None else None)
                    or candidate.erp_order_name,
                )
                items.append((codec.STATUS_TOPIC, codec.STATUS_SCHEMA,
                              codec.kafka_key(candidate.crm_order_id),
                              codec.status_record(merged)))
                changed.append((candidate, status))
            if not changed:
                return 0
            await self.publisher.publish_many(items)
            await self.crm.execute(
                _STATUS_PROGRESS_UPSERT,
                [c.crm_order_id for c, _ in changed],
                [s for _, s in changed],
                [c.erp_order_id for c, _ in changed],
                [c.erp_order_name for c, _ in changed],
                [c.position.commit_lsn for c, _ in changed],
                [c.position.lsn for c, _ in changed],
            )
            return len(changed)

    async def _read(self, ids: list[int]) -> dict[int, asyncpg.Record]:
        rows = await self.crm.fetch(_STATUS_READ, ids)
        return {int(r["crm_order_id"]): r for r in rows}

"""The local stack's process helpers (ambidex.stack.processes), without starting any.

Invariant protected: a Kafka cluster id is what the storage tool accepts — URL-safe
base64 of 16 bytes, never starting with ``-`` (argparse would take it for an option and
the stack would fail to start one time in 64).
"""

from __future__ import annotations

import base64
import uuid

import pytest

from ambidex.stack import processes


def test_cluster_ids_never_start_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    dashed = uuid.UUID(bytes=base64.urlsafe_b64decode("-" + "A" * 21 + "=="))
    plain = uuid.UUID(int=42)
    drawn = iter([dashed, dashed, plain])
    monkeypatch.setattr(processes.uuid, "uuid4", lambda: next(drawn))
    cluster_id = processes._kafka_cluster_id()
    assert cluster_id == base64.urlsafe_b64encode(plain.bytes).decode().rstrip("=")
    assert len(cluster_id) == 22 and not cluster_id.startswith("-")

"""The services image runs as its non-root user with everything that user must write
owned by it (the state directory: `ambidex run order-sync` crashed creating its
sub-directory in a root-owned /state), reports its health to the engine, and its build
context leaves local state, environments and secrets out. hadolint checks the rest
(`bin/ambidex lint`)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _final_stage() -> str:
    return DOCKERFILE.rsplit("\nFROM ", 1)[1]


def test_the_state_directory_belongs_to_the_user_the_image_runs_as() -> None:
    stage = _final_stage()
    user = re.search(r"^USER (\S+)$", stage, re.MULTILINE)
    state = re.search(r"AMBIDEX_TABLE_STATE_DIR=(\S+)", stage)
    assert user and state
    before_user = stage[: user.start()]
    assert re.search(rf"chown {user.group(1)}:\S+ {re.escape(state.group(1))}\b", before_user)


def test_the_image_has_a_healthcheck_on_the_service_liveness_endpoint() -> None:
    stage = _final_stage()
    assert "HEALTHCHECK" in stage and "/healthz" in stage
    assert re.search(r"AMBIDEX_METRICS_PORT=9400", stage) and "EXPOSE 9400" in stage


def test_the_build_context_leaves_state_and_environments_out() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".state", ".venv", ".git", ".tools"} <= set(ignored)

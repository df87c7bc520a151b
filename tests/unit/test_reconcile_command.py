"""Every `ambidex reconcile <service>` prints every difference and fails when any is left.

Invariant: a reconcile run never hides a difference — each one is printed (text or one
JSON object per line), the exit code is 1 while the report fails and 0 only when it
agrees, and ``--retries`` compares again only while it fails. Pure: a fake comparison.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from click.testing import CliRunner

from services.shared import reconcile_cli
from services.shared.reconcile_cli import reconcile_command

DSNS = ["--crm-dsn", "postgresql://crm", "--erp-dsn", "postgresql://erp"]


@dataclass(frozen=True)
class Line:
    key: int

    def __str__(self) -> str:
        return f"row {self.key} differs"

    def as_json(self) -> Mapping[str, Any]:
        return {"key": self.key}


@dataclass(frozen=True)
class FakeReport:
    lines: Sequence[Line]

    @property
    def summary(self) -> str:
        return f"{len(self.lines)} differences"

    def failing(self, options: Mapping[str, Any]) -> bool:
        return bool(self.lines)


@pytest.fixture(autouse=True)
def reachable(monkeypatch: pytest.MonkeyPatch) -> None:
    """The DSNs as given (the real check connects to both databases)."""
    monkeypatch.setattr(reconcile_cli, "database_targets", lambda crm, erp: (crm, erp))


def command(reports: list[FakeReport], seen: list[Mapping[str, Any]]) -> Any:
    async def compare(crm: str, erp: str, options: Mapping[str, Any]) -> FakeReport:
        seen.append(dict(options, crm=crm, erp=erp))
        return reports.pop(0)

    return reconcile_command("toy", compare)


def test_every_difference_is_printed_and_fails_the_run() -> None:
    seen: list[Mapping[str, Any]] = []
    result = CliRunner().invoke(command([FakeReport([Line(1), Line(2)])], seen), DSNS)
    assert result.exit_code == 1
    assert "row 1 differs" in result.output and "row 2 differs" in result.output
    assert seen[0]["crm"] == "postgresql://crm" and seen[0]["erp"] == "postgresql://erp"


def test_json_lines_and_a_clean_run_exits_zero() -> None:
    seen: list[Mapping[str, Any]] = []
    failing = CliRunner().invoke(command([FakeReport([Line(7)])], seen), [*DSNS, "--json"])
    assert [json.loads(x) for x in failing.output.splitlines() if x.startswith("{")] == [
        {"key": 7}
    ]
    clean = CliRunner().invoke(command([FakeReport([])], seen), DSNS)
    assert clean.exit_code == 0


def test_retries_compare_again_only_while_it_fails() -> None:
    seen: list[Mapping[str, Any]] = []
    reports = [FakeReport([Line(1)]), FakeReport([]), FakeReport([Line(9)])]
    result = CliRunner().invoke(command(reports, seen), [*DSNS, "--retries", "5"])
    assert result.exit_code == 0
    assert len(seen) == 2  # agreed on the second comparison: no third

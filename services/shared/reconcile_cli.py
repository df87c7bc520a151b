"""`ambidex reconcile <service>`: one command shape for every service's recomputation.

Each service compares what it wrote with a recomputation from both source databases
(its ``recompute``/``reconcile`` module) and returns a :class:`Report`. This module
makes that a command the same way for all: ``--crm-dsn``/``--erp-dsn`` (default
``AMBIDEX_*_DSN``, else the local stack), ``--retries`` (compare again, 2 s apart,
while the report fails: on a live system a row touched between the reads may differ
once), ``--json`` (one object per line), every difference printed, a one-line summary
on stderr, and exit code 1 when the report fails (0 when it agrees).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import click

from ambidex.targets import database_targets


class Difference(Protocol):
    """One line of a report: ``str()`` for people, :meth:`as_json` for tools."""

    def as_json(self) -> Mapping[str, Any]: ...


class Report(Protocol):
    @property
    def lines(self) -> Sequence[Difference]:
        """Everything to print (differences, and rows left out as bad input)."""
        ...

    @property
    def summary(self) -> str: ...

    def failing(self, options: Mapping[str, Any]) -> bool:
        """Whether the run fails (the command's own ``options``, e.g. ``strict``)."""
        ...


@dataclass(frozen=True)
class RowsReport:
    """The common report: ``compared`` things (``what``: "orders", "account months"),
    the differences, and the source rows the service refuses (bad input, listed too);
    either fails the run."""

    compared: int
    what: str
    differences: Sequence[Difference]
    refused: Sequence[Difference]

    @property
    def lines(self) -> Sequence[Difference]:
        return [*self.refused, *self.differences]

    @property
    def summary(self) -> str:
        return (f"{self.compared} {self.what} compared, {len(self.differences)} "
                f"differences, {len(self.refused)} source rows refused")

    def failing(self, options: Mapping[str, Any]) -> bool:
        return bool(self.differences or self.refused)


#: ``compare(crm_dsn, erp_dsn, options)`` -> the report
Compare = Callable[[str, str, Mapping[str, Any]], Awaitable[Report]]
#: ``reconcile_once(crm_dsn, erp_dsn)`` -> (things compared, differences, refused rows)
ReconcileRows = Callable[
    [str, str], Awaitable[tuple[int, Sequence[Difference], Sequence[Difference]]]]


def rows_command(name: str, reconcile_once: ReconcileRows, what: str, help: str
                 ) -> click.Command:
    """The ``reconcile <name>`` command of a service whose comparison gives a
    :class:`RowsReport` (``what``: the things compared, "orders")."""

    async def compare(crm_dsn: str, erp_dsn: str, options: Mapping[str, Any]) -> RowsReport:
        compared, differences, refused = await reconcile_once(crm_dsn, erp_dsn)
        return RowsReport(compared, what, differences, refused)

    command = reconcile_command(name, compare)
    command.help = help
    return command


def reconcile_command(
    name: str, compare: Compare, *, options: Sequence[Callable[[Any], Any]] = ()
) -> click.Command:
    """The ``reconcile <name>`` command over ``compare``; ``options``: extra
    ``click.option`` decorators, whose values reach ``compare`` and ``failing``."""

    def run(
        crm_dsn: str | None, erp_dsn: str | None, retries: int, as_json: bool, **extra: Any
    ) -> None:
        crm, erp = database_targets(crm_dsn, erp_dsn)

        async def compare_until_agreed() -> Report:
            report = await compare(crm, erp, extra)
            for _ in range(retries):
                if not report.failing(extra):
                    break
                await asyncio.sleep(2.0)
                report = await compare(crm, erp, extra)
            return report

        report = asyncio.run(compare_until_agreed())
        for line in report.lines:
            click.echo(json.dumps(dict(line.as_json()), default=str) if as_json else str(line))
        click.echo(report.summary, err=True)
        sys.exit(1 if report.failing(extra) else 0)

    command: Callable[..., None] = run
    for option in reversed(options):
        command = option(command)
    decorators = [
        click.option("--crm-dsn", default=None,
                     help="CRM DSN (default: AMBIDEX_CRM_DSN, else the local stack)."),
        click.option("--erp-dsn", default=None,
                     help="ERP DSN (default: AMBIDEX_ERP_DSN, else the local stack)."),
        click.option("--retries", type=int, default=0, show_default=True,
                     help="Compare again this many times (2 s apart) while it fails."),
        click.option("--json", "as_json", is_flag=True, help="One JSON object per line."),
    ]
    for decorator in reversed(decorators):
        command = decorator(command)
    return click.command(name)(command)

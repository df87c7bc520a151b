"""`ambidex workload` and `ambidex deadletters`: what an operator runs against a
running system (the sample workload; inspecting and replaying a service's dead letters)."""

from __future__ import annotations

import json
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ambidex.cli_common import console
from ambidex.cli_common import local_stack as _stack
from ambidex.cli_common import progress as _progress
from ambidex.cli_common import run as _run

if TYPE_CHECKING:
    from ambidex.targets import Targets

T = TypeVar("T")


# -------------------------------------------------------------------- workload
@click.group()
def workload() -> None:
    """The sample workload: CRM users and ERP processes, deterministic by seed."""


@workload.command("run")
@click.option(
    "--rate", type=float, default=20.0, show_default=True, help="Business operations per second."
)
@click.option(
    "--duration",
    type=float,
    default=60.0,
    show_default=True,
    help="Seconds to run; 0 runs until interrupted.",
)
@click.option("--seed", type=int, default=7, show_default=True)
@click.option(
    "--discrepancy-rate",
    type=click.FloatRange(0, 1),
    default=0.02,
    show_default=True,
    help="Share of deliberate slips (wrong invoice amounts, forgotten installments...).",
)
@click.option("--quiet", is_flag=True, help="Progress as a log line every 10 s, no bar.")
@click.option(
    "--crm-dsn",
    envvar="AMBIDEX_CRM_ADMIN_DSN",
    default=None,
    help="CRM database (default: AMBIDEX_CRM_ADMIN_DSN, else the local stack).",
)
@click.option(
    "--erp-dsn",
    envvar="AMBIDEX_ERP_ADMIN_DSN",
    default=None,
    help="ERP database (default: AMBIDEX_ERP_ADMIN_DSN, else the local stack).",
)
def workload_run(
    rate: float, duration: float, seed: int, discrepancy_rate: float, quiet: bool,
    crm_dsn: str | None, erp_dsn: str | None,
) -> None:
    """Run business operations against the CRM and ERP databases."""
    from ambidex.workload import run_workload

    if crm_dsn is None or erp_dsn is None:
        addresses = _stack().addresses
        crm_dsn = crm_dsn or addresses.crm_admin_dsn
        erp_dsn = erp_dsn or addresses.erp_admin_dsn
    summary = _run(
        run_workload(
            crm_dsn,
            erp_dsn,
            rate=rate,
            duration=duration if duration > 0 else float("inf"),
            seed=seed,
            progress=_workload_progress(quiet),
            discrepancy_rate=discrepancy_rate,
        )
    )
    click.echo(json.dumps(_jsonable(summary), indent=2, default=str))


def _workload_progress(quiet: bool) -> Any:
    import time

    last = [0.0]

    def report(progress: Any) -> None:
        now = time.monotonic()
        if now - last[0] < (10.0 if quiet else 1.0):
            return
        last[0] = now
        of = "" if progress.duration == float("inf") else f"/{progress.duration:.0f}"
        console.print(
            f"[dim]workload[/dim] {progress.elapsed:6.1f}{of}s  "
            f"{progress.completed:,} operations ({progress.achieved_rate:,.1f}/s of "
            f"{progress.target_rate:g}/s)  {progress.row_changes:,} row changes  "
            f"{progress.skipped:,} skipped (no target)  {progress.failed:,} failed"
        )

    return report


def _jsonable(value: Any) -> Any:
    from dataclasses import asdict, is_dataclass

    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    return value


# ----------------------------------------------------------------- dead letters
@click.group()
def deadletters() -> None:
    """Inspect and replay a service's dead-letter topic (dlq.<service>)."""


@deadletters.command("inspect")
@click.argument("service")
@click.option("--limit", type=int, default=None)
@click.option(
    "--bootstrap", default=None,
    help="Kafka bootstrap (default: AMBIDEX_KAFKA_BOOTSTRAP, else the local stack).",
)
def deadletters_inspect(service: str, limit: int | None, bootstrap: str | None) -> None:
    """Print each dead letter as one JSON object per line."""
    from services.shared.deadletter_tools import (
        dead_letter_codec,
        read_dead_letters,
        render_dead_letter,
    )

    targets = _kafka_targets(bootstrap)

    async def inspect() -> int:
        count = 0
        async for offset, letter in read_dead_letters(
            targets.kafka, service, limit=limit,
            codec=dead_letter_codec(targets.schema_registry_url),
        ):
            click.echo(json.dumps({"offset": offset, **render_dead_letter(letter)}))
            count += 1
        return count

    _progress(f"{_dead_letter_run(targets, inspect())} dead letters in dlq.{service}")


@deadletters.command("replay")
@click.argument("service")
@click.option(
    "--offset",
    "offsets",
    type=int,
    multiple=True,
    help="Replay only these dead-letter offsets (repeatable); default all.",
)
@click.option(
    "--to",
    "target_topic",
    default=None,
    help="Send to this topic instead of each letter's original topic.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Also replay letters whose cause can only fail again (erp_state, needs_resnapshot).",
)
@click.option(
    "--dry-run", is_flag=True,
    help="Print each letter that would be replayed (JSON per line) and send nothing.",
)
@click.option(
    "--bootstrap", default=None,
    help="Kafka bootstrap (default: AMBIDEX_KAFKA_BOOTSTRAP, else the local stack).",
)
def deadletters_replay(
    service: str,
    offsets: tuple[int, ...],
    target_topic: str | None,
    force: bool,
    dry_run: bool,
    bootstrap: str | None,
) -> None:
    """Send the original bytes back to their topic once the cause is fixed (once per
    origin; letters whose cause is ERP state or a truncate only with --force)."""
    from services.shared.deadletter_tools import (
        dead_letter_codec,
        render_dead_letter,
        replay_dead_letters,
    )

    targets = _kafka_targets(bootstrap)
    result = _dead_letter_run(
        targets,
        replay_dead_letters(
            targets.kafka,
            service,
            offsets=set(offsets) or None,
            target_topic=target_topic,
            force=force,
            dry_run=dry_run,
            codec=dead_letter_codec(targets.schema_registry_url),
        ),
    )
    if dry_run:
        for offset, letter in result.chosen:
            rendered = render_dead_letter(letter)
            click.echo(json.dumps({
                "offset": offset, "to": target_topic or letter.source_topic, **rendered
            }))
    verb = "would replay" if dry_run else "replayed"
    _progress(f"{verb} {result.replayed} dead letters from dlq.{service}")
    if result.not_replayable:
        _progress(
            f"left {result.not_replayable} whose cause can only fail again "
            "(erp_state, needs_resnapshot; --force to replay them anyway)"
        )
    if result.repeats:
        _progress(f"skipped {result.repeats} repeated letters of an origin already replayed")


def _kafka_targets(bootstrap: str | None) -> Targets:
    from ambidex.targets import Unreachable, check_kafka, resolve_targets
    from services.shared.settings import SettingsError

    try:
        targets = resolve_targets(kafka_bootstrap=bootstrap)
    except SettingsError as error:
        raise click.ClickException(str(error)) from None
    try:
        _run(check_kafka(targets))
    except Unreachable as error:
        raise click.ClickException(str(error)) from None
    return targets


def _dead_letter_run(targets: Targets, work: Coroutine[Any, Any, T]) -> T:
    """Run ``work``; a missing topic, a letter that cannot be decoded or a broker gone
    mid-way is one line, not a traceback."""
    from aiokafka.errors import KafkaError

    from ambidex.targets import unreachable
    from services.shared.deadletter_tools import DeadLetterTopicError
    from services.shared.errors import BadInput

    try:
        return _run(work)
    except DeadLetterTopicError as error:
        raise click.ClickException(str(error)) from None
    except BadInput as error:  # a letter that cannot be read (e.g. no registry configured)
        raise click.ClickException(str(error)) from None
    except (KafkaError, OSError, TimeoutError) as error:
        raise click.ClickException(unreachable(targets, "kafka_bootstrap", error)) from None

"""`ambidex`: run the local stack, the workload, connectors, dead letters and services."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from ambidex import cli_deploy as deploy_commands
from ambidex import cli_operator as operator_commands
from ambidex.cli_common import console
from ambidex.cli_common import local_stack as _stack
from ambidex.cli_common import progress as _progress
from ambidex.cli_common import run as _run
from ambidex.stack.config import StackConfig
from ambidex.stack.local import LocalStack


@click.group()
@click.version_option(package_name="ambidex", prog_name="ambidex")
def main() -> None:
    """Ambidex: the real-time integration hub between a CRM and an ERP."""


# --------------------------------------------------------------------------- stack
@main.group()
def stack() -> None:
    """The local stack: PostgreSQL (CRM, ERP), Kafka, Kafka Connect with Debezium."""


@stack.command("up")
@click.option("--seed/--no-seed", default=True, help="Load the reference seed data.")
@click.option(
    "--workload-rate",
    type=float,
    default=20.0,
    show_default=True,
    help="Business operations per second of the sample workload (0: none).",
)
@click.option("--workload-seed", type=int, default=7, show_default=True)
@click.option(
    "--services/--no-services",
    "with_services",
    default=True,
    help="Start every service this build has, each in its own process.",
)
def stack_up(seed: bool, workload_rate: float, workload_seed: int, with_services: bool) -> None:
    """Bring the whole stack up (idempotent) with the services and a sample workload."""
    from ambidex.migrations import MigrationError
    from ambidex.stack.ports import PortInUse
    from services.registry import available_services

    local = _stack()
    try:
        _run(local.up(seed=seed))
        if with_services:
            local.start_services(available_services())
    except (MigrationError, PortInUse) as error:  # a person must act: say what, no traceback
        raise click.ClickException(str(error)) from error
    if workload_rate > 0:
        _start_workload(local, workload_rate, workload_seed)
    _print_status(local, as_json=False)


def _start_workload(local: LocalStack, rate: float, seed: int) -> None:
    from ambidex.stack.processes import DetachedProcess

    workload = DetachedProcess("workload", local.config)
    if workload.pid() is not None:
        _progress(f"workload: already running (pid {workload.pid()})")
        return
    pid = workload.spawn(
        [
            sys.executable,
            "-m",
            "ambidex.cli",
            "workload",
            "run",
            "--rate",
            str(rate),
            "--duration",
            "0",
            "--seed",
            str(seed),
            "--quiet",
        ],
        env=local.config.environment(),
    )
    _progress(
        f"workload: {rate:g} operations/s in the background (pid {pid}), log {workload.log_file}"
    )


@stack.command("down")
def stack_down() -> None:
    """Stop everything; data stays in the state directory for the next `up`."""
    stopped = _run(_stack().down())
    _progress("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


@stack.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable, with every address.")
@click.option("--watch", is_flag=True, help="Refresh every two seconds until interrupted.")
@click.option(
    "--show-secrets", is_flag=True,
    help="Print the DSNs with their passwords (default: masked as ***).",
)
def stack_status(as_json: bool, watch: bool, show_secrets: bool) -> None:
    """Each component, each connector's state and change events per topic."""
    local = _stack()
    if not watch:
        healthy = _print_status(local, as_json=as_json, show_secrets=show_secrets)
        sys.exit(0 if healthy else 1)
    try:
        while True:
            console.clear()
            _print_status(local, as_json=as_json, show_secrets=show_secrets)
    except KeyboardInterrupt:
        pass


@stack.command("supervise", hidden=True)
@click.argument("name")
@click.argument("command", nargs=-1, required=True)
@click.option("--backoff", type=float, default=1.0, help="First restart delay, seconds.")
@click.option("--backoff-max", type=float, default=60.0, help="Longest restart delay.")
def stack_supervise(
    name: str, command: tuple[str, ...], backoff: float, backoff_max: float
) -> None:
    """Run COMMAND and restart it whenever it exits (what `stack up` runs per service)."""
    from ambidex.stack.supervisor import BackoffPolicy, Supervisor

    policy = BackoffPolicy(initial=backoff, maximum=backoff_max)
    state_dir = StackConfig.from_env().state_dir
    sys.exit(Supervisor(name, command, state_dir, policy).run())


@stack.command("fetch")
def stack_fetch() -> None:
    """Fetch the Kafka, Connect and Debezium jars (and the JMX exporter agent) into the cache."""
    from ambidex.stack.jars import ensure_jmx_agent

    local = _stack()
    layout = local.jars
    _progress(f"jars ready in {layout.root}; JMX agent {ensure_jmx_agent(local.config.jars_dir)}")


def _print_status(local: LocalStack, *, as_json: bool, show_secrets: bool = False) -> bool:
    from ambidex.stack.status import gather_status

    status = _run(gather_status(local))
    if as_json:
        click.echo(json.dumps(status.as_dict(show_secrets=show_secrets), indent=2))
        return status.healthy
    out = Console()
    components = Table(title="Components")
    for column in ("component", "state", "address", "pid", "restarts", "health"):
        components.add_column(column)
    for c in status.components:
        state = "[green]running[/green]" if c.running else "[red]stopped[/red]"
        restarts = "-" if c.restarts is None else str(c.restarts)
        components.add_row(c.name, state, c.address, str(c.pid or "-"), restarts, c.detail or "-")
    out.print(components)
    connectors = Table(title="Debezium connectors")
    for column in ("connector", "state", "tasks"):
        connectors.add_column(column)
    for connector in status.connectors:
        tasks = ", ".join(f"{t['id']}:{t['state']}" for t in connector.get("tasks", []))
        colour = "green" if connector["state"] == "RUNNING" else "red"
        connectors.add_row(connector["name"], f"[{colour}]{connector['state']}[/{colour}]", tasks)
    out.print(connectors)
    topics = Table(title="Change events per topic")
    for column in ("topic", "events", "per second"):
        topics.add_column(column, justify="right" if column != "topic" else "left")
    for topic in status.topics:
        topics.add_row(topic.topic, f"{topic.events:,}", f"{topic.per_second:,.1f}")
    out.print(topics)
    out.print("healthy" if status.healthy else "[red]not healthy[/red]")
    return status.healthy


# ---------------------------------------------------------------- short aliases
@main.command("up")
@click.pass_context
def up(context: click.Context) -> None:
    """Same as `ambidex stack up`."""
    context.invoke(stack_up)


@main.command("down")
@click.pass_context
def down(context: click.Context) -> None:
    """Same as `ambidex stack down`."""
    context.invoke(stack_down)


@main.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable, with every address.")
@click.option("--show-secrets", is_flag=True, help="Print the DSNs with their passwords.")
@click.pass_context
def status(context: click.Context, as_json: bool, show_secrets: bool) -> None:
    """Same as `ambidex stack status`."""
    context.invoke(stack_status, as_json=as_json, watch=False, show_secrets=show_secrets)


# -------------------------------------------------------------------- services
@main.command("run")
@click.argument("service")
def run(service: str) -> None:
    """Run one service in the foreground (settings from AMBIDEX_* variables).

    Inside the local stack, `ambidex stack up` starts every service this way.
    """
    from services.registry import service_builder
    from services.shared.runtime import run_service
    from services.shared.settings import SettingsError, load_settings

    try:
        settings = load_settings(service)
        builder = service_builder(service)
    except (SettingsError, KeyError) as error:
        raise click.ClickException(str(error)) from error
    run_service(builder(settings))


# ------------------------------------------------- manifests, asyncapi (cli_deploy)
main.add_command(deploy_commands.manifests)
main.add_command(deploy_commands.asyncapi)


# ------------------------------------------------------------------ connectors
@main.group()
def connectors() -> None:
    """Debezium connectors from deploy/connectors/*.json."""


@connectors.command("apply")
def connectors_apply() -> None:
    """Create or update every connector and wait until it runs."""
    _run(_stack().apply_connectors())


@connectors.command("status")
def connectors_status() -> None:
    """Print each connector's state as JSON."""
    from ambidex.connectors import ConnectClient, load_connectors

    local = _stack()

    async def statuses() -> list[dict[str, Any]]:
        async with ConnectClient(local.config.connect_url) as client:
            found = []
            for connector in load_connectors(local.connector_values()):
                state = await client.status(connector.name)
                found.append(
                    state.as_dict() if state else {"name": connector.name, "state": "ABSENT"}
                )
            return found

    click.echo(json.dumps(_run(statuses()), indent=2))


# ---------------------------------------------------------------------- topics
@main.group()
def topics() -> None:
    """The topic declaration, deploy/topics.yaml."""


@topics.command("apply")
@click.option("--bootstrap", default=None, help="Kafka bootstrap (default: the local stack).")
def topics_apply(bootstrap: str | None) -> None:
    """Create every declared topic that is missing."""
    from ambidex.topics import apply_topics, load_topic_declaration

    local = _stack()
    report = _run(
        apply_topics(
            bootstrap or local.config.kafka_bootstrap,
            load_topic_declaration(),
            max_replication=None if bootstrap else 1,
        )
    )
    _progress(f"created {len(report.created)}, present {len(report.existing)}")
    for line in report.drift:
        _progress(f"drift: {line}")


# ------------------------------------------------------------------ monitoring
@main.group()
def monitoring() -> None:
    """The services' Prometheus alert rules, deploy/monitoring/."""


@monitoring.command("render")
def monitoring_render() -> None:
    """Write deploy/monitoring/ (alert rules, dashboards) from ambidex/monitoring.py."""
    from ambidex.monitoring import write

    for path in write():
        _progress(f"wrote {path}")


@monitoring.command("validate")
def monitoring_validate() -> None:
    """The rule file is current, promtool checks it and passes its unit tests."""
    from ambidex.monitoring import MonitoringCheckError, validate

    try:
        for line in validate():
            _progress(line)
    except MonitoringCheckError as error:
        raise click.ClickException(str(error)) from error


# --------------------------------------------------------------------- compose
@main.group()
def compose() -> None:
    """deploy/compose/compose.yaml: Ambidex with Docker Compose."""


@compose.command("validate")
def compose_validate() -> None:
    """Check the compose file against the Compose schema, the policy and the local stack."""
    from ambidex.compose import COMPOSE_FILE, validate

    problems = validate()
    for problem in problems:
        click.echo(f"{COMPOSE_FILE.name}: {problem}", err=True)
    if problems:
        raise SystemExit(1)
    _progress(f"{COMPOSE_FILE.relative_to(COMPOSE_FILE.parents[2])}: valid")


# ----------------------------------------------------------------------- setup
@main.command("setup")
@click.option("--crm-admin-dsn", envvar="AMBIDEX_CRM_ADMIN_DSN", required=True)
@click.option("--erp-admin-dsn", envvar="AMBIDEX_ERP_ADMIN_DSN", required=True)
@click.option("--cdc-password", envvar="AMBIDEX_CDC_PASSWORD", required=True)
@click.option("--app-password", envvar="AMBIDEX_APP_PASSWORD", required=True)
@click.option("--bootstrap", envvar="AMBIDEX_KAFKA_BOOTSTRAP", required=True)
@click.option("--connect-url", envvar="AMBIDEX_CONNECT_URL", required=True)
@click.option(
    "--connector-value",
    "connector_values",
    multiple=True,
    metavar="NAME=VALUE",
    help="A {{placeholder}} of deploy/connectors/*.json (database hosts and ports).",
)
@click.option("--max-replication", type=int, default=None, help="Cap replication factors.")
@click.option("--seed/--no-seed", default=True, help="Load the reference seed data once.")
@click.option(
    "--connector-principals",
    is_flag=True,
    help="Each connector produces as its own Kafka user (deploy/access.yaml).",
)
def setup(
    crm_admin_dsn: str,
    erp_admin_dsn: str,
    cdc_password: str,
    app_password: str,
    bootstrap: str,
    connect_url: str,
    connector_values: tuple[str, ...],
    max_replication: int | None,
    seed: bool,
    connector_principals: bool,
) -> None:
    """Prepare a deployment other than the local stack (the compose file's setup job):
    schemas and seed, topics, connectors; each step a no-op when done."""
    from ambidex.setup import SetupTargets, set_up
    from ambidex.targets import kafka_from_environment

    values = dict(value.split("=", 1) for value in connector_values)
    targets = SetupTargets(
        crm_admin_dsn=crm_admin_dsn,
        erp_admin_dsn=erp_admin_dsn,
        cdc_password=cdc_password,
        app_password=app_password,
        # AMBIDEX_KAFKA_SECURITY_PROTOCOL and the SASL settings, as a service reads them
        kafka=kafka_from_environment(bootstrap, client="ambidex-setup"),
        connect_url=connect_url,
        connector_values=values,
        max_replication=max_replication,
        connector_principals=connector_principals,
    )
    _run(set_up(targets, seed=seed, progress=_progress))


main.add_command(operator_commands.workload)
main.add_command(operator_commands.deadletters)


def _register_service_commands() -> None:
    from services.customer_value.reconcile_cli import reconcile_customer_value
    from services.inventory_projection.reconcile_cli import reconcile as inventory
    from services.order_sync.reconcile_cli import reconcile_order_sync
    from services.production_status.reconcile_cli import reconcile_production_status
    from services.receivables.reconcile_cli import reconcile_receivables

    @click.pass_context
    def run_inventory(context: click.Context, /, **options: Any) -> None:
        if context.invoked_subcommand is None:
            context.invoke(inventory, **options)

    # `ambidex reconcile [options]` stays inventory-projection's check;
    # `ambidex reconcile order-sync` compares the orders.
    reconcile = click.Group(
        "reconcile",
        callback=run_inventory,
        params=list(inventory.params),
        invoke_without_command=True,
        help=f"{inventory.help}\n\n`reconcile order-sync` compares every CRM order with its "
        "ERP order instead; `reconcile receivables` the receivables' figures; "
        "`reconcile production-status` the fulfilment statuses; `reconcile customer-value` "
        "the customer figures.",
    )
    reconcile.add_command(inventory, "inventory")
    reconcile.add_command(reconcile_order_sync, "order-sync")
    reconcile.add_command(reconcile_receivables, "receivables")
    reconcile.add_command(reconcile_production_status, "production-status")
    reconcile.add_command(reconcile_customer_value, "customer-value")
    main.add_command(reconcile)


_register_service_commands()

if __name__ == "__main__":
    main()

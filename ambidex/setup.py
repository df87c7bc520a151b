"""``ambidex setup``: prepare a deployment that is not the local stack (docker-compose).

The same steps, in the same order and from the same sources, as ``LocalStack.up``: the
reference schemas' migrations and the seed (``deploy/sql``), the topic declaration
(``deploy/topics.yaml``), the capture connectors (``deploy/connectors``). Each step is a
no-op when already done, so the compose file runs it as a one-shot job on every start.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from ambidex.access import load_access
from ambidex.connectors import ConnectClient, load_connectors
from ambidex.referencedb import apply_reference_schema, seed_once
from ambidex.stack.kafka_access import connector_overrides
from ambidex.stack.processes import SASL_MECHANISM
from ambidex.topics import apply_topics, load_topic_declaration
from services.shared.kafka import Kafka


@dataclass(frozen=True)
class SetupTargets:
    """Where the deployment's parts are; admin DSNs and passwords are never printed."""

    crm_admin_dsn: str = field(repr=False)
    erp_admin_dsn: str = field(repr=False)
    cdc_password: str = field(repr=False)
    app_password: str = field(repr=False)
    #: the brokers, with the setup job's own SASL user when the listener requires one
    kafka: Kafka
    connect_url: str
    #: the connectors' {{placeholders}} (database hosts and ports as Connect reaches them)
    connector_values: dict[str, str]
    max_replication: int | None = None
    #: each connector produces as its own Kafka principal (deploy/access.yaml; a worker
    #: on a SASL listener with the Principal override policy)
    connector_principals: bool = False


async def set_up(
    targets: SetupTargets, *, seed: bool = True, progress: Callable[[str], None] = print
) -> None:
    for database, dsn in (("crm", targets.crm_admin_dsn), ("erp", targets.erp_admin_dsn)):
        report = await apply_reference_schema(
            dsn,
            database,  # type: ignore[arg-type]
            cdc_password=targets.cdc_password,
            app_password=targets.app_password,
            progress=progress,
        )
        progress(f"{database}: {len(report.applied)} migrations applied, {report.already} before")
    if seed:
        summary = await seed_once(targets.crm_admin_dsn, targets.erp_admin_dsn)
        progress("seed: already loaded" if summary is None else f"seed: {summary.total} rows")
    topics = await apply_topics(
        targets.kafka,
        load_topic_declaration(),
        max_replication=targets.max_replication,
    )
    progress(f"topics: {len(topics.created)} created, {len(topics.existing)} present")
    for line in topics.drift:
        progress(f"topics: drift {line}")
    connectors = load_connectors(targets.connector_values)
    if targets.connector_principals:
        declaration = load_access()
        mechanism = (
            SASL_MECHANISM
            if isinstance(targets.kafka, str)
            else targets.kafka.sasl_mechanism or SASL_MECHANISM
        )  # the worker's mechanism: the broker that takes the setup job's login takes it
        connectors = [
            replace(c, config={**c.config, **connector_overrides(declaration, c.name, mechanism)})
            for c in connectors
        ]
    async with ConnectClient(targets.connect_url) as client:
        for connector in connectors:
            changed = await client.apply(connector)
            progress(f"connect: {connector.name} {'applied' if changed else 'unchanged'}")
        for connector in connectors:
            await client.wait_running(connector.name, timeout=300)
            progress(f"connect: {connector.name} RUNNING")

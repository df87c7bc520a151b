"""Every metric a dashboard panel or an alert reads is exported by the live local stack.

The stack (Kafka and Connect with the JMX exporter agent, the pipeline exporter) and the
five services run while a little workload flows; each exporter and each service is
scraped, and every metric name in every alert expression and dashboard query
(``ambidex.promql_names``) must be among the scraped names (a family declared without
samples yet counts). A service dashboard's service metrics must come from that service's
own scrape. A renamed JMX rule, a misspelt panel or a metric a service stopped exporting
fails here, not in an operator's empty panel.
"""

from __future__ import annotations

import httpx
import pytest

from ambidex.dashboards import dashboards, panel_expressions
from ambidex.monitoring import alert_rules
from ambidex.promql_names import exposed_names, metric_names, scraped_families
from ambidex.stack.local import LocalStack, StackAddresses
from ambidex.stack.pipeline_metrics import metrics_endpoints
from ambidex.workload import run_workload
from services.registry import SERVICE_MODULES
from tests.conftest import ServiceProcess, wait_until

pytestmark = pytest.mark.integration


async def _scrape(client: httpx.AsyncClient, url: str) -> dict[str, tuple[str, set[str]]]:
    response = await client.get(url)
    response.raise_for_status()
    return scraped_families(response.text)


async def test_every_dashboard_and_alert_metric_is_exported_by_the_live_stack(
    local_stack: LocalStack,
    stack: StackAddresses,
    order_sync: ServiceProcess,
    projection: ServiceProcess,
    receivables: ServiceProcess,
    production: ServiceProcess,
    customer_value: ServiceProcess,
) -> None:
    services = {
        p.name: p for p in (order_sync, projection, receivables, production, customer_value)
    }
    assert set(services) == set(SERVICE_MODULES)
    summary = await run_workload(
        stack.crm_admin_dsn,
        stack.erp_admin_dsn,
        rate=50,
        duration=15,
        seed=13,
        refresh_interval=0.5,
    )
    assert summary.total_failed == 0, summary.error_samples

    pipeline: dict[str, tuple[str, set[str]]] = {}
    async with httpx.AsyncClient(timeout=60) as client:
        # the exporter reads the committed offsets every few seconds: wait for the
        # services' groups to appear, and for the slots
        async def exporter_ready() -> bool:
            families = await _scrape(
                client, metrics_endpoints(local_stack.config)["pipeline-exporter"]
            )
            lag = families.get("kafka_consumergroup_lag", ("", set()))[1]
            return bool(lag) and bool(families["ambidex_replication_slot_active"][1])

        await wait_until(exporter_ready, timeout=120, interval=2)
        for job, url in metrics_endpoints(local_stack.config).items():
            families = await _scrape(client, url)
            assert families, f"{job} exported nothing"
            pipeline.update(families)
        per_service = {
            name: exposed_names(await _scrape(client, f"{process.metrics_url}/metrics"))
            for name, process in services.items()
        }
    everything = exposed_names(pipeline).union(*per_service.values())

    missing: dict[str, set[str]] = {}
    for group in alert_rules()["groups"]:
        for rule in group["rules"]:
            if lost := metric_names(rule["expr"]) - everything:
                missing[f"alert {rule['alert']}"] = lost
    for file, board in dashboards().items():
        service = file.removeprefix("service-").removesuffix(".json")
        allowed = per_service.get(service, everything)
        for expr in panel_expressions(board):
            if lost := metric_names(expr) - allowed:
                missing[f"{file}: {expr}"] = lost
    assert not missing, "\n".join(f"{k}: {sorted(v)}" for k, v in missing.items())

    # the pipeline's own figures are live, not only declared
    samples = {name for _, (_, names) in pipeline.items() for name in names}
    for name in (
        "debezium_postgres_streaming_millisecondsbehindsource",
        "debezium_postgres_streaming_queueremainingcapacity",
        "kafka_connect_connector_status",
        "ambidex_replication_slot_retained_wal_bytes",
        "kafka_consumergroup_lag",
        "kafka_server_replicamanager_partitioncount",
    ):
        assert name in samples, name

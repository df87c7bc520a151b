"""The local stack is what the README promises: every component up, both connectors
RUNNING, every declared topic present as declared, `up` idempotent, the status view
(human and JSON) truthful, and capture done by a least-privilege user whose password
never passes through the Connect REST API."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import asyncpg
import httpx
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from ambidex.stack.local import LocalStack, StackAddresses
from ambidex.stack.ports import recorded_ports
from ambidex.stack.status import gather_status
from ambidex.topics import load_topic_declaration


async def test_every_component_runs_and_both_connectors_are_running(
    local_stack: LocalStack,
) -> None:
    status = await gather_status(local_stack, sample_seconds=0.2)
    running = {c.name for c in status.components if c.running}
    assert {"postgres-crm", "postgres-erp", "kafka", "connect"} <= running
    assert sorted(c["name"] for c in status.connectors) == ["ambidex-crm", "ambidex-erp"]
    assert all(c["state"] == "RUNNING" for c in status.connectors), status.connectors
    assert status.healthy


async def test_every_declared_topic_exists_with_its_partitions(stack: StackAddresses) -> None:
    declared = {spec.name: spec for spec in load_topic_declaration()}
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(list(declared))
    finally:
        await admin.close()
    actual = {
        topic["topic"]: len(topic["partitions"]) for topic in described if topic["error_code"] == 0
    }
    assert actual == {name: spec.partitions for name, spec in declared.items()}


async def test_up_again_changes_nothing(local_stack: LocalStack) -> None:
    pids = {
        name: process.pid()
        for name, process in (("kafka", local_stack.kafka), ("connect", local_stack.connect))
    }
    await local_stack.up(seed=True)
    assert {"kafka": local_stack.kafka.pid(), "connect": local_stack.connect.pid()} == pids
    status = await gather_status(local_stack, sample_seconds=0.2)
    assert status.healthy


def test_status_json_names_every_address(local_stack: LocalStack) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ambidex.cli", "stack", "status", "--json"],
        env={**os.environ, **local_stack.config.environment()},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["healthy"] is True
    addresses = status["addresses"]
    assert addresses["kafka_bootstrap"] == local_stack.config.kafka_bootstrap
    assert addresses["connect_url"] == local_stack.config.connect_url
    assert addresses["crm_dsn"].endswith(f":{local_stack.config.crm_port}/crm")
    assert addresses["erp_dsn"].endswith(f":{local_stack.config.erp_port}/erp")
    # each service's metrics address is the port this stack recorded for it, none other
    assert {k: v for k, v in addresses.items() if k.endswith("_metrics_url")} == {
        f"{name}_metrics_url": f"http://{local_stack.config.host}:{port}/metrics"
        for name, port in recorded_ports(local_stack.config.state_dir).items()
    }
    topics = {topic["topic"] for topic in status["topics"]}
    assert "cdc.crm.sales_order" in topics and "cdc.erp.stock_quant" in topics


async def test_connector_config_holds_no_password(stack: StackAddresses) -> None:
    async with httpx.AsyncClient(base_url=stack.connect_url) as client:
        for name in ("ambidex-crm", "ambidex-erp"):
            config = (await client.get(f"/connectors/{name}/config")).json()
            assert config["database.password"] == "${env:AMBIDEX_CDC_PASSWORD}"


@pytest.mark.parametrize("database", ["crm", "erp"])
async def test_capture_user_may_read_but_not_write(local_stack: LocalStack, database: str) -> None:
    config = local_stack.config
    dsn = config.dsn(database, "ambidex_cdc", local_stack.secrets.cdc_password)
    connection = await asyncpg.connect(dsn)
    try:
        table = "account" if database == "crm" else "customer"
        await connection.fetchval(f"SELECT count(*) FROM {database}.{table}")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await connection.execute(f"DELETE FROM {database}.{table} WHERE id = -1")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await connection.execute(f"CREATE TABLE {database}.intruder (id int)")
    finally:
        await connection.close()

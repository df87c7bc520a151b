"""Connector configurations keep the capture guarantees the services rely on: exact
decimals, transaction metadata, pgoutput with a pre-created publication, heartbeats,
topics named cdc.<db>.<table>, the password left to the worker's config provider and
truncates emitted (never skipped); placeholders must all be filled before anything
reaches Connect."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ambidex.connectors import ConnectorError, ConnectorStatus, load_connectors

VALUES = {
    "crm_db_host": "crm-db",
    "crm_db_port": "5432",
    "erp_db_host": "erp-db",
    "erp_db_port": "5432",
    "heartbeat_interval_ms": "5000",
}


def test_both_connectors_load_with_placeholders_filled() -> None:
    connectors = {c.name: c for c in load_connectors(VALUES)}
    assert set(connectors) == {"ambidex-crm", "ambidex-erp"}
    assert connectors["ambidex-crm"].config["database.hostname"] == "crm-db"
    assert connectors["ambidex-erp"].config["heartbeat.interval.ms"] == "5000"
    for connector in connectors.values():
        assert not any("{{" in value for value in connector.config.values())


@pytest.mark.parametrize("database", ["crm", "erp"])
def test_capture_guarantees(database: str) -> None:
    config = {c.name: c for c in load_connectors(VALUES)}[f"ambidex-{database}"].config
    assert config["decimal.handling.mode"] == "string"  # money stays exact
    assert config["provide.transaction.metadata"] == "true"  # transactions applied whole
    assert config["plugin.name"] == "pgoutput"
    assert config["publication.autocreate.mode"] == "disabled"
    assert config["publication.name"] == f"ambidex_{database}"
    assert config["schema.include.list"] == database  # integration schema never captured
    assert config["database.password"].startswith("${env:")
    assert int(config["heartbeat.interval.ms"]) > 0
    # Debezium's default skips truncates: a TRUNCATE would vanish without a trace
    assert config["skipped.operations"] == "none"


@pytest.mark.parametrize("database", ["crm", "erp"])
def test_router_names_topics_cdc_db_table(database: str) -> None:
    config = {c.name: c for c in load_connectors(VALUES)}[f"ambidex-{database}"].config
    pattern = re.compile(config["transforms.route.regex"])
    debezium_topic = f"cdc.{database}.{database}.sales_order"
    replacement = config["transforms.route.replacement"].replace("$1", r"\1")
    assert pattern.fullmatch(debezium_topic)
    assert pattern.sub(replacement, debezium_topic) == f"cdc.{database}.sales_order"
    assert not pattern.fullmatch(f"cdc.{database}.transaction")


def test_missing_placeholder_value_is_named(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text(
        json.dumps({"name": "x", "config": {"database.hostname": "{{nowhere}}"}})
    )
    with pytest.raises(ConnectorError, match=r"x.json: database.hostname needs a value"):
        load_connectors({}, tmp_path)


def test_status_running_needs_every_task_running() -> None:
    assert ConnectorStatus("c", "RUNNING", ((0, "RUNNING", None),)).running
    assert not ConnectorStatus("c", "RUNNING", ((0, "FAILED", "boom"),)).running
    assert not ConnectorStatus("c", "RUNNING", ()).running

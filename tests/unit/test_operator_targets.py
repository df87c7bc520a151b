"""An operator command reads the same AMBIDEX_* settings as the services: an option wins,
then the service setting, and only then the local stack; passwords are never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from ambidex.stack.status import StackStatus
from ambidex.targets import resolve_targets, unreachable


def test_an_option_wins_over_the_setting_and_the_setting_over_the_local_stack() -> None:
    environ = {
        "AMBIDEX_KAFKA_BOOTSTRAP": "kafka.prod:9093",
        "AMBIDEX_CRM_DSN": "postgresql://app:pw@crm.prod/crm",
        "AMBIDEX_ERP_DSN": "postgresql://app:pw@erp.prod/erp",
    }
    targets = resolve_targets(kafka_bootstrap="other:9092", environ=environ)
    assert targets.kafka_bootstrap == "other:9092"
    assert targets.crm_dsn == "postgresql://app:pw@crm.prod/crm"
    assert targets.origins == {
        "kafka_bootstrap": "option",
        "crm_dsn": "AMBIDEX_CRM_DSN",
        "erp_dsn": "AMBIDEX_ERP_DSN",
    }


def test_without_option_or_setting_the_local_stack_is_the_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AMBIDEX_STATE_DIR", str(tmp_path))
    targets = resolve_targets(environ={"AMBIDEX_CRM_DSN": "postgresql://a@crm/crm"})
    assert targets.origins["kafka_bootstrap"] == "local stack"
    assert targets.origins["erp_dsn"] == "local stack"
    assert targets.crm_dsn == "postgresql://a@crm/crm"


def test_what_is_printed_of_a_target_masks_the_password() -> None:
    targets = resolve_targets(
        environ={
            "AMBIDEX_KAFKA_BOOTSTRAP": "k:1",
            "AMBIDEX_CRM_DSN": "postgresql://app:hunter2@crm/crm",
            "AMBIDEX_ERP_DSN": "postgresql://app:hunter2@erp/erp",
        }
    )
    line = unreachable(targets, "crm_dsn", OSError("postgresql://app:hunter2@crm refused"))
    assert "hunter2" not in line and "hunter2" not in repr(targets)
    assert "postgresql://app:***@crm/crm (from AMBIDEX_CRM_DSN)" in line
    assert "--crm-dsn or AMBIDEX_CRM_DSN" in line


def test_status_as_json_masks_passwords_unless_asked() -> None:
    status = StackStatus([], [], [], addresses={
        "kafka_bootstrap": "127.0.0.1:9092",
        "crm_dsn": "postgresql://ambidex_app:hunter2@127.0.0.1:5433/crm",
    })
    assert status.as_dict()["addresses"] == {
        "kafka_bootstrap": "127.0.0.1:9092",
        "crm_dsn": "postgresql://ambidex_app:***@127.0.0.1:5433/crm",
    }
    shown = status.as_dict(show_secrets=True)["addresses"]["crm_dsn"]
    assert "hunter2" in shown


def test_the_local_stacks_kafka_comes_with_the_local_stacks_schema_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the stack's services frame their dead letters for its registry: reading them
    # without it would fail on every letter
    from ambidex.stack.config import StackConfig
    from ambidex.stack.schema_registry import registry_url

    monkeypatch.setenv("AMBIDEX_STATE_DIR", str(tmp_path))
    targets = resolve_targets(environ={})
    assert targets.schema_registry_url == registry_url(StackConfig.from_env())


def test_a_registry_setting_wins_and_another_kafka_brings_no_local_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AMBIDEX_STATE_DIR", str(tmp_path))
    given = resolve_targets(environ={"AMBIDEX_SCHEMA_REGISTRY_URL": "http://reg.prod:8080"})
    assert given.schema_registry_url == "http://reg.prod:8080"
    elsewhere = resolve_targets(kafka_bootstrap="kafka.prod:9093", environ={})
    assert elsewhere.schema_registry_url is None

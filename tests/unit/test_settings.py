"""ServiceSettings: read once from AMBIDEX_* variables, frozen, secrets never shown.

Protects: configuration errors name the variable (and never echo a secret); DSN
passwords never reach repr/str/logs; docs/configuration.md documents every setting.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import ValidationError

from services.shared.kafka import client_options
from services.shared.settings import (
    ServiceSettings,
    SettingsError,
    configuration_reference_markdown,
    load_settings,
    redact_dsn,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
SECRET = "s3cr3t-Pa55"


def test_defaults() -> None:
    s = load_settings("order-sync", {})
    assert s.service_name == "order-sync"
    assert s.kafka_bootstrap == "localhost:9092"
    assert s.crm_dsn.get_secret_value() == "postgresql://ambidex_app@localhost:5433/crm"
    assert s.erp_dsn.get_secret_value() == "postgresql://ambidex_app@localhost:5434/erp"
    assert s.connect_url == "http://localhost:8083"
    assert (s.metrics_host, s.metrics_port) == ("0.0.0.0", 9400)
    assert (s.log_format, s.log_level) == ("json", "INFO")
    assert s.schemas_dir == Path("schemas")
    assert s.service_state_dir == Path("state") / "order-sync"
    assert s.sink_batch_max_rows == 1000
    assert s.dead_letter_topic == "dlq.order-sync"


def test_reads_prefixed_variables_in_any_case_and_ignores_others() -> None:
    s = load_settings(
        "receivables",
        {
            "AMBIDEX_KAFKA_BOOTSTRAP": "k1:9092,k2:9092",
            "ambidex_metrics_port": "0",
            "AMBIDEX_LOG_LEVEL": "debug",
            "AMBIDEX_LOG_FORMAT": "Console",
            "AMBIDEX_TABLE_STATE_DIR": "/var/lib/ambidex",
            "AMBIDEX_DEAD_LETTER_TOPIC_PREFIX": "dead.",
            "AMBIDEX_STATE_DIR": "/elsewhere",  # the local stack's, not ours
            "AMBIDEX_SERVICE_NAME": "hijack",  # the name comes from the code
            "KAFKA_BOOTSTRAP": "unprefixed:1",
        },
    )
    assert s.kafka_bootstrap == "k1:9092,k2:9092"
    assert s.metrics_port == 0
    assert (s.log_level, s.log_format) == ("DEBUG", "console")
    assert s.service_state_dir == Path("/var/lib/ambidex/receivables")
    assert s.dead_letter_topic == "dead.receivables"
    assert s.service_name == "receivables"


def test_environ_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMBIDEX_SINK_BATCH_MAX_ROWS", "250")
    assert load_settings("x").sink_batch_max_rows == 250


def test_frozen() -> None:
    s = load_settings("x", {})
    with pytest.raises(ValidationError):
        s.metrics_port = 1


def test_dsn_password_never_in_repr_or_str_but_usable() -> None:
    dsn = f"postgresql://ambidex_app:{SECRET}@db:5432/crm"
    s = load_settings("x", {"AMBIDEX_CRM_DSN": dsn, "AMBIDEX_ERP_DSN": dsn})
    assert SECRET not in repr(s)
    assert SECRET not in str(s)
    assert SECRET not in str(s.model_dump())
    assert s.crm_dsn.get_secret_value() == dsn
    redacted = s.redacted()
    assert SECRET not in str(redacted)
    assert redacted["crm_dsn"] == "postgresql://ambidex_app:***@db:5432/crm"
    assert redacted["schemas_dir"] == "schemas"


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        ("postgresql://u:pw@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("postgresql://u:p%40ss@h:1/db?sslmode=require", "postgresql://u:***@h:1/db?sslmode=require"),
        ("postgresql://h/db?user=u&password=pw", "postgresql://h/db?user=u&password=***"),
    ],
)
def test_redact_dsn(dsn: str, expected: str) -> None:
    assert redact_dsn(dsn) == expected


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"AMBIDEX_METRICS_PORT": "abc"}, "AMBIDEX_METRICS_PORT"),
        ({"AMBIDEX_METRICS_PORT": "70000"}, "AMBIDEX_METRICS_PORT"),
        ({"AMBIDEX_LOG_FORMAT": "xml"}, "AMBIDEX_LOG_FORMAT"),
        ({"AMBIDEX_LOG_LEVEL": "loud"}, "AMBIDEX_LOG_LEVEL"),
        ({"AMBIDEX_KAFKA_BOOTSTRAP": "no-port"}, "AMBIDEX_KAFKA_BOOTSTRAP"),
        ({"AMBIDEX_SINK_BATCH_MAX_ROWS": "0"}, "AMBIDEX_SINK_BATCH_MAX_ROWS"),
    ],
)
def test_bad_value_names_the_variable(environ: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError, match=variable) as info:
        load_settings("x", environ)
    assert str(info.value).startswith("invalid configuration: ")
    assert info.value.__cause__ is None  # one clear message, no pydantic dump chained


def test_bad_secret_is_named_but_not_echoed() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(
            "x", {"AMBIDEX_ERP_DSN": f"mysql://u:{SECRET}@h/db", "AMBIDEX_METRICS_PORT": "-1"}
        )
    message = str(info.value)
    assert "AMBIDEX_ERP_DSN" in message and "AMBIDEX_METRICS_PORT" in message
    assert SECRET not in message


def test_bad_service_name() -> None:
    with pytest.raises(SettingsError, match="service name"):
        load_settings("Order Sync", {})


def test_docs_table_is_generated_from_the_model() -> None:
    text = DOCS.read_text()
    begin, end = "<!-- settings-table:begin -->\n", "<!-- settings-table:end -->"
    assert begin in text and end in text, "docs/configuration.md lost its table markers"
    table = text.split(begin, 1)[1].split(end, 1)[0]
    assert table == configuration_reference_markdown(), (
        "docs/configuration.md is stale; regenerate the table (see the docs page)"
    )
    for name, info in ServiceSettings.model_fields.items():
        assert info.description, f"{name} has no description"
        assert f"AMBIDEX_{name.upper()}" in table or name == "service_name"


def test_kafka_security_settings_reach_every_client_and_the_password_never_shows() -> None:
    settings = load_settings("order-sync", {
        "AMBIDEX_KAFKA_BOOTSTRAP": "kafka:9093",
        "AMBIDEX_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "AMBIDEX_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "AMBIDEX_KAFKA_SASL_USERNAME": "ambidex-order-sync",
        "AMBIDEX_KAFKA_SASL_PASSWORD": SECRET,
    })
    options = client_options(settings.kafka)
    assert options["bootstrap_servers"] == "kafka:9093"
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "ambidex-order-sync"
    assert options["sasl_plain_password"] == SECRET
    assert options["ssl_context"] is not None
    assert SECRET not in repr(settings.kafka) and SECRET not in str(settings.redacted())
    assert client_options("localhost:9092") == {"bootstrap_servers": "localhost:9092"}


def test_sasl_without_its_credentials_is_refused_naming_the_variables() -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings("order-sync", {
            "AMBIDEX_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "AMBIDEX_KAFKA_SASL_PASSWORD": SECRET,
        })
    message = str(refused.value)
    assert "AMBIDEX_KAFKA_SASL_MECHANISM" in message and "AMBIDEX_KAFKA_SASL_USERNAME" in message
    assert SECRET not in message


def test_demand_surge_rules_come_from_the_environment_and_refuse_nan() -> None:
    settings = load_settings("inventory-projection", {
        "AMBIDEX_DEMAND_SURGE_FACTOR": "3.5", "AMBIDEX_DEMAND_SURGE_MIN_RATE": "0.5"})
    assert settings.demand_surge_factor == Decimal("3.5")
    assert settings.demand_surge_min_rate == Decimal("0.5")
    for bad in ("NaN", "0.5"):  # not a number; a factor below 1 would call flat demand a surge
        with pytest.raises(SettingsError, match="AMBIDEX_DEMAND_SURGE_FACTOR"):
            load_settings("inventory-projection", {"AMBIDEX_DEMAND_SURGE_FACTOR": bad})


def test_receivables_grace_days_come_from_the_environment_and_are_checked() -> None:
    settings = load_settings("receivables", {"AMBIDEX_RECEIVABLES_GRACE_DAYS": "10"})
    assert settings.receivables_grace_days == 10
    assert load_settings("receivables", {}).receivables_grace_days == 5
    for bad in ("-1", "1.5", "NaN"):
        with pytest.raises(SettingsError, match="AMBIDEX_RECEIVABLES_GRACE_DAYS"):
            load_settings("receivables", {"AMBIDEX_RECEIVABLES_GRACE_DAYS": bad})


def test_the_environment_given_is_the_only_input(monkeypatch: pytest.MonkeyPatch) -> None:
    """A variable of the process's environment never leaks into settings read from
    another mapping (it did: pydantic-settings read os.environ as well)."""
    monkeypatch.setenv("AMBIDEX_SCHEMA_REGISTRY_URL", "http://leaked:8081")
    monkeypatch.setenv("AMBIDEX_MAX_HOLD_SECONDS", "7")
    settings = load_settings("order-sync", {})
    assert settings.schema_registry_url is None and settings.max_hold_seconds == 300
    assert load_settings("order-sync").max_hold_seconds == 7  # os.environ by default

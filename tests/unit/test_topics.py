"""The topic declaration is the one source of topic names: it parses, names no topic
twice, declares a CDC topic for exactly the tables the reference schemas capture (every
table receivables and production-status read among them), and malformed declarations
fail with a message naming the problem."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ambidex.topics import (
    TopicDeclarationError,
    captured_tables,
    cdc_topic,
    load_topic_declaration,
)

REPO = Path(__file__).resolve().parents[2]


def _tables_in_ddl(database: str) -> set[str]:
    ddl = "\n".join(p.read_text() for p in sorted((REPO / "deploy/sql" / database).glob("*.sql")))
    return set(re.findall(rf"CREATE TABLE IF NOT EXISTS {database}\.(\w+)", ddl))


def test_declaration_parses_and_names_each_topic_once() -> None:
    specs = load_topic_declaration()
    names = [spec.name for spec in specs]
    assert len(names) == len(set(names))
    assert all(spec.partitions >= 1 for spec in specs)


@pytest.mark.parametrize("database", ["crm", "erp"])
def test_cdc_topics_match_the_captured_tables(database: str) -> None:
    assert set(captured_tables(load_topic_declaration(), database)) == _tables_in_ddl(database)


def test_published_state_topics_are_compacted_and_alerts_are_not() -> None:
    specs = {spec.name: spec for spec in load_topic_declaration()}
    assert specs["ambidex.availability"].config["cleanup.policy"] == "compact"
    assert specs["ambidex.order-identity"].config["cleanup.policy"] == "compact"
    assert specs["ambidex.shortages"].config["cleanup.policy"] == "delete"


def test_every_service_has_a_dead_letter_topic() -> None:
    names = {spec.name for spec in load_topic_declaration()}
    for service in ("order-sync", "inventory-projection", "receivables", "production-status"):
        assert f"dlq.{service}" in names


def test_cdc_topic_naming() -> None:
    assert cdc_topic("crm", "sales_order") == "cdc.crm.sales_order"


def test_duplicate_topic_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "topics.yaml"
    path.write_text(
        "groups:\n  a: {partitions: 1, topics: [x]}\n  b: {partitions: 2, topics: [x]}\n"
    )
    with pytest.raises(TopicDeclarationError, match="declared twice: x"):
        load_topic_declaration(path)


def test_group_without_partitions_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "topics.yaml"
    path.write_text("groups:\n  a: {topics: [x]}\n")
    with pytest.raises(TopicDeclarationError, match="'a' needs an integer 'partitions'"):
        load_topic_declaration(path)


def test_every_source_table_of_receivables_and_production_status_is_captured() -> None:
    """The tables the workload writes for them reach Kafka: each is in the publication
    (ambidex.referencedb.CAPTURED_TABLES) and has its declared cdc topic."""
    from ambidex.referencedb import CAPTURED_TABLES
    from services.production_status.records import TABLES
    from services.receivables.records import Table

    names = {spec.name for spec in load_topic_declaration()}
    read = {t.value for t in Table} | {t if "." in t else f"erp.{t}" for t in TABLES}
    for qualified in sorted(read):
        database, table = qualified.split(".")
        assert table in CAPTURED_TABLES[database], qualified
        assert cdc_topic(database, table) in names, qualified

"""Invariant: each migration file is applied once, in version order, and an applied file
that was edited is refused with a message naming it (its change would never reach the
databases that already have it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ambidex.migrations import (
    AppliedMigration,
    Migration,
    MigrationError,
    checksum,
    load_migrations,
    plan,
)
from ambidex.referencedb import SQL_ROOT


def _files(folder: Path, **files: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / f"{name}.sql").write_text(text)
    return folder


def _applied(migration: Migration) -> AppliedMigration:
    return AppliedMigration(migration.version, migration.name, migration.checksum)


def test_files_load_in_numeric_version_order(tmp_path: Path) -> None:
    folder = _files(tmp_path, **{"100_late": "x", "020_b": "y", "9_early": "z"})
    assert [m.name for m in load_migrations(folder)] == ["9_early.sql", "020_b.sql", "100_late.sql"]


def test_a_fresh_database_gets_every_file(tmp_path: Path) -> None:
    files = load_migrations(_files(tmp_path, **{"001_a": "a", "010_b": "b"}))
    assert [m.name for m in plan("erp", files, []).pending] == ["001_a.sql", "010_b.sql"]


def test_an_up_to_date_database_gets_nothing(tmp_path: Path) -> None:
    files = load_migrations(_files(tmp_path, **{"001_a": "a", "010_b": "b"}))
    result = plan("erp", files, [_applied(m) for m in files])
    assert result.pending == () and result.unknown == ()


def test_a_new_file_is_the_only_pending_one_even_with_a_lower_number(tmp_path: Path) -> None:
    folder = _files(tmp_path, **{"001_a": "a", "090_grants": "g"})
    applied = [_applied(m) for m in load_migrations(folder)]
    _files(folder, **{"040_nan_checks": "n", "100_more": "m"})
    result = plan("erp", load_migrations(folder), applied)
    assert [m.name for m in result.pending] == ["040_nan_checks.sql", "100_more.sql"]


def test_an_edited_applied_file_is_refused_with_its_name(tmp_path: Path) -> None:
    folder = _files(tmp_path, **{"001_a": "a", "010_tables": "CREATE TABLE t (id int);"})
    applied = [_applied(m) for m in load_migrations(folder)]
    _files(folder, **{"010_tables": "CREATE TABLE t (id bigint);"})
    with pytest.raises(MigrationError) as refused:
        plan("erp", load_migrations(folder), applied)
    message = str(refused.value)
    assert "010_tables.sql" in message and "001_a.sql" not in message
    assert "new file with a higher number in deploy/sql/erp/" in message


def test_line_endings_do_not_change_the_checksum() -> None:
    assert checksum("SELECT 1;\r\nSELECT 2;\r\n") == checksum("SELECT 1;\nSELECT 2;\n")
    assert checksum("SELECT 1;") != checksum("SELECT 2;")


def test_two_files_with_one_version_are_refused(tmp_path: Path) -> None:
    folder = _files(tmp_path, **{"040_a": "a", "040_b": "b"})
    with pytest.raises(MigrationError, match="same version 40"):
        load_migrations(folder)


def test_a_file_without_a_version_is_refused(tmp_path: Path) -> None:
    folder = _files(tmp_path, **{"tables": "a"})
    with pytest.raises(MigrationError, match=r"NNN_name\.sql"):
        load_migrations(folder)


def test_recorded_migrations_missing_from_the_files_are_reported_not_applied(
    tmp_path: Path,
) -> None:
    files = load_migrations(_files(tmp_path, **{"001_a": "a"}))
    other = AppliedMigration(50, "050_other_branch.sql", checksum("o"))
    result = plan("crm", files, [_applied(files[0]), other])
    assert result.pending == () and result.unknown == (other,)


@pytest.mark.parametrize("database", ["crm", "erp"])
def test_the_reference_schemas_are_valid_migrations(database: str) -> None:
    migrations = load_migrations(SQL_ROOT / database)
    assert migrations[0].version == 1

"""Invariant: against a real PostgreSQL, every migration file is applied exactly once and
recorded (version, checksum, applied_at), also when two starts race; a file added later
is applied alone; an edited applied file stops the start with a message and changes
nothing."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from ambidex.migrations import MigrationError, migrate
from ambidex.referencedb import SQL_ROOT, apply_reference_schema
from ambidex.stack.local import LocalStack
from tests.conftest import wait_until

pytestmark = pytest.mark.integration


async def _records(dsn: str) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(dsn)
    try:
        return await connection.fetch(
            "SELECT version, name, checksum, applied_at FROM ambidex_meta.schema_migrations"
            " ORDER BY version"
        )
    finally:
        await connection.close()


async def test_racing_starts_apply_each_file_once_and_a_new_file_alone(
    fresh_database: Callable[[str, str], Awaitable[str]],
    local_stack: LocalStack,
    tmp_path: Path,
) -> None:
    dsn = await fresh_database("erp", "migrate")
    sql_root = tmp_path / "sql"
    shutil.copytree(SQL_ROOT / "erp", sql_root / "erp")
    passwords = {
        "cdc_password": local_stack.secrets.cdc_password,
        "app_password": local_stack.secrets.app_password,
    }

    first, second = await asyncio.gather(
        apply_reference_schema(dsn, "erp", sql_root=sql_root, **passwords),
        apply_reference_schema(dsn, "erp", sql_root=sql_root, **passwords),
    )
    files = sorted(p.name for p in (sql_root / "erp").glob("*.sql"))
    assert sorted(first.applied + second.applied) == files  # each file by one of the two
    before = await _records(dsn)
    assert [r["name"] for r in before] == files

    # a number above every real migration's: a file added later comes last
    (sql_root / "erp" / "995_test_extra.sql").write_text(
        "CREATE TABLE erp_integration.migration_probe (id int PRIMARY KEY);\n"
    )
    again = await apply_reference_schema(dsn, "erp", sql_root=sql_root, **passwords)
    assert again.applied == ("995_test_extra.sql",)
    after = await _records(dsn)
    assert after[:-1] == before  # earlier records (and their applied_at) untouched
    assert after[-1]["version"] == 995

    assert (await apply_reference_schema(dsn, "erp", sql_root=sql_root, **passwords)).applied == ()


async def test_an_edited_applied_file_is_refused_and_nothing_runs(
    fresh_database: Callable[[str, str], Awaitable[str]],
    local_stack: LocalStack,
    tmp_path: Path,
) -> None:
    dsn = await fresh_database("crm", "migrate")
    sql_root = tmp_path / "sql"
    shutil.copytree(SQL_ROOT / "crm", sql_root / "crm")
    passwords = {
        "cdc_password": local_stack.secrets.cdc_password,
        "app_password": local_stack.secrets.app_password,
    }
    await apply_reference_schema(dsn, "crm", sql_root=sql_root, **passwords)
    before = await _records(dsn)

    tables = sql_root / "crm" / "010_crm_tables.sql"
    tables.write_text(tables.read_text() + "\nCREATE TABLE crm.sneaked_in (id int);\n")
    (sql_root / "crm" / "996_test_new.sql").write_text("CREATE TABLE crm.probe (id int);\n")
    with pytest.raises(MigrationError, match=r"010_crm_tables\.sql"):
        await apply_reference_schema(dsn, "crm", sql_root=sql_root, **passwords)

    assert await _records(dsn) == before
    connection = await asyncpg.connect(dsn)
    try:
        assert await connection.fetchval("SELECT to_regclass('crm.probe')") is None
    finally:
        await connection.close()


async def test_a_migration_yields_to_a_business_transaction_and_applies_after_it(
    fresh_database: Callable[[str, str], Awaitable[str]],
    local_stack: LocalStack,
    tmp_path: Path,
) -> None:
    """A pending migration on a busy table waits a short lock_timeout, gives the table
    back, and is retried whole: the business transaction is never the victim."""
    dsn = await fresh_database("erp", "migrate")
    sql_root = tmp_path / "sql"
    shutil.copytree(SQL_ROOT / "erp", sql_root / "erp")
    await apply_reference_schema(
        dsn, "erp", sql_root=sql_root,
        cdc_password=local_stack.secrets.cdc_password,
        app_password=local_stack.secrets.app_password,
    )
    (sql_root / "erp" / "997_test_column.sql").write_text(
        "ALTER TABLE erp.item ADD COLUMN probe integer;\n"
    )
    business = await asyncpg.connect(dsn)
    migrator = await asyncpg.connect(dsn)
    retries: list[str] = []
    try:
        transaction = business.transaction()
        await transaction.start()
        await business.execute("UPDATE erp.item SET name = name WHERE id = -1")  # holds the table
        migration = asyncio.create_task(
            migrate(migrator, "erp", sql_root / "erp", lock_timeout="100ms", attempts=50,
                    progress=retries.append)
        )
        await wait_until(lambda: any("retrying whole" in line for line in retries), timeout=60)
        assert not migration.done()
        await business.execute("UPDATE erp.item SET name = name WHERE id = -2")  # still ours
        await transaction.commit()
        report = await migration
    finally:
        await business.close()
        await migrator.close()
    assert report.applied == ("997_test_column.sql",)
    assert [r["name"] for r in await _records(dsn)][-1] == "997_test_column.sql"

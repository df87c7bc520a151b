"""Versioned schema migrations: each ``deploy/sql/<database>/NNN_name.sql`` applied once.

A database records what it was given in ``ambidex_meta.schema_migrations`` (version,
name, checksum, applied_at). :func:`migrate` takes a PostgreSQL advisory lock (so two
``stack up`` never race), applies only the files not yet recorded, each in its own
transaction together with its record, and touches nothing when every file is recorded:
restarting a stack never takes a lock on a table in use. Editing a file after it was
applied is refused with a message saying what to do instead (a new numbered file).

A database set up before migrations were recorded gets every file once (those files
were written to be re-runnable). A file added with a number below an applied one (two
branches each adding a file) is applied as well, in version order among the pending
ones. A migration waits at most ``lock_timeout`` for each table lock and is retried
whole, with backoff, when it timed out or was chosen as a deadlock victim, so a
migration on a live database makes the business wait briefly rather than fail.

:func:`plan` is the pure part (ordering, checksums, refusals) and is unit-tested.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import asyncpg

META_SCHEMA = "ambidex_meta"
#: Key of the advisory lock held while a database is migrated (per database: advisory
#: lock keys are scoped to the database they are taken in).
ADVISORY_LOCK_KEY = 0x616D6269_6465785F  # "ambidex_"
FILE_NAME = re.compile(r"^(?P<version>\d+)_(?P<name>\w[\w.-]*)\.sql$")

BOOTSTRAP_SQL = f"""
CREATE SCHEMA IF NOT EXISTS {META_SCHEMA};
CREATE TABLE IF NOT EXISTS {META_SCHEMA}.schema_migrations (
    version      integer PRIMARY KEY,
    name         text NOT NULL,
    checksum     text NOT NULL,          -- sha256 of the file (line ends normalised)
    applied_at   timestamptz NOT NULL DEFAULT now(),
    execution_ms integer NOT NULL
);
CREATE TABLE IF NOT EXISTS {META_SCHEMA}.seed (
    name        text PRIMARY KEY,        -- what was seeded, e.g. 'reference'
    parameters  jsonb NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
"""


class MigrationError(RuntimeError):
    """The files and the database disagree in a way only a person can settle."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str  # the file name, e.g. "010_erp_tables.sql"
    checksum: str
    sql: str = ""

    @classmethod
    def from_file(cls, path: Path) -> Migration:
        match = FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(
                f"{path}: migration files are named NNN_name.sql "
                "(a number, an underscore, a name of letters, digits, _ . -)"
            )
        text = path.read_text(encoding="utf-8")
        return cls(int(match["version"]), path.name, checksum(text), text)


@dataclass(frozen=True, slots=True)
class AppliedMigration:
    version: int
    name: str
    checksum: str
    applied_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class MigrationPlan:
    pending: tuple[Migration, ...]
    #: recorded in the database but no longer among the files (e.g. another branch's)
    unknown: tuple[AppliedMigration, ...]


def checksum(text: str) -> str:
    """sha256 of the file's text; CRLF and LF checkouts give the same checksum."""
    return hashlib.sha256(text.replace("\r\n", "\n").encode("utf-8")).hexdigest()


def load_migrations(folder: Path) -> list[Migration]:
    """Every migration file of ``folder`` in version order; refuses duplicate versions."""
    migrations = sorted(
        (Migration.from_file(path) for path in folder.glob("*.sql")), key=lambda m: m.version
    )
    if not migrations:
        raise FileNotFoundError(f"no SQL files in {folder}")
    for before, after in itertools.pairwise(migrations):
        if before.version == after.version:
            raise MigrationError(
                f"{folder}: {before.name} and {after.name} have the same version "
                f"{before.version}; renumber one of them"
            )
    return migrations


def plan(
    database: str, files: Sequence[Migration], applied: Iterable[AppliedMigration]
) -> MigrationPlan:
    """What to apply to ``database``: the files not yet recorded, in version order.

    A recorded file whose text changed is an error: its change would never reach the
    databases that already have it, so it goes in a new file instead.
    """
    recorded = {a.version: a for a in applied}
    changed = [
        (migration, recorded[migration.version])
        for migration in files
        if migration.version in recorded
        and recorded[migration.version].checksum != migration.checksum
    ]
    if changed:
        lines = [
            f"  {m.name}: applied as {a.name} on {a.applied_at or 'an earlier start'} "
            f"with checksum {a.checksum[:12]}, the file now has {m.checksum[:12]}"
            for m, a in changed
        ]
        raise MigrationError(
            f"applied migrations of the {database} database were edited:\n"
            + "\n".join(lines)
            + "\nAn applied migration is never changed: restore the file and put the change "
            f"in a new file with a higher number in deploy/sql/{database}/ "
            "(for a throw-away local stack: `ambidex down` and delete its state directory)."
        )
    known = {m.version for m in files}
    return MigrationPlan(
        pending=tuple(m for m in files if m.version not in recorded),
        unknown=tuple(a for v, a in sorted(recorded.items()) if v not in known),
    )


@dataclass(frozen=True, slots=True)
class MigrationReport:
    database: str
    applied: tuple[str, ...]
    already: int
    unknown: tuple[str, ...]


RETRYABLE = (asyncpg.LockNotAvailableError, asyncpg.DeadlockDetectedError)


async def migrate(
    connection: asyncpg.Connection,
    database: str,
    folder: Path,
    *,
    lock_timeout: str = "5s",
    attempts: int = 8,
    progress: Callable[[str], None] = lambda _: None,
) -> MigrationReport:
    """Apply the pending migrations of ``folder`` over ``connection`` (a superuser)."""
    files = load_migrations(folder)
    await connection.execute("SELECT pg_advisory_lock($1)", ADVISORY_LOCK_KEY)
    try:
        applied = await _applied(connection)
        todo = plan(database, files, applied)
        for unknown in todo.unknown:
            progress(
                f"{database}: {unknown.name} was applied but is not in {folder} "
                "(from another branch?); left as it is"
            )
        for migration in todo.pending:
            progress(f"{database}: applying migration {migration.name}")
            await _apply_one(connection, migration, lock_timeout, attempts, progress)
        return MigrationReport(
            database,
            tuple(m.name for m in todo.pending),
            len(files) - len(todo.pending),
            tuple(a.name for a in todo.unknown),
        )
    finally:
        await connection.execute("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK_KEY)


async def _applied(connection: asyncpg.Connection) -> list[AppliedMigration]:
    present = await connection.fetchval(
        "SELECT to_regclass($1) IS NOT NULL AND to_regclass($2) IS NOT NULL",
        f"{META_SCHEMA}.schema_migrations",
        f"{META_SCHEMA}.seed",
    )
    if not present:  # checked first: on a migrated database even IF NOT EXISTS is DDL
        await connection.execute(BOOTSTRAP_SQL)
    rows = await connection.fetch(
        f"SELECT version, name, checksum, applied_at FROM {META_SCHEMA}.schema_migrations"
    )
    return [AppliedMigration(**dict(row)) for row in rows]


async def _apply_one(
    connection: asyncpg.Connection,
    migration: Migration,
    lock_timeout: str,
    attempts: int,
    progress: Callable[[str], None],
) -> None:
    loop = asyncio.get_running_loop()
    for attempt in range(1, attempts + 1):
        started = loop.time()
        try:
            async with connection.transaction():
                await connection.execute(f"SET LOCAL lock_timeout = '{lock_timeout}'")
                await connection.execute(migration.sql)
                await connection.execute(
                    f"""INSERT INTO {META_SCHEMA}.schema_migrations
                            (version, name, checksum, execution_ms)
                        VALUES ($1, $2, $3, $4)""",
                    migration.version,
                    migration.name,
                    migration.checksum,
                    round((loop.time() - started) * 1000),
                )
            return
        except asyncpg.PostgresError as error:
            if not isinstance(error, RETRYABLE):
                raise MigrationError(
                    f"{migration.name} failed, nothing of it was applied: "
                    f"{type(error).__name__}: {error}"
                ) from error
            if attempt == attempts:
                raise MigrationError(
                    f"{migration.name}: tables stayed locked by other transactions "
                    f"({type(error).__name__}) in {attempts} attempts; nothing of it was "
                    "applied. Retry when the database is quieter."
                ) from error
            delay = min(0.5 * 2 ** (attempt - 1), 15.0)
            progress(
                f"{migration.name}: {type(error).__name__} on a busy table, "
                f"retrying whole in {delay:g}s"
            )
            await asyncio.sleep(delay)


async def seed_recorded(connection: asyncpg.Connection, name: str) -> Mapping[str, object] | None:
    """The parameters ``name`` was seeded with in this database, or None."""
    row = await connection.fetchrow(
        f"SELECT parameters::text FROM {META_SCHEMA}.seed WHERE name = $1", name
    )
    if row is None:
        return None
    parameters: Mapping[str, object] = json.loads(row[0])
    return parameters


async def record_seed(
    connection: asyncpg.Connection, name: str, parameters: Mapping[str, object]
) -> None:
    await connection.execute(
        f"""INSERT INTO {META_SCHEMA}.seed (name, parameters) VALUES ($1, $2::jsonb)
            ON CONFLICT (name) DO NOTHING""",
        name,
        json.dumps(dict(parameters), sort_keys=True),
    )

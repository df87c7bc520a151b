"""Idempotent, source-position-guarded write-back into PostgreSQL (asyncpg).

Invariants this module keeps (DESIGN.md 1, 2, 3, 6):

- **Stale never overwrites newer.** Every target row stores the source position of the
  change that produced it (``source_commit_lsn``, ``source_lsn``; see
  :class:`~services.shared.position.SourcePosition`). A write only lands when its
  position is strictly greater than the stored one, checked *inside* the upsert
  (``ON CONFLICT ... DO UPDATE ... WHERE (stored) < (incoming)``), so concurrent
  workers, redeliveries and replays cannot regress a row. A write with the *same*
  position is a redelivery and is skipped too.
- **Deletes are tombstones, not physical DELETEs.** If a delete removed the row, the
  row's position would go with it, and a later replay of an *older* insert would find
  no row and resurrect it. So a delete is a guarded upsert that sets ``deleted = true``,
  stores the delete's position and (by default, :meth:`UpsertSpec.delete_spec`) clears
  the value columns, so a tombstone looks the same whether or not the inserts before it
  were ever seen (state depends only on the latest change, not on history). Readers
  filter ``WHERE NOT deleted``; a genuinely newer insert of the same key revives it.
  Tombstones can be purged later by a maintenance job once no replay can predate them
  (e.g. older than the CDC topics' retention) — not done here.
- **A batch is atomic.** :meth:`PositionGuardedSink.apply` writes a whole batch (one or
  more complete source transactions) in ONE database transaction: all of it or nothing.
  (Source offsets are not kept here: the state component writes them with the state.)
- **An outage is waited out.** With a ``retry`` policy
  (:class:`~services.shared.resilience.RetryPolicy`), a batch that fails because the
  database is unavailable (or lost a deadlock) is written again, whole, with backoff:
  the transaction rolled back, and the guard makes a rewrite of what did commit a no-op.
- **Money is exact.** Values are passed to asyncpg as they are; a ``float`` for a
  ``numeric`` column is refused (pass :class:`decimal.Decimal`).

Write path: per table, at most two statements (upserts, tombstones), each
``INSERT ... SELECT ... FROM unnest($1::type[], ...)`` — one round trip per table
whatever the batch size, and the command status gives how many rows changed, hence how
many writes were stale. Within one batch, several writes to one key are reduced to the
one with the highest position first (PostgreSQL cannot update a row twice in one
statement); the others count as stale. Rows are sent in key order so two workers
writing overlapping keys lock them in the same order (no deadlock).

Target table requirements: the key columns form a PRIMARY KEY or UNIQUE constraint;
plus ``source_commit_lsn bigint not null, source_lsn bigint not null``
(:func:`position_columns_ddl`) and, for tables that receive deletes,
``deleted boolean not null default false`` (:func:`tombstone_column_ddl`), with the
cleared value columns nullable. All positions in one table must come from ONE source
database (LSNs of different databases are not comparable). Array-typed columns are not
supported (``unnest`` would flatten them).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import asyncpg

from services.shared.position import SourcePosition

if TYPE_CHECKING:
    from services.shared.observability import ServiceMetrics
    from services.shared.resilience import RetryPolicy

COMMIT_LSN: Final = "source_commit_lsn"
LSN: Final = "source_lsn"
DELETED: Final = "deleted"
RESERVED_COLUMNS: Final = frozenset({COMMIT_LSN, LSN, DELETED})
_TARGET: Final = "target"  # alias of the target table in generated SQL


# ------------------------------------------------------------------ identifiers & DDL


def quote_ident(name: str) -> str:
    """Quote one SQL identifier (``a"b`` -> ``"a""b"``); never interpolate names raw."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise ValueError(f"invalid SQL identifier {name!r}")
    if len(name.encode()) > 63:
        raise ValueError(f"SQL identifier longer than 63 bytes: {name!r}")
    return '"' + name.replace('"', '""') + '"'


def quote_table(table: str) -> str:
    """``schema.table`` (or ``table``) -> ``"schema"."table"``; at most one dot."""
    parts = table.split(".")
    if len(parts) > 2:
        raise ValueError(f"table name must be 'schema.table' or 'table', not {table!r}")
    return ".".join(quote_ident(p) for p in parts)


def position_columns_ddl() -> str:
    """The DDL fragment for the two position columns every target table carries."""
    return f"{COMMIT_LSN} bigint not null, {LSN} bigint not null"


def tombstone_column_ddl() -> str:
    """The DDL fragment for the tombstone flag of tables that receive deletes."""
    return f"{DELETED} boolean not null default false"


# ------------------------------------------------------------------------ the writes


def _check_columns(what: str, columns: tuple[str, ...]) -> None:
    for column in columns:
        quote_ident(column)
    if len(set(columns)) != len(columns):
        raise ValueError(f"{what}: duplicate column in {columns!r}")
    reserved = RESERVED_COLUMNS.intersection(columns)
    if reserved:
        raise ValueError(f"{what}: {sorted(reserved)} are managed by the sink")


def _key_of(table: str, key_columns: tuple[str, ...], row: Mapping[str, Any]) -> tuple[Any, ...]:
    missing = [c for c in key_columns if c not in row]
    if missing:
        raise ValueError(f"{table}: key column(s) {missing} missing")
    key = tuple(row[c] for c in key_columns)
    if any(v is None for v in key):
        raise ValueError(f"{table}: NULL in key {dict(zip(key_columns, key, strict=True))}")
    return key


def _check_position(position: SourcePosition) -> None:
    if not isinstance(position, SourcePosition):
        raise TypeError(f"position must be a SourcePosition, not {type(position).__name__}")


@dataclass(frozen=True)
class UpsertSpec:
    """How one target table is upserted.

    ``tombstones``: the table has the ``deleted`` column (needed for deletes); upserts
    then set ``deleted = false``, so a newer insert revives a tombstoned key.
    """

    table: str
    key_columns: tuple[str, ...]
    value_columns: tuple[str, ...]
    tombstones: bool = True

    def __post_init__(self) -> None:
        quote_table(self.table)
        if not self.key_columns:
            raise ValueError(f"{self.table}: at least one key column is needed")
        _check_columns(self.table, (*self.key_columns, *self.value_columns))

    @property
    def columns(self) -> tuple[str, ...]:
        return (*self.key_columns, *self.value_columns)

    def upsert(self, row: Mapping[str, Any], position: SourcePosition) -> Upsert:
        """A write of ``row`` (exactly the key and value columns) at ``position``."""
        _check_position(position)
        extra = set(row) - set(self.columns)
        if extra:
            raise ValueError(f"{self.table}: unknown column(s) {sorted(extra)}")
        missing = [c for c in self.value_columns if c not in row]
        if missing:
            raise ValueError(f"{self.table}: value column(s) {missing} missing")
        key = _key_of(self.table, self.key_columns, row)
        return Upsert(self, key, tuple(row[c] for c in self.value_columns), position)

    def delete_spec(self) -> DeleteSpec:
        """Deletes for this table that clear every value column (recommended)."""
        if not self.tombstones:
            raise ValueError(f"{self.table}: tombstones=False, the table cannot take deletes")
        return DeleteSpec(self.table, self.key_columns, clear_columns=self.value_columns)

    def delete(self, key: Mapping[str, Any], position: SourcePosition) -> Delete:
        return self.delete_spec().delete(key, position)


@dataclass(frozen=True)
class DeleteSpec:
    """Deletes on one target table, written as guarded tombstones (see module doc).

    ``clear_columns`` are set to NULL in the tombstone (on insert and on update);
    ``kept_columns`` say what the tombstone ends (given to :meth:`delete`): a row
    that has them keeps its stored values, a row never written (or without them) gets
    the given ones;
    other non-key columns keep their stored value (or get their default on insert).
    """

    table: str
    key_columns: tuple[str, ...]
    clear_columns: tuple[str, ...] = ()
    kept_columns: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        quote_table(self.table)
        if not self.key_columns:
            raise ValueError(f"{self.table}: at least one key column is needed")
        _check_columns(self.table, (*self.key_columns, *self.clear_columns, *self.kept_columns))

    def delete(
        self, key: Mapping[str, Any], position: SourcePosition,
        kept: Mapping[str, Any] | None = None,
    ) -> Delete:
        _check_position(position)
        extra = set(key) - set(self.key_columns)
        if extra:
            raise ValueError(f"{self.table}: not key column(s) {sorted(extra)}")
        given = dict(kept or {})
        if set(given) != set(self.kept_columns):
            raise ValueError(f"{self.table}: a tombstone keeps exactly "
                             f"{list(self.kept_columns)}, given {sorted(given)}")
        return Delete(self, _key_of(self.table, self.key_columns, key), position,
                      tuple(given[c] for c in self.kept_columns))


@dataclass(frozen=True, slots=True)
class Upsert:
    spec: UpsertSpec
    key: tuple[Any, ...]
    values: tuple[Any, ...]
    position: SourcePosition

    @property
    def table(self) -> str:
        return self.spec.table


@dataclass(frozen=True, slots=True)
class Delete:
    spec: DeleteSpec
    key: tuple[Any, ...]
    position: SourcePosition
    #: the values of ``spec.kept_columns``
    kept: tuple[Any, ...] = ()

    @property
    def table(self) -> str:
        return self.spec.table


SinkWrite = Upsert | Delete


@dataclass(frozen=True, slots=True)
class SinkResult:
    """``written``: rows whose stored version changed. ``stale``: writes that did not
    take effect (position not newer than the stored one, or superseded by a newer write
    to the same key in the same batch). ``written + stale == len(batch)``."""

    written: int = 0
    stale: int = 0

    def __add__(self, other: SinkResult) -> SinkResult:
        return SinkResult(self.written + other.written, self.stale + other.stale)


# ------------------------------------------------------------------------ planning


@dataclass
class TablePlan:
    """The writes that survive in-batch reduction for one table, in key order."""

    table: str
    upsert_spec: UpsertSpec | None = None
    delete_spec: DeleteSpec | None = None
    upserts: list[Upsert] = field(default_factory=list)
    deletes: list[Delete] = field(default_factory=list)


@dataclass
class BatchPlan:
    tables: list[TablePlan]
    superseded: int  # writes dropped because a newer one for the same key is in the batch
    total: int


def plan_batch(batch: Iterable[SinkWrite]) -> BatchPlan:
    """Group ``batch`` per table, keep the highest-position write per key (first one on
    a tie), check the specs of one table agree, and sort by key."""
    latest: dict[str, dict[tuple[Any, ...], SinkWrite]] = {}
    upsert_specs: dict[str, UpsertSpec] = {}
    delete_specs: dict[str, DeleteSpec] = {}
    key_columns: dict[str, tuple[str, ...]] = {}
    total = 0
    for write in batch:
        total += 1
        table = write.table
        if isinstance(write, Upsert):
            known_u = upsert_specs.setdefault(table, write.spec)
            if known_u != write.spec:
                raise ValueError(f"{table}: two different UpsertSpecs in one batch")
        elif isinstance(write, Delete):
            known_d = delete_specs.setdefault(table, write.spec)
            if known_d != write.spec:
                raise ValueError(f"{table}: two different DeleteSpecs in one batch")
        else:
            raise TypeError(f"not a SinkWrite: {write!r}")
        if key_columns.setdefault(table, write.spec.key_columns) != write.spec.key_columns:
            raise ValueError(f"{table}: upserts and deletes disagree on the key columns")
        per_key = latest.setdefault(table, {})
        current = per_key.get(write.key)
        if current is None or write.position > current.position:
            per_key[write.key] = write
    for table, spec in upsert_specs.items():
        if table in delete_specs and not spec.tombstones:
            raise ValueError(f"{table}: deletes need UpsertSpec(tombstones=True)")

    plans: list[TablePlan] = []
    kept = 0
    for table in sorted(latest):
        plan = TablePlan(table, upsert_specs.get(table), delete_specs.get(table))
        for key in _sorted_keys(latest[table]):
            write = latest[table][key]
            kept += 1
            if isinstance(write, Upsert):
                plan.upserts.append(write)
            else:
                plan.deletes.append(write)
        plans.append(plan)
    return BatchPlan(plans, superseded=total - kept, total=total)


def _sorted_keys(keys: Iterable[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    listed = list(keys)
    try:
        return sorted(listed)
    except TypeError:  # mixed key types: keep arrival order
        return listed


# ---------------------------------------------------------------------- SQL builders


def _guard() -> str:
    return (
        f"WHERE ({_TARGET}.{COMMIT_LSN}, {_TARGET}.{LSN}) "
        f"< (EXCLUDED.{COMMIT_LSN}, EXCLUDED.{LSN})"
    )


def _array_params(types: Sequence[str], start: int = 1) -> str:
    return ", ".join(f"${i}::{t}[]" for i, t in enumerate(types, start))


def upsert_sql(spec: UpsertSpec, column_types: Mapping[str, str]) -> str:
    """The guarded multi-row upsert of ``spec``; parameters: one array per key/value
    column (in :attr:`UpsertSpec.columns` order), then commit LSNs, then LSNs."""
    columns = [quote_ident(c) for c in spec.columns]
    positions = [COMMIT_LSN, LSN]
    param_types = [column_types[c] for c in spec.columns] + ["bigint", "bigint"]
    insert_cols = [*columns, *([DELETED] if spec.tombstones else []), *positions]
    select_cols = [*columns, *(["false"] if spec.tombstones else []), *positions]
    updates = [f"{quote_ident(c)} = EXCLUDED.{quote_ident(c)}" for c in spec.value_columns]
    if spec.tombstones:
        updates.append(f"{DELETED} = false")
    updates += [f"{p} = EXCLUDED.{p}" for p in positions]
    return (
        f"INSERT INTO {quote_table(spec.table)} AS {_TARGET} ({', '.join(insert_cols)})\n"
        f"SELECT {', '.join(select_cols)}\n"
        f"FROM unnest({_array_params(param_types)}) AS u({', '.join([*columns, *positions])})\n"
        f"ON CONFLICT ({', '.join(quote_ident(c) for c in spec.key_columns)}) DO UPDATE SET "
        f"{', '.join(updates)}\n"
        f"{_guard()}"
    )


def delete_sql(spec: DeleteSpec, column_types: Mapping[str, str]) -> str:
    """The guarded multi-row tombstone write; parameters: one array per key column,
    one per kept column, then commit LSNs, then LSNs."""
    keys = [quote_ident(c) for c in spec.key_columns]
    kept = [quote_ident(c) for c in spec.kept_columns]
    cleared = [quote_ident(c) for c in spec.clear_columns]
    nulls = [f"NULL::{column_types[c]}" for c in spec.clear_columns]
    positions = [COMMIT_LSN, LSN]
    param_types = [column_types[c] for c in (*spec.key_columns, *spec.kept_columns)]
    param_types += ["bigint", "bigint"]
    updates = [f"{c} = NULL" for c in cleared]
    updates += [f"{c} = COALESCE({_TARGET}.{c}, EXCLUDED.{c})" for c in kept]
    updates += [f"{DELETED} = true", *(f"{p} = EXCLUDED.{p}" for p in positions)]
    given = [*keys, *kept, *positions]
    return (
        f"INSERT INTO {quote_table(spec.table)} AS {_TARGET} "
        f"({', '.join([*keys, *kept, *cleared, DELETED, *positions])})\n"
        f"SELECT {', '.join([*keys, *kept, *nulls, 'true', *positions])}\n"
        f"FROM unnest({_array_params(param_types)}) AS u({', '.join(given)})\n"
        f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {', '.join(updates)}\n"
        f"{_guard()}"
    )


_COLUMN_TYPES_SQL: Final = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod), t.typcategory, t.typname
FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped
"""


def _rowcount(status: str) -> int:
    """``INSERT 0 17`` -> 17."""
    return int(status.rsplit(" ", 1)[-1])


@dataclass(frozen=True)
class _TableTypes:
    sql_types: dict[str, str]  # column -> format_type(...) e.g. numeric(18,2)
    numeric: frozenset[str]


async def newest_position(pool: asyncpg.Pool, table: str) -> tuple[int, int] | None:
    """The newest ``(source_commit_lsn, source_lsn)`` stored in ``table`` (None: empty):
    a worker rebuilt from the topics floors its write position at it, so it never
    writes below what the table holds."""
    row = await pool.fetchrow(
        f"SELECT {COMMIT_LSN}, {LSN} FROM {quote_table(table)} "
        f"ORDER BY {COMMIT_LSN} DESC, {LSN} DESC LIMIT 1")
    return None if row is None else (int(row[0]), int(row[1]))


# -------------------------------------------------------------------- the real sink


class PositionGuardedSink:
    """The PostgreSQL sink: see the module docstring for the rules.

    ``name`` labels the metrics (``ambidex_sink_*{sink=name}``).
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        name: str = "postgres",
        metrics: ServiceMetrics | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._pool = pool
        self._retry = retry
        self.name = name
        self._metrics = metrics
        self._types: dict[str, _TableTypes] = {}
        self._sql: dict[tuple[str, object], str] = {}

    async def _table_types(self, conn: asyncpg.Connection, table: str) -> _TableTypes:
        cached = self._types.get(table)
        if cached is not None:
            return cached
        try:
            rows = await conn.fetch(_COLUMN_TYPES_SQL, quote_table(table))
        except asyncpg.UndefinedTableError as exc:
            raise ValueError(f"sink target table {table} does not exist") from exc
        sql_types: dict[str, str] = {}
        numeric: set[str] = set()
        for name, sql_type, category, typname in rows:
            if category == "A":
                sql_types[name] = ""  # unsupported, reported only if used
            else:
                sql_types[name] = str(sql_type)
            if typname == "numeric":
                numeric.add(str(name))
        types = _TableTypes(sql_types, frozenset(numeric))
        self._types[table] = types
        return types

    def _check_types(self, plan: TablePlan, types: _TableTypes) -> None:
        needed: list[str] = []
        if plan.upsert_spec is not None:
            needed += plan.upsert_spec.columns
            if plan.upsert_spec.tombstones:
                needed.append(DELETED)
        if plan.delete_spec is not None:
            spec = plan.delete_spec
            needed += [*spec.key_columns, *spec.clear_columns, *spec.kept_columns, DELETED]
        needed += [COMMIT_LSN, LSN]
        missing = sorted({c for c in needed if c not in types.sql_types})
        if missing:
            raise ValueError(f"{plan.table}: column(s) {missing} do not exist")
        arrays = sorted({c for c in needed if types.sql_types[c] == ""})
        if arrays:
            raise ValueError(f"{plan.table}: array column(s) {arrays} are not supported")
        if plan.upsert_spec is not None and types.numeric:
            index = {c: i for i, c in enumerate(plan.upsert_spec.columns)}
            checked = [(c, index[c]) for c in sorted(types.numeric) if c in index]
            for write in plan.upserts if checked else ():
                row = (*write.key, *write.values)
                for column, i in checked:
                    if isinstance(row[i], float):
                        raise TypeError(
                            f"{plan.table}.{column} is numeric: pass decimal.Decimal, "
                            f"not float ({row[i]!r})"
                        )

    def _statement(self, spec: UpsertSpec | DeleteSpec, types: _TableTypes) -> str:
        cache_key = (spec.table, spec)
        sql = self._sql.get(cache_key)
        if sql is None:
            if isinstance(spec, UpsertSpec):
                sql = upsert_sql(spec, types.sql_types)
            else:
                sql = delete_sql(spec, types.sql_types)
            self._sql[cache_key] = sql
        return sql

    async def apply(
        self, batch: Sequence[SinkWrite]
    ) -> SinkResult:
        """Write ``batch`` in one transaction; see :class:`SinkResult`."""
        plan = plan_batch(batch)
        if not plan.tables:
            return SinkResult()
        if self._retry is None:
            return await self._apply(plan)
        return await self._retry.call(
            lambda: self._apply(plan), check=f"sink:{self.name}",
            what=f"sink {self.name}",
        )

    async def _apply(self, plan: BatchPlan) -> SinkResult:
        started = time.perf_counter()
        written = 0
        async with self._pool.acquire() as conn:
            statements: list[tuple[str, list[list[Any]]]] = []
            for table_plan in plan.tables:
                types = await self._table_types(conn, table_plan.table)
                self._check_types(table_plan, types)
                if table_plan.upserts:
                    assert table_plan.upsert_spec is not None
                    statements.append(
                        (
                            self._statement(table_plan.upsert_spec, types),
                            _upsert_arrays(table_plan.upsert_spec, table_plan.upserts),
                        )
                    )
                if table_plan.deletes:
                    assert table_plan.delete_spec is not None
                    statements.append(
                        (
                            self._statement(table_plan.delete_spec, types),
                            _delete_arrays(table_plan.delete_spec, table_plan.deletes),
                        )
                    )
            # One statement is atomic by itself: skip BEGIN/COMMIT (two round trips).
            single = len(statements) == 1
            async with contextlib.nullcontext() if single else conn.transaction():
                for sql, arrays in statements:
                    status = await conn.execute(sql, *arrays)
                    written += _rowcount(str(status))
        result = SinkResult(written=written, stale=plan.total - written)
        if self._metrics is not None:
            self._metrics.record_sink(
                self.name, time.perf_counter() - started, result.written, result.stale
            )
        return result


def _upsert_arrays(spec: UpsertSpec, writes: Sequence[Upsert]) -> list[list[Any]]:
    n_keys = len(spec.key_columns)
    arrays: list[list[Any]] = [[] for _ in range(len(spec.columns) + 2)]
    for write in writes:
        for i, value in enumerate(write.key):
            arrays[i].append(value)
        for i, value in enumerate(write.values, n_keys):
            arrays[i].append(value)
        arrays[-2].append(write.position.commit_lsn)
        arrays[-1].append(write.position.lsn)
    return arrays


def _delete_arrays(spec: DeleteSpec, writes: Sequence[Delete]) -> list[list[Any]]:
    arrays: list[list[Any]] = [
        [] for _ in range(len(spec.key_columns) + len(spec.kept_columns) + 2)]
    for write in writes:
        for i, value in enumerate((*write.key, *write.kept)):
            arrays[i].append(value)
        arrays[-2].append(write.position.commit_lsn)
        arrays[-1].append(write.position.lsn)
    return arrays

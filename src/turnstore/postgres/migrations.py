"""Migrations: the numbered SQL files of ``turnstore/sql``, applied once each, in order.

Each file runs in a transaction of its own under a session-level advisory lock per schema
(``MIGRATION_LOCK_CLASS``) and is recorded with its sha256 in ``schema_migrations``; a file
whose checksum changed after it was applied, or a recorded version with no file, makes
``migrate`` refuse. ``check_schema`` reads only the version table; ``schema_sql`` prints the
same schema as one script for hosts that apply DDL with their own tool.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from turnstore.errors import MigrationError, SchemaMismatchError
from turnstore.postgres import statements as q
from turnstore.postgres.errors import driver_errors, translate
from turnstore.postgres.statements import DEFAULT_SCHEMA
from turnstore.validation import check_schema_name

__all__ = [
    "Migration",
    "SchemaStatus",
    "check_schema",
    "migrate",
    "migration_files",
    "schema_sql",
]

Connection = psycopg.AsyncConnection[Any]

_MIGRATION_NAME = re.compile(r"^(\d+)_([A-Za-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    """One numbered file of ``turnstore/sql``."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        """sha256 of the file's UTF-8 text, recorded when the migration is applied."""
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class SchemaStatus:
    """What ``check_schema`` found: versions applied, pending, changed since they were
    applied (checksum differs), and recorded without a file (from a newer turnstore)."""

    applied: tuple[int, ...]
    pending: tuple[int, ...]
    changed: tuple[int, ...]
    unknown: tuple[int, ...]

    @property
    def current(self) -> bool:
        """True when every migration is applied, unchanged, and nothing unknown is recorded."""
        return not (self.pending or self.changed or self.unknown)

    def require_current(self, schema: str) -> None:
        """Raise ``SchemaMismatchError`` naming what differs unless the schema is current."""
        if not self.current:
            raise SchemaMismatchError(
                schema, pending=self.pending, changed=self.changed, unknown=self.unknown
            )


def migration_files() -> list[Migration]:
    """Every migration file shipped in the package (``turnstore/sql``), in version order."""
    directory = resources.files("turnstore") / "sql"
    found: dict[int, Migration] = {}
    for entry in directory.iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match is None:
            continue
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"two migration files share version {version}")
        found[version] = Migration(version, match.group(2), entry.read_text(encoding="utf-8"))
    if not found:
        raise MigrationError(f"no migration files found in {directory}")
    return [found[v] for v in sorted(found)]


def _version_table(schema: str) -> sql.Identifier:
    return sql.Identifier(schema, "schema_migrations")


def schema_sql(schema: str = DEFAULT_SCHEMA) -> str:
    """The whole schema as one SQL script, for teams that apply DDL with their own tool.

    It creates the schema, sets ``search_path`` to it, runs every migration, and records
    them in ``schema_migrations`` so ``check_schema`` reports the database as current.
    """
    check_schema_name(schema)
    table = _version_table(schema)
    header = sql.SQL(q.SCRIPT_HEADER.strip()).format(schema=sql.Identifier(schema))
    parts = [header.as_string(None), ""]
    files = migration_files()
    for m in files:
        parts.append(f"-- migration {m.version:04d}_{m.name}")
        parts.append(m.sql.rstrip() + "\n")
    create = sql.SQL(q.CREATE_VERSION_TABLE.strip()).format(table=table)
    parts.append(create.as_string(None) + ";")
    for m in files:
        row = sql.SQL(q.SCRIPT_RECORD_VERSION.strip()).format(
            table=table,
            version=sql.Literal(m.version),
            name=sql.Literal(m.name),
            checksum=sql.Literal(m.checksum),
        )
        parts.append(row.as_string(None))
    return "\n".join(parts) + "\n"


def _compare(files: list[Migration], recorded: dict[int, tuple[str, str]]) -> SchemaStatus:
    by_version = {m.version: m for m in files}
    applied = tuple(sorted(v for v in recorded if v in by_version))
    changed = tuple(v for v in applied if recorded[v][1] != by_version[v].checksum)
    unknown = tuple(sorted(v for v in recorded if v not in by_version))
    pending = tuple(m.version for m in files if m.version not in recorded)
    return SchemaStatus(applied=applied, pending=pending, changed=changed, unknown=unknown)


async def _read_recorded(conn: Connection, schema: str) -> dict[int, tuple[str, str]]:
    query = sql.SQL(q.READ_VERSIONS).format(table=_version_table(schema))
    cur = conn.cursor(row_factory=psycopg.rows.tuple_row)
    await cur.execute(query)
    return {int(v): (str(n), str(c)) for v, n, c in await cur.fetchall()}


async def check_schema(conn: Connection, schema: str = DEFAULT_SCHEMA) -> SchemaStatus:
    """Compare the database's ``schema_migrations`` with the migration files.

    Reads only the version table, so it needs no DDL rights; a missing table (or schema)
    means nothing is applied. Safe inside the caller's transaction: nothing here fails.
    """
    check_schema_name(schema)
    files = migration_files()
    with driver_errors:
        cur = conn.cursor(row_factory=psycopg.rows.tuple_row)
        await cur.execute(q.VERSION_TABLE_EXISTS, (schema,))
        row = await cur.fetchone()
        recorded = await _read_recorded(conn, schema) if row and row[0] else {}
    return _compare(files, recorded)


async def migrate(conn: Connection, schema: str = DEFAULT_SCHEMA) -> list[int]:
    """Apply the pending migrations to ``schema``; return the versions applied, in order.

    ``conn`` must not be inside a transaction: each migration runs in a transaction of its
    own (``SET LOCAL search_path`` to the schema) that first takes a transaction-scoped
    advisory lock, then reads the applied versions and applies the first pending file. So
    concurrent callers (several app instances starting at once) never race: the second
    waits for the first's transaction, then finds that file applied. Nothing is held
    between transactions, so it works through a transaction-pooling pooler too
    (docs/deploying.md, *Poolers*). Refuses with ``MigrationError``, applying nothing, when
    an applied file's checksum changed or a recorded version has no file.
    """
    check_schema_name(schema)
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise MigrationError(
            "migrate() needs a connection outside any transaction: each migration runs in "
            "a transaction of its own (use an autocommit connection, or commit first)"
        )
    files = migration_files()
    restore_autocommit = conn.autocommit
    with driver_errors:
        if not restore_autocommit:
            await conn.set_autocommit(True)
        try:
            applied: list[int] = []
            while True:
                version = await _apply_next(conn, schema, files)
                if version is None:
                    return applied
                applied.append(version)
        finally:
            if not restore_autocommit and not conn.closed:
                await conn.set_autocommit(False)


async def _apply_next(conn: Connection, schema: str, files: list[Migration]) -> int | None:
    """In one transaction under the migration lock: apply the first pending migration and
    return its version, or return ``None`` when none is pending."""
    schema_ident = sql.Identifier(schema)
    async with conn.transaction():
        await conn.execute(q.MIGRATION_LOCK, (schema,))
        cur = await conn.execute(q.SCHEMA_EXISTS, (schema,))
        if await cur.fetchone() is None:
            await conn.execute(sql.SQL(q.CREATE_SCHEMA).format(schema=schema_ident))
        await conn.execute(sql.SQL(q.CREATE_VERSION_TABLE).format(table=_version_table(schema)))
        status = _compare(files, await _read_recorded(conn, schema))
        if status.changed:
            raise MigrationError(
                f"applied migration(s) {list(status.changed)} in schema {schema!r} no longer "
                "match their files (checksum changed); refusing to migrate"
            )
        if status.unknown:
            raise MigrationError(
                f"schema {schema!r} records migration(s) {list(status.unknown)} that this "
                "turnstore does not have (a newer version migrated it); refusing to migrate"
            )
        if not status.pending:
            return None
        m = next(f for f in files if f.version == status.pending[0])
        record = sql.SQL(q.RECORD_VERSION).format(table=q.param_ident(schema, "schema_migrations"))
        try:
            async with conn.transaction():  # a savepoint: the file's error, not the lock's
                await conn.execute(sql.SQL(q.SET_LOCAL_SEARCH_PATH).format(schema=schema_ident))
                await conn.execute(m.sql.encode("utf-8"))
                await conn.execute(record, (m.version, m.name, m.checksum))
        except psycopg.Error as exc:
            if translate(exc) is not None:
                raise
            raise MigrationError(
                f"migration {m.version:04d}_{m.name} failed in schema {schema!r}: {exc}"
            ) from exc
        return m.version

# WARNING: this file is generated from src/turnstore/postgres/migrations.py by tools/async_to_sync.py; do not edit.
"""Migrations: the numbered SQL files of ``turnstore/sql``, applied once each, in order.

Each file runs in a transaction of its own under a transaction-scoped advisory lock per schema
(``MIGRATION_LOCK_CLASS``) and is recorded with its sha256 in ``schema_migrations``; a file
whose checksum changed after it was applied, or a recorded version with no file, makes
``migrate`` refuse. ``check_schema`` reads only the version and settings tables;
``schema_sql`` prints the same schema as one script for hosts that apply DDL with their own
tool.

The table layout (docs/schema.md, *The partitioned layout*) is chosen when a schema is
first migrated: plain, or ``chat_turns`` hash-partitioned by ``tenant_id``
(``partitions=N``). It is recorded in ``schema_settings`` and never changes; a
partitioned schema runs the files of ``turnstore/sql/partitioned`` in place of the
plain files of the same version, and records their checksums.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from turnstore.errors import MigrationError, SchemaLayoutError
from turnstore.postgres import statements as q
from turnstore.postgres.errors import driver_errors, translate
from turnstore.postgres.migrations import (
    _MIGRATION_NAME,
    Migration,
    SchemaStatus,
    _compare,
    _version_table,
    migration_files,
    schema_sql,
)
from turnstore.postgres.statements import DEFAULT_SCHEMA
from turnstore.validation import check_partitions, check_schema_name

__all__ = ["Migration", "SchemaStatus", "check_schema", "migrate", "migration_files", "schema_sql"]
Connection = psycopg.Connection[Any]


def _read_directory(directory: Any) -> dict[int, Migration]:
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
    return found


def _settings_table(schema: str) -> sql.Identifier:
    return sql.Identifier(schema, "schema_settings")


def _read_partitions(conn: Connection, schema: str) -> int:
    """The layout recorded in ``schema_settings``; 0 (plain) when nothing is recorded. A
    role that may not read the table (``check_schema`` needs only the version table) gets
    the layout from the catalog: the partitions of ``chat_turns``."""
    cur = conn.cursor(row_factory=psycopg.rows.tuple_row)
    cur.execute(q.SETTINGS_TABLE_EXISTS, (schema,))
    row = cur.fetchone()
    if not (row and row[0]):
        return 0
    if not row[1]:
        cur.execute(q.COUNT_PARTITIONS, (schema,))
        row = cur.fetchone()
        return int(row[0]) if row is not None else 0
    cur.execute(sql.SQL(q.READ_PARTITIONS).format(table=_settings_table(schema)))
    row = cur.fetchone()
    return int(row[0]) if row is not None else 0


def _read_recorded(conn: Connection, schema: str) -> dict[int, tuple[str, str]]:
    query = sql.SQL(q.READ_VERSIONS).format(table=_version_table(schema))
    cur = conn.cursor(row_factory=psycopg.rows.tuple_row)
    cur.execute(query)
    return {int(v): (str(n), str(c)) for v, n, c in cur.fetchall()}


def check_schema(conn: Connection, schema: str = DEFAULT_SCHEMA) -> SchemaStatus:
    """Compare the database's ``schema_migrations`` with the migration files of the
    schema's layout (``SchemaStatus.partitions``, read from ``schema_settings``).

    Reads only the version and settings tables, so it needs no DDL rights; a missing table
    (or schema) means nothing is applied. Safe inside the caller's transaction: nothing here
    fails.
    """
    check_schema_name(schema)
    with driver_errors:
        cur = conn.cursor(row_factory=psycopg.rows.tuple_row)
        cur.execute(q.VERSION_TABLE_EXISTS, (schema,))
        row = cur.fetchone()
        recorded = _read_recorded(conn, schema) if row and row[0] else {}
        partitions = _read_partitions(conn, schema)
    return _compare(migration_files(partitions), recorded, partitions)


def migrate(
    conn: Connection, schema: str = DEFAULT_SCHEMA, partitions: int | None = None
) -> list[int]:
    """Apply the pending migrations to ``schema``; return the versions applied, in order.

    ``partitions`` chooses the table layout of a new schema: ``None`` or ``0`` plain,
    ``N`` (2 to 1024) ``chat_turns`` hash-partitioned by ``tenant_id`` into ``N``
    partitions (docs/schema.md, *The partitioned layout*). On a schema already migrated,
    ``None`` keeps its layout and anything else must name that layout: another one raises
    ``SchemaLayoutError`` and changes nothing.

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
    requested = check_partitions(partitions)
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise MigrationError(
            "migrate() needs a connection outside any transaction: each migration runs in a transaction of its own (use an autocommit connection, or commit first)"
        )
    restore_autocommit = conn.autocommit
    with driver_errors:
        if not restore_autocommit:
            conn.set_autocommit(True)
        try:
            applied: list[int] = []
            while True:
                version = _apply_next(conn, schema, requested)
                if version is None:
                    return applied
                applied.append(version)
        finally:
            if not restore_autocommit and (not conn.closed):
                conn.set_autocommit(False)


def _layout(
    conn: Connection, schema: str, recorded: dict[int, tuple[str, str]], requested: int | None
) -> int:
    """The layout to migrate ``schema`` with: the recorded one once 0001 is applied (a
    schema from before the settings table is plain), else the requested one."""
    if 1 not in recorded:
        return requested or 0
    partitions = _read_partitions(conn, schema)
    if requested is not None and requested != partitions:
        raise SchemaLayoutError(schema, partitions=partitions, requested=requested)
    return partitions


def _apply_next(conn: Connection, schema: str, requested: int | None) -> int | None:
    """In one transaction under the migration lock: apply the first pending migration of
    the schema's layout and return its version, or return ``None`` when none is pending."""
    schema_ident = sql.Identifier(schema)
    with conn.transaction():
        conn.execute(q.MIGRATION_LOCK, (schema,))
        cur = conn.execute(q.SCHEMA_EXISTS, (schema,))
        if cur.fetchone() is None:
            conn.execute(sql.SQL(q.CREATE_SCHEMA).format(schema=schema_ident))
        conn.execute(sql.SQL(q.CREATE_VERSION_TABLE).format(table=_version_table(schema)))
        recorded = _read_recorded(conn, schema)
        partitions = _layout(conn, schema, recorded, requested)
        conn.execute(sql.SQL(q.CREATE_SETTINGS_TABLE).format(table=_settings_table(schema)))
        files = migration_files(partitions)
        status = _compare(files, recorded, partitions)
        if status.changed:
            raise MigrationError(
                f"applied migration(s) {list(status.changed)} in schema {schema!r} no longer match their files (checksum changed); refusing to migrate"
            )
        if status.unknown:
            raise MigrationError(
                f"schema {schema!r} records migration(s) {list(status.unknown)} that this turnstore does not have (a newer version migrated it); refusing to migrate"
            )
        if not status.pending:
            return None
        m = next(f for f in files if f.version == status.pending[0])
        record = sql.SQL(q.RECORD_VERSION).format(table=q.param_ident(schema, "schema_migrations"))
        record_layout = sql.SQL(q.RECORD_PARTITIONS).format(
            table=q.param_ident(schema, "schema_settings")
        )
        try:
            with conn.transaction():
                conn.execute(sql.SQL(q.SET_LOCAL_SEARCH_PATH).format(schema=schema_ident))
                conn.execute(q.SET_LOCAL_PARTITIONS, (str(partitions),))
                conn.execute(m.sql.encode("utf-8"))
                conn.execute(record_layout, (str(partitions),))
                conn.execute(record, (m.version, m.name, m.checksum))
        except psycopg.Error as exc:
            if translate(exc) is not None:
                raise
            raise MigrationError(
                f"migration {m.version:04d}_{m.name} failed in schema {schema!r}: {exc}"
            ) from exc
        return m.version

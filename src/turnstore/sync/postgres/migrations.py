# WARNING: this file is generated from src/turnstore/postgres/migrations.py by tools/async_to_sync.py; do not edit.
"""Migrations: the numbered SQL files of ``turnstore/sql``, applied once each, in order.

Each file runs in a transaction of its own under a session-level advisory lock per schema
(``MIGRATION_LOCK_CLASS``) and is recorded with its sha256 in ``schema_migrations``; a file
whose checksum changed after it was applied, or a recorded version with no file, makes
``migrate`` refuse. ``check_schema`` reads only the version table; ``schema_sql`` prints the
same schema as one script for hosts that apply DDL with their own tool.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from turnstore.errors import MigrationError
from turnstore.postgres import statements as q
from turnstore.postgres.errors import driver_errors, translate
from turnstore.postgres.migrations import (
    Migration,
    SchemaStatus,
    _compare,
    _version_table,
    migration_files,
    schema_sql,
)
from turnstore.postgres.statements import DEFAULT_SCHEMA
from turnstore.validation import check_schema_name

__all__ = ["Migration", "SchemaStatus", "check_schema", "migrate", "migration_files", "schema_sql"]
Connection = psycopg.Connection[Any]


def _read_recorded(conn: Connection, schema: str) -> dict[int, tuple[str, str]]:
    query = sql.SQL(q.READ_VERSIONS).format(table=_version_table(schema))
    cur = conn.cursor(row_factory=psycopg.rows.tuple_row)
    cur.execute(query)
    return {int(v): (str(n), str(c)) for v, n, c in cur.fetchall()}


def check_schema(conn: Connection, schema: str = DEFAULT_SCHEMA) -> SchemaStatus:
    """Compare the database's ``schema_migrations`` with the migration files.

    Reads only the version table, so it needs no DDL rights; a missing table (or schema)
    means nothing is applied. Safe inside the caller's transaction: nothing here fails.
    """
    check_schema_name(schema)
    files = migration_files()
    with driver_errors:
        cur = conn.cursor(row_factory=psycopg.rows.tuple_row)
        cur.execute(q.VERSION_TABLE_EXISTS, (schema,))
        row = cur.fetchone()
        recorded = _read_recorded(conn, schema) if row and row[0] else {}
    return _compare(files, recorded)


def migrate(conn: Connection, schema: str = DEFAULT_SCHEMA) -> list[int]:
    """Apply the pending migrations to ``schema``; return the versions applied, in order.

    ``conn`` must not be inside a transaction: each migration runs in a transaction of its
    own (``SET LOCAL search_path`` to the schema), and a session-level advisory lock keeps
    concurrent callers (several app instances starting at once) from racing: the second
    waits, then finds nothing to do. Refuses with ``MigrationError``, applying nothing, when
    an applied file's checksum changed or a recorded version has no file.
    """
    check_schema_name(schema)
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise MigrationError(
            "migrate() needs a connection outside any transaction: each migration runs in a transaction of its own (use an autocommit connection, or commit first)"
        )
    files = migration_files()
    restore_autocommit = conn.autocommit
    with driver_errors:
        if not restore_autocommit:
            conn.set_autocommit(True)
        try:
            conn.execute(q.MIGRATION_LOCK, (schema,))
            try:
                return _migrate_locked(conn, schema, files)
            finally:
                if not conn.closed:
                    conn.execute(q.MIGRATION_UNLOCK, (schema,))
        finally:
            if not restore_autocommit and (not conn.closed):
                conn.set_autocommit(False)


def _migrate_locked(conn: Connection, schema: str, files: list[Migration]) -> list[int]:
    schema_ident = sql.Identifier(schema)
    cur = conn.execute(q.SCHEMA_EXISTS, (schema,))
    if cur.fetchone() is None:
        conn.execute(sql.SQL(q.CREATE_SCHEMA).format(schema=schema_ident))
    conn.execute(sql.SQL(q.CREATE_VERSION_TABLE).format(table=_version_table(schema)))
    status = _compare(files, _read_recorded(conn, schema))
    if status.changed:
        raise MigrationError(
            f"applied migration(s) {list(status.changed)} in schema {schema!r} no longer match their files (checksum changed); refusing to migrate"
        )
    if status.unknown:
        raise MigrationError(
            f"schema {schema!r} records migration(s) {list(status.unknown)} that this turnstore does not have (a newer version migrated it); refusing to migrate"
        )
    record = sql.SQL(q.RECORD_VERSION).format(table=q.param_ident(schema, "schema_migrations"))
    set_path = sql.SQL(q.SET_LOCAL_SEARCH_PATH).format(schema=schema_ident)
    applied: list[int] = []
    for m in files:
        if m.version not in status.pending:
            continue
        try:
            with conn.transaction():
                conn.execute(set_path)
                conn.execute(m.sql.encode("utf-8"))
                conn.execute(record, (m.version, m.name, m.checksum))
        except psycopg.Error as exc:
            if translate(exc) is not None:
                raise
            raise MigrationError(
                f"migration {m.version:04d}_{m.name} failed in schema {schema!r}: {exc}"
            ) from exc
        applied.append(m.version)
    return applied

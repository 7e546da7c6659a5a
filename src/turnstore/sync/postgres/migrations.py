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
            "migrate() needs a connection outside any transaction: each migration runs in a transaction of its own (use an autocommit connection, or commit first)"
        )
    files = migration_files()
    restore_autocommit = conn.autocommit
    with driver_errors:
        if not restore_autocommit:
            conn.set_autocommit(True)
        try:
            applied: list[int] = []
            while True:
                version = _apply_next(conn, schema, files)
                if version is None:
                    return applied
                applied.append(version)
        finally:
            if not restore_autocommit and (not conn.closed):
                conn.set_autocommit(False)


def _apply_next(conn: Connection, schema: str, files: list[Migration]) -> int | None:
    """In one transaction under the migration lock: apply the first pending migration and
    return its version, or return ``None`` when none is pending."""
    schema_ident = sql.Identifier(schema)
    with conn.transaction():
        conn.execute(q.MIGRATION_LOCK, (schema,))
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
        if not status.pending:
            return None
        m = next(f for f in files if f.version == status.pending[0])
        record = sql.SQL(q.RECORD_VERSION).format(table=q.param_ident(schema, "schema_migrations"))
        try:
            with conn.transaction():
                conn.execute(sql.SQL(q.SET_LOCAL_SEARCH_PATH).format(schema=schema_ident))
                conn.execute(m.sql.encode("utf-8"))
                conn.execute(record, (m.version, m.name, m.checksum))
        except psycopg.Error as exc:
            if translate(exc) is not None:
                raise
            raise MigrationError(
                f"migration {m.version:04d}_{m.name} failed in schema {schema!r}: {exc}"
            ) from exc
        return m.version

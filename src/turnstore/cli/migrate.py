"""``turnstore migrate``: apply pending migrations, or ``--check`` whether any are pending."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from typing import TextIO

from turnstore.cli._common import (
    ENV_DSN,
    EXIT_OK,
    EXIT_STORE_ERROR,
    Commands,
    add_command,
    add_dsn,
    add_partitions,
    add_schema,
    connect,
    required_dsn,
)
from turnstore.errors import SchemaMismatchError
from turnstore.postgres import (
    DEFAULT_SCHEMA,
    SchemaStatus,
    check_schema,
    migrate,
    migration_files,
)

__all__ = ["add_parser"]


def add_parser(commands: Commands) -> None:
    p = add_command(commands, "migrate", "apply pending migrations", _run)
    add_dsn(p, f"PostgreSQL connection string (default: ${ENV_DSN})")
    add_schema(p, DEFAULT_SCHEMA, f"schema holding turnstore's tables (default: {DEFAULT_SCHEMA})")
    p.add_argument(
        "--check",
        action="store_true",
        help="change nothing; exit 1 unless every migration is applied (needs no DDL rights)",
    )
    add_partitions(p)


def _run(args: argparse.Namespace, out: TextIO) -> int:
    return asyncio.run(
        _migrate_command(required_dsn(args), args.schema, args.check, out, args.partitions)
    )


def _versions(versions: Sequence[int]) -> str:
    return ", ".join(f"{v:04d}" for v in versions)


def _describe_status(schema: str, status: SchemaStatus) -> str:
    try:
        status.require_current(schema)
    except SchemaMismatchError as exc:
        return str(exc)
    return f"schema {schema!r} is current (applied: {_versions(status.applied)}{_layout(status)})"


def _layout(status: SchemaStatus) -> str:
    """The layout, named only when it is not the plain one."""
    return f"; layout: {status.layout}" if status.partitions else ""


async def _migrate_command(
    dsn: str, schema: str, check: bool, out: TextIO, partitions: int | None = None
) -> int:
    conn = await connect(dsn)
    async with conn:
        if check:
            status = await check_schema(conn, schema=schema)
            print(_describe_status(schema, status), file=out)
            return EXIT_OK if status.current else EXIT_STORE_ERROR
        applied = await migrate(conn, schema=schema, partitions=partitions)
        status = await check_schema(conn, schema=schema)
    if not applied:
        print(f"schema {schema!r} is up to date{_layout(status).replace(';', ',')}", file=out)
        return EXIT_OK
    names = {m.version: m.name for m in migration_files(status.partitions)}
    for version in applied:
        print(f"applied {version:04d}_{names[version]} to schema {schema!r}", file=out)
    if status.partitions:
        print(f"layout: {status.layout}", file=out)
    return EXIT_OK

"""``turnstore sql``: print the whole schema as SQL, for teams that apply DDL with their own
migration tool (Alembic, Flyway, ...)."""

from __future__ import annotations

import argparse
from typing import TextIO

from turnstore.cli._common import EXIT_OK, Commands, add_command, add_partitions, add_schema
from turnstore.postgres import DEFAULT_SCHEMA, schema_sql

__all__ = ["add_parser"]


def add_parser(commands: Commands) -> None:
    p = add_command(commands, "sql", "print the whole schema as SQL", _run)
    add_schema(p, DEFAULT_SCHEMA, f"schema holding turnstore's tables (default: {DEFAULT_SCHEMA})")
    add_partitions(p)


def _run(args: argparse.Namespace, out: TextIO) -> int:
    out.write(schema_sql(args.schema, partitions=args.partitions))
    return EXIT_OK

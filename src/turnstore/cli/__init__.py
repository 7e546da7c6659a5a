"""The ``turnstore`` command line (also ``python -m turnstore``).

- ``turnstore migrate``: apply pending migrations, or ``--check`` whether any are pending.
- ``turnstore sql``: print the whole schema as SQL, for teams that apply DDL with their own
  migration tool (Alembic, Flyway, ...).
- ``turnstore demo``: play a short scripted scenario on a throwaway database and print the
  rows it leaves.
- ``turnstore sweep --once``: run one orphan-watchdog scan.
- ``turnstore purge --older-than 30d``: delete finished turns older than an age, in batches.
- ``turnstore erase-tenant TENANT_ID``: delete every turn of a tenant (erasure).

Expected failures print one line on stderr and no traceback: exit code 2 for bad usage, 1
for a store error (database unreachable, schema not current, migration refused, ...).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import psycopg

from turnstore.cli import demo, migrate, retention, sql, sweep
from turnstore.cli._common import (
    ENV_DSN,
    EXIT_INTERRUPTED,
    EXIT_STORE_ERROR,
    EXIT_USAGE,
    CommandError,
    Run,
    UsageError,
    check_argv,
    format_table,
    one_line,
)
from turnstore.errors import TurnStoreError

__all__ = [
    "ENV_DSN",
    "EXIT_STORE_ERROR",
    "EXIT_USAGE",
    "CommandError",
    "UsageError",
    "build_parser",
    "format_table",
    "main",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="turnstore",
        description="Durable, exactly-once chat turns on PostgreSQL.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in (migrate, sql, demo, sweep):
        command.add_parser(commands)
    retention.add_parsers(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (0 ok, 1 store error, 2 usage)."""
    parser = build_parser()
    arguments = list(sys.argv[1:] if argv is None else argv)
    try:
        check_argv(arguments)
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"turnstore: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        args = parser.parse_args(arguments)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    logging.basicConfig(level=logging.WARNING, format="turnstore: %(levelname)s: %(message)s")
    run: Run = args.run
    try:
        return run(args, sys.stdout)
    except CommandError as exc:
        if isinstance(exc, UsageError):
            args.command_parser.print_usage(sys.stderr)
        print(f"turnstore: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except TurnStoreError as exc:
        print(f"turnstore: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_STORE_ERROR
    except psycopg.OperationalError as exc:
        print(f"turnstore: error: cannot reach PostgreSQL: {one_line(exc)}", file=sys.stderr)
        return EXIT_STORE_ERROR
    except psycopg.Error as exc:
        print(f"turnstore: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_STORE_ERROR
    except BrokenPipeError:
        # The reader went away (``turnstore sql | head``): stop quietly, as cat does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_STORE_ERROR
    except KeyboardInterrupt:
        print("turnstore: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED

"""What every ``turnstore`` command shares: exit codes, the expected-failure exceptions,
the ``--dsn`` and ``--schema`` arguments, and (from ``turnstore._console``) one connection,
a small store, one-line messages and plain tables."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import TextIO, TypeAlias

import psycopg
from psycopg.conninfo import conninfo_to_dict

from turnstore._console import CONNECT_TIMEOUT_SECS, connect, format_table, one_line, open_store

__all__ = [
    "Commands",
    "CONNECT_TIMEOUT_SECS",
    "ENV_DSN",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_STORE_ERROR",
    "EXIT_USAGE",
    "CommandError",
    "Run",
    "UsageError",
    "add_command",
    "add_dsn",
    "add_schema",
    "connect",
    "dsn_argument",
    "format_table",
    "one_line",
    "open_store",
    "required_dsn",
]

#: The sub-command registry that ``ArgumentParser.add_subparsers`` returns (its class is
#: private to argparse, hence the alias).
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

#: The environment variable ``migrate`` and ``sweep`` read when ``--dsn`` is not given.
ENV_DSN = "TURNSTORE_DSN"

EXIT_OK = 0
EXIT_STORE_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

#: PostgreSQL truncates longer identifiers, which would silently rename the schema.
_MAX_IDENTIFIER_BYTES = 63

#: A command: parsed arguments and where to print, to an exit code.
Run = Callable[[argparse.Namespace, TextIO], int]


class CommandError(Exception):
    """An expected failure of a command: reported in one line, no traceback."""

    exit_code = EXIT_STORE_ERROR


class UsageError(CommandError):
    """The command line asks for something impossible."""

    exit_code = EXIT_USAGE


def add_command(commands: Commands, name: str, help: str, run: Run) -> argparse.ArgumentParser:
    """A subcommand whose parsed arguments carry its parser (for usage lines) and ``run``."""
    parser: argparse.ArgumentParser = commands.add_parser(name, help=help, description=help)
    parser.set_defaults(command_parser=parser, run=run)
    return parser


def _schema_name(value: str) -> str:
    if not value or "\x00" in value:
        raise argparse.ArgumentTypeError("a schema name must be non-empty text")
    if len(value.encode("utf-8")) > _MAX_IDENTIFIER_BYTES:
        raise argparse.ArgumentTypeError(
            f"schema name {value!r} is longer than PostgreSQL's {_MAX_IDENTIFIER_BYTES} bytes"
        )
    return value


def add_dsn(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--dsn", metavar="DSN", help=help_text)


def add_schema(parser: argparse.ArgumentParser, default: str | None, help_text: str) -> None:
    parser.add_argument(
        "--schema", metavar="SCHEMA", type=_schema_name, default=default, help=help_text
    )


def dsn_argument(args: argparse.Namespace, *, from_env: bool = True) -> str | None:
    """``--dsn``, else ``$TURNSTORE_DSN`` when ``from_env``; checked for syntax only."""
    dsn: str | None = args.dsn
    if dsn is None and from_env:
        dsn = os.environ.get(ENV_DSN) or None
    if dsn is not None:
        try:
            conninfo_to_dict(dsn)
        except psycopg.ProgrammingError as exc:
            raise UsageError(f"invalid DSN: {one_line(exc)}") from exc
    return dsn


def required_dsn(args: argparse.Namespace) -> str:
    dsn = dsn_argument(args)
    if dsn is None:
        raise UsageError(f"no database given: pass --dsn or set {ENV_DSN}")
    return dsn

"""What every ``turnstore`` command shares: exit codes, the expected-failure exceptions,
the ``--dsn`` and ``--schema`` arguments, and (from ``turnstore._console``) one connection,
a small store, one-line messages and plain tables."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable
from typing import TextIO, TypeAlias

from turnstore._console import CONNECT_TIMEOUT_SECS, connect, format_table, one_line, open_store
from turnstore.errors import InvalidParameterError
from turnstore.postgres.store import check_dsn
from turnstore.validation import check_partitions, check_schema_name

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
    "add_partitions",
    "add_schema",
    "check_argv",
    "connect",
    "decimal_int",
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

#: An int argument: ASCII digits only (``int()`` would also take " 60", "6_0" and other
#: scripts' digits), at most 10 of them.
_DECIMAL_INT = re.compile(r"-?[0-9]{1,10}")

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


def check_argv(argv: list[str]) -> None:
    """Refuse an argument holding a byte the locale could not decode (Python passes it on
    as a lone surrogate, which no PostgreSQL text can hold) or a NUL."""
    for position, arg in enumerate(argv, 1):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            raise UsageError(
                f"argument {position} is not valid text (an undecodable byte?)"
            ) from None
        if "\x00" in arg:
            raise UsageError(f"argument {position} holds a NUL character")


def _schema_name(value: str) -> str:
    if not value:
        raise argparse.ArgumentTypeError("a schema name must be non-empty text")
    try:
        return check_schema_name(value, "schema name")
    except InvalidParameterError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_partitions(parser: argparse.ArgumentParser) -> None:
    """``--partitions N``: the layout of a new schema (docs/schema.md, *The partitioned
    layout*)."""
    parser.add_argument(
        "--partitions",
        metavar="N",
        type=_partitions,
        default=None,
        help="table layout of a new schema: 0 plain (the default), N from 2 to 1024 "
        "hash-partitions chat_turns by tenant_id; an existing schema keeps its layout and "
        "any other N is refused",
    )


def _partitions(value: str) -> int:
    count = decimal_int(value)
    try:
        check_partitions(count, "--partitions")
    except InvalidParameterError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return count


def decimal_int(value: str) -> int:
    """An argparse ``type``: an int written in ASCII digits."""
    if _DECIMAL_INT.fullmatch(value) is None:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value[:40]!r}")
    return int(value)


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
        source = "--dsn" if args.dsn is not None else f"${ENV_DSN}"
        try:
            check_dsn(dsn, source)
        except InvalidParameterError as exc:
            raise UsageError(f"invalid DSN: {one_line(exc)}") from None
    return dsn


def required_dsn(args: argparse.Namespace) -> str:
    dsn = dsn_argument(args)
    if dsn is None:
        raise UsageError(f"no database given: pass --dsn or set {ENV_DSN}")
    return dsn

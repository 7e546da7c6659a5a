"""The ``turnstore`` command line (also ``python -m turnstore``).

- ``turnstore migrate``: apply pending migrations, or ``--check`` whether any are pending.
- ``turnstore sql``: print the whole schema as SQL, for teams that apply DDL with their own
  migration tool (Alembic, Flyway, ...).
- ``turnstore demo``: play a short scripted scenario on a throwaway database and print the
  rows it leaves.
- ``turnstore sweep --once``: run one orphan-watchdog scan.

Expected failures print one line on stderr and no traceback: exit code 2 for bad usage, 1
for a store error (database unreachable, schema not current, migration refused, ...).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TextIO

import psycopg
import pydantic
from psycopg.conninfo import conninfo_to_dict

from turnstore.errors import SchemaMismatchError, StoreUnavailableError, TurnStoreError
from turnstore.postgres import (
    DEFAULT_SCHEMA,
    PostgresStore,
    SchemaStatus,
    check_schema,
    migrate,
    migration_files,
    schema_sql,
)
from turnstore.watchdog import (
    DEFAULT_ORPHAN_TIMEOUT_SECS,
    OrphanWatchdog,
    SweepReport,
    WatchdogSettings,
)

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

#: The environment variable ``migrate`` and ``sweep`` read when ``--dsn`` is not given.
ENV_DSN = "TURNSTORE_DSN"

EXIT_OK = 0
EXIT_STORE_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

#: PostgreSQL truncates longer identifiers, which would silently rename the schema.
_MAX_IDENTIFIER_BYTES = 63
#: How long a command waits for PostgreSQL to accept a connection.
CONNECT_TIMEOUT_SECS = 10


class CommandError(Exception):
    """An expected failure of a command: reported in one line, no traceback."""

    exit_code = EXIT_STORE_ERROR


class UsageError(CommandError):
    """The command line asks for something impossible."""

    exit_code = EXIT_USAGE


def _one_line(error: BaseException) -> str:
    """Driver messages span lines (hints, details); the CLI reports one."""
    return " ".join(str(error).split()) or type(error).__name__


# --------------------------------------------------------------------------- arguments


def _schema_name(value: str) -> str:
    if not value or "\x00" in value:
        raise argparse.ArgumentTypeError("a schema name must be non-empty text")
    if len(value.encode("utf-8")) > _MAX_IDENTIFIER_BYTES:
        raise argparse.ArgumentTypeError(
            f"schema name {value!r} is longer than PostgreSQL's {_MAX_IDENTIFIER_BYTES} bytes"
        )
    return value


def _add_dsn(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--dsn", metavar="DSN", help=help_text)


def _add_schema(parser: argparse.ArgumentParser, default: str | None, help_text: str) -> None:
    parser.add_argument(
        "--schema", metavar="SCHEMA", type=_schema_name, default=default, help=help_text
    )


def _command(commands: Any, name: str, help: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(name, help=help, description=help)
    parser.set_defaults(command_parser=parser)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="turnstore",
        description="Durable, exactly-once chat turns on PostgreSQL.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    dsn_help = f"PostgreSQL connection string (default: ${ENV_DSN})"
    schema_help = f"schema holding turnstore's tables (default: {DEFAULT_SCHEMA})"

    p = _command(commands, "migrate", "apply pending migrations")
    _add_dsn(p, dsn_help)
    _add_schema(p, DEFAULT_SCHEMA, schema_help)
    p.add_argument(
        "--check",
        action="store_true",
        help="change nothing; exit 1 unless every migration is applied (needs no DDL rights)",
    )

    p = _command(commands, "sql", "print the whole schema as SQL")
    _add_schema(p, DEFAULT_SCHEMA, schema_help)

    p = _command(commands, "demo", "play a scripted scenario on a throwaway database")
    _add_dsn(
        p,
        "use this server instead of an embedded one; the demo works in a new schema there "
        "and drops it afterwards ($" + ENV_DSN + " is not read)",
    )
    _add_schema(
        p,
        None,
        "schema the demo creates and drops (must not exist; default: turnstore on the "
        "embedded server, turnstore_demo_<random> with --dsn)",
    )

    p = _command(commands, "sweep", "fail orphaned turns (one watchdog scan)")
    _add_dsn(p, dsn_help)
    _add_schema(p, DEFAULT_SCHEMA, schema_help)
    p.add_argument(
        "--once",
        action="store_true",
        required=True,
        help="run one scan and exit (continuous sweeping runs in the application: "
        "OrphanWatchdog.start())",
    )
    p.add_argument(
        "--timeout",
        type=int,
        default=DEFAULT_ORPHAN_TIMEOUT_SECS,
        metavar="SECONDS",
        help="silence after which a running turn is an orphan (60..3600, default %(default)s)",
    )
    p.add_argument(
        "--limit",
        type=int,
        default=100,
        metavar="N",
        help="at most this many turns per scan (default %(default)s)",
    )
    return parser


def _dsn(args: argparse.Namespace, *, from_env: bool = True) -> str | None:
    """``--dsn``, else ``$TURNSTORE_DSN`` when ``from_env``; checked for syntax only."""
    dsn: str | None = args.dsn
    if dsn is None and from_env:
        dsn = os.environ.get(ENV_DSN) or None
    if dsn is not None:
        try:
            conninfo_to_dict(dsn)
        except psycopg.ProgrammingError as exc:
            raise UsageError(f"invalid DSN: {_one_line(exc)}") from exc
    return dsn


def _required_dsn(args: argparse.Namespace) -> str:
    dsn = _dsn(args)
    if dsn is None:
        raise UsageError(f"no database given: pass --dsn or set {ENV_DSN}")
    return dsn


# --------------------------------------------------------------------------- database


async def connect(dsn: str) -> psycopg.AsyncConnection[Any]:
    """One autocommit connection; an unreachable server is a ``StoreUnavailableError``
    at once, where a pool would keep retrying until its timeout."""
    try:
        return await psycopg.AsyncConnection.connect(
            dsn,
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT_SECS,
            application_name="turnstore-cli",
        )
    except psycopg.OperationalError as exc:
        raise StoreUnavailableError(f"cannot connect to PostgreSQL: {_one_line(exc)}") from exc


async def open_store(dsn: str, schema: str, *, verify_schema: bool = False) -> PostgresStore:
    """A small pool: a command needs a few connections at most."""
    return await PostgresStore.open(
        dsn,
        schema=schema,
        min_size=1,
        max_size=4,
        timeout=CONNECT_TIMEOUT_SECS,
        verify_schema=verify_schema,
    )


def _versions(versions: Sequence[int]) -> str:
    return ", ".join(f"{v:04d}" for v in versions)


def _describe_status(schema: str, status: SchemaStatus) -> str:
    try:
        status.require_current(schema)
    except SchemaMismatchError as exc:
        return str(exc)
    return f"schema {schema!r} is current (applied: {_versions(status.applied)})"


# --------------------------------------------------------------------------- commands


async def _migrate_command(dsn: str, schema: str, check: bool, out: TextIO) -> int:
    conn = await connect(dsn)
    async with conn:
        if check:
            status = await check_schema(conn, schema=schema)
            print(_describe_status(schema, status), file=out)
            return EXIT_OK if status.current else EXIT_STORE_ERROR
        applied = await migrate(conn, schema=schema)
    if not applied:
        print(f"schema {schema!r} is up to date", file=out)
        return EXIT_OK
    names = {m.version: m.name for m in migration_files()}
    for version in applied:
        print(f"applied {version:04d}_{names[version]} to schema {schema!r}", file=out)
    return EXIT_OK


async def _sweep_command(dsn: str, schema: str, settings: WatchdogSettings, out: TextIO) -> int:
    # One plain connection first: an unreachable server fails at once, where the pool would
    # keep retrying until its timeout.
    async with await connect(dsn):
        pass
    try:
        store = await open_store(dsn, schema, verify_schema=True)
    except SchemaMismatchError as exc:
        print(f"turnstore: error: {exc}; run 'turnstore migrate'", file=sys.stderr)
        return EXIT_STORE_ERROR
    async with store:
        report = await OrphanWatchdog(store, settings).run_once()
    _print_sweep(report, schema, settings, out)
    return EXIT_OK


def _print_sweep(report: SweepReport, schema: str, settings: WatchdogSettings, out: TextIO) -> None:
    if not report.leader:
        print(
            f"another watchdog is sweeping schema {schema!r} right now; nothing was done",
            file=out,
        )
        return
    left = len(report.detected) - len(report.finalized) - len(report.settlement_errors)
    print(
        f"swept schema {schema!r} (timeout {settings.orphan_timeout_secs} s, limit "
        f"{settings.batch_limit}): {len(report.detected)} orphan(s) found, "
        f"{len(report.finalized)} failed with orphan_timeout, {left} renewed or finalized "
        "by someone else meanwhile",
        file=out,
    )
    if report.finalized:
        headers = ["turn", "tenant", "chat", "request", "last progress", "failed at"]
        rows = [
            [
                str(t.id),
                str(t.tenant_id),
                str(t.chat_id),
                str(t.request_id),
                _timestamp(t.last_progress_at),
                _timestamp(t.completed_at),
            ]
            for t in report.finalized
        ]
        print(format_table(headers, rows), file=out)


def _timestamp(value: datetime | None) -> str:
    return "" if value is None else value.isoformat(sep=" ", timespec="milliseconds")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Plain aligned columns: a header, a rule, one line per row."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


# --------------------------------------------------------------------------- main


def _dispatch(args: argparse.Namespace, out: TextIO) -> int:
    command: str = args.command
    if command == "sql":
        out.write(schema_sql(args.schema))
        return EXIT_OK
    if command == "migrate":
        return asyncio.run(_migrate_command(_required_dsn(args), args.schema, args.check, out))
    if command == "sweep":
        try:
            settings = WatchdogSettings(orphan_timeout_secs=args.timeout, batch_limit=args.limit)
        except pydantic.ValidationError as exc:
            problems = "; ".join(f"{e['loc'][0]}: {e['msg']}" for e in exc.errors())
            raise UsageError(f"invalid watchdog settings: {problems}") from exc
        return asyncio.run(_sweep_command(_required_dsn(args), args.schema, settings, out))
    if command == "demo":
        # Imported here: the lifecycle code it plays is not needed by the other commands.
        from turnstore.demo import run_demo

        run_demo(_dsn(args, from_env=False), args.schema, out)
        return EXIT_OK
    raise UsageError(f"unknown command {command!r}")  # pragma: no cover - argparse refuses


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (0 ok, 1 store error, 2 usage)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    logging.basicConfig(level=logging.WARNING, format="turnstore: %(levelname)s: %(message)s")
    try:
        return _dispatch(args, sys.stdout)
    except CommandError as exc:
        if isinstance(exc, UsageError):
            args.command_parser.print_usage(sys.stderr)
        print(f"turnstore: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except TurnStoreError as exc:
        print(f"turnstore: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_STORE_ERROR
    except psycopg.OperationalError as exc:
        print(f"turnstore: error: cannot reach PostgreSQL: {_one_line(exc)}", file=sys.stderr)
        return EXIT_STORE_ERROR
    except psycopg.Error as exc:
        print(f"turnstore: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_STORE_ERROR
    except BrokenPipeError:
        # The reader went away (``turnstore sql | head``): stop quietly, as cat does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_STORE_ERROR
    except KeyboardInterrupt:
        print("turnstore: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED

"""``turnstore sweep --once``: run one orphan-watchdog scan and print what it failed."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import datetime
from typing import TextIO

import pydantic

from turnstore.cli._common import (
    ENV_DSN,
    EXIT_OK,
    EXIT_STORE_ERROR,
    Commands,
    UsageError,
    add_command,
    add_dsn,
    add_schema,
    connect,
    decimal_int,
    format_table,
    open_store,
    required_dsn,
)
from turnstore.errors import SchemaMismatchError
from turnstore.postgres import DEFAULT_SCHEMA
from turnstore.watchdog import (
    DEFAULT_ORPHAN_TIMEOUT_SECS,
    OrphanWatchdog,
    SweepReport,
    WatchdogSettings,
)

__all__ = ["add_parser"]


def add_parser(commands: Commands) -> None:
    p = add_command(commands, "sweep", "fail orphaned turns (one watchdog scan)", _run)
    add_dsn(p, f"PostgreSQL connection string (default: ${ENV_DSN})")
    add_schema(p, DEFAULT_SCHEMA, f"schema holding turnstore's tables (default: {DEFAULT_SCHEMA})")
    p.add_argument(
        "--once",
        action="store_true",
        required=True,
        help="run one scan and exit (continuous sweeping runs in the application: "
        "OrphanWatchdog.start())",
    )
    p.add_argument(
        "--timeout",
        type=decimal_int,
        default=DEFAULT_ORPHAN_TIMEOUT_SECS,
        metavar="SECONDS",
        help="silence after which a running turn is an orphan (60..3600, default %(default)s)",
    )
    p.add_argument(
        "--limit",
        type=decimal_int,
        default=100,
        metavar="N",
        help="at most this many turns per scan (default %(default)s)",
    )


def _run(args: argparse.Namespace, out: TextIO) -> int:
    try:
        settings = WatchdogSettings(orphan_timeout_secs=args.timeout, batch_limit=args.limit)
    except pydantic.ValidationError as exc:
        problems = "; ".join(f"{e['loc'][0]}: {e['msg']}" for e in exc.errors())
        raise UsageError(f"invalid watchdog settings: {problems}") from exc
    return asyncio.run(_sweep_command(required_dsn(args), args.schema, settings, out))


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

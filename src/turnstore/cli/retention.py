"""``turnstore purge`` and ``turnstore erase-tenant``: retention and erasure
(docs/retention.md), in batches, with a progress line per batch."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TextIO

from turnstore import retention
from turnstore.cli._common import (
    ENV_DSN,
    EXIT_OK,
    EXIT_STORE_ERROR,
    add_command,
    add_dsn,
    add_schema,
    connect,
    open_store,
    required_dsn,
)
from turnstore.errors import SchemaMismatchError
from turnstore.model import MAX_RETENTION_BATCH
from turnstore.postgres import DEFAULT_SCHEMA, PostgresStore

__all__ = ["add_parsers", "parse_age"]

_AGE = re.compile(r"(?P<n>\d+)(?P<unit>[smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
#: ``older_than`` is stored as whole seconds in a 32-bit int (about 68 years).
_MAX_AGE_SECS = 2**31 - 1


def parse_age(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w``: a whole number and one unit."""
    match = _AGE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"invalid age {text!r}: use a whole number and a unit (s, m, h, d, w), e.g. 30d"
        )
    age = timedelta(**{_UNITS[match["unit"]]: int(match["n"])})
    if age.total_seconds() > _MAX_AGE_SECS:
        raise argparse.ArgumentTypeError(f"age {text!r} is too long")
    return age


def _batch_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_RETENTION_BATCH:
        raise argparse.ArgumentTypeError(
            f"batch size must be an integer in 1..{MAX_RETENTION_BATCH}, got {text!r}"
        )
    return value


def _tenant(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"tenant id must be a UUID, got {text!r}") from None


def _common(p: argparse.ArgumentParser) -> None:
    add_dsn(p, f"PostgreSQL connection string (default: ${ENV_DSN})")
    add_schema(p, DEFAULT_SCHEMA, f"schema holding turnstore's tables (default: {DEFAULT_SCHEMA})")
    p.add_argument("--dry-run", action="store_true", help="count what would go; delete nothing")
    p.add_argument(
        "--batch-size",
        type=_batch_size,
        default=retention.DEFAULT_BATCH_SIZE,
        metavar="N",
        help="rows deleted per transaction (default %(default)s)",
    )


def add_parsers(commands: Any) -> None:
    purge = add_command(
        commands, "purge", "delete finished turns older than an age (retention)", _run_purge
    )
    purge.add_argument(
        "--older-than",
        type=parse_age,
        required=True,
        metavar="AGE",
        help="delete terminal turns that ended longer ago than this (e.g. 30d, 12h)",
    )
    _common(purge)
    erase = add_command(
        commands,
        "erase-tenant",
        "delete every turn of a tenant, running ones included (erasure)",
        _run_erase,
    )
    erase.add_argument("tenant_id", type=_tenant, metavar="TENANT_ID", help="the tenant's id")
    _common(erase)


def _run_purge(args: argparse.Namespace, out: TextIO) -> int:
    age: timedelta = args.older_than

    async def work(store: PostgresStore, progress: retention.Progress) -> retention.RetentionReport:
        return await retention.purge(
            store, age, batch_size=args.batch_size, dry_run=args.dry_run, progress=progress
        )

    what = f"terminal turns that ended more than {_age_text(age)} ago"
    return asyncio.run(_command(required_dsn(args), args.schema, what, work, out))


def _run_erase(args: argparse.Namespace, out: TextIO) -> int:
    tenant_id: uuid.UUID = args.tenant_id

    async def work(store: PostgresStore, progress: retention.Progress) -> retention.RetentionReport:
        return await retention.erase_tenant(
            store, tenant_id, batch_size=args.batch_size, dry_run=args.dry_run, progress=progress
        )

    what = f"turns of tenant {tenant_id}"
    return asyncio.run(_command(required_dsn(args), args.schema, what, work, out))


async def _command(
    dsn: str,
    schema: str,
    what: str,
    work: Callable[[PostgresStore, retention.Progress], Awaitable[retention.RetentionReport]],
    out: TextIO,
) -> int:
    async with await connect(dsn):
        pass
    try:
        store = await open_store(dsn, schema, verify_schema=True)
    except SchemaMismatchError as exc:
        print(f"turnstore: error: {exc}; run 'turnstore migrate'", file=sys.stderr)
        return EXIT_STORE_ERROR

    def progress(deleted: int) -> None:
        print(f"deleted {deleted} so far", file=out, flush=True)

    async with store:
        report = await work(store, progress)
    if report.dry_run:
        print(f"dry run in schema {schema!r}: {report.matched} {what} would be deleted", file=out)
    else:
        print(
            f"deleted {report.deleted} {what} from schema {schema!r} in {report.batches} batch(es)",
            file=out,
        )
    return EXIT_OK


def _age_text(age: timedelta) -> str:
    seconds = int(age.total_seconds())
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"

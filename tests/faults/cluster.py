"""A PostgreSQL cluster and a PgBouncer that the fault tests own, kill and restart.

``PgCluster`` runs its own PostgreSQL (``initdb`` + ``pg_ctl`` from ``pg_config --bindir``)
in a temporary directory on a free port of 127.0.0.1; ``PgBouncer`` runs a transaction
pooling PgBouncer in front of it on another free port. Neither ever touches another server
on the machine. Run as root, both run as the ``postgres`` OS user (``initdb`` and
``pgbouncer`` refuse root); otherwise as the current user.

Every wait here is bounded: a server that does not come up, go down or answer in time
raises ``ClusterError`` instead of hanging the suite.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

__all__ = [
    "ClusterError",
    "PgBouncer",
    "PgCluster",
    "find_pg_bindir",
    "find_pgbouncer",
    "free_port",
]

#: Seconds any start, stop or readiness wait may take before it counts as a failure.
WAIT_SECS = 30.0
_SERVICE_USER = "postgres"
_HOST = "127.0.0.1"


class ClusterError(RuntimeError):
    """A server of the fault tests did not start, stop or answer in time."""


def find_pg_bindir() -> Path | None:
    """The directory of ``initdb``/``pg_ctl``: ``pg_config --bindir``, else ``None``."""
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        return None
    try:
        out = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    bindir = Path(out)
    if all((bindir / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
        return bindir
    return None


def find_pgbouncer() -> Path | None:
    """The ``pgbouncer`` binary (on PATH, or Debian's ``/usr/sbin``), else ``None``."""
    found = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/sbin")
    return Path(found) if found else None


def free_port() -> int:
    """A TCP port of 127.0.0.1 nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((_HOST, 0))
        return int(s.getsockname()[1])


def _accepting(port: int) -> bool:
    try:
        socket.create_connection((_HOST, port), timeout=1).close()
    except OSError:
        return False
    return True


def _wait_for(predicate: Any, what: str, timeout: float = WAIT_SECS) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours is dead for every purpose here.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def _pid_exists(pid: int) -> bool:
    """Whether ``pid`` is still in the process table (a zombie included)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc; empty where there is no /proc)."""
    found: list[int] = []
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


class _Runner:
    """Runs the server programs as the ``postgres`` user when this process is root."""

    def __init__(self) -> None:
        self.as_service_user = os.geteuid() == 0
        if self.as_service_user:
            entry = pwd.getpwnam(_SERVICE_USER)
            self.uid, self.gid = entry.pw_uid, entry.pw_gid
        else:
            self.uid, self.gid = os.getuid(), os.getgid()

    def own(self, path: Path) -> None:
        if self.as_service_user:
            os.chown(path, self.uid, self.gid)

    def _user_kwargs(self) -> dict[str, Any]:
        if not self.as_service_user:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def run(self, args: Sequence[str], *, timeout: float = WAIT_SECS) -> str:
        try:
            done = subprocess.run(
                list(args),
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd="/",
                stdin=subprocess.DEVNULL,
                **self._user_kwargs(),
            )
        except subprocess.TimeoutExpired as exc:
            raise ClusterError(f"{args[0]} did not finish within {timeout} s") from exc
        if done.returncode != 0:
            raise ClusterError(
                f"{' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
            )
        return str(done.stdout)

    def popen(self, args: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            return subprocess.Popen(
                list(args),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd="/",
                start_new_session=True,
                **self._user_kwargs(),
            )


class PgCluster:
    """A PostgreSQL cluster of its own: ``start``, ``stop``, ``kill``, ``restart``."""

    def __init__(self, bindir: Path, base: Path | None = None) -> None:
        self._runner = _Runner()
        self.bindir = bindir
        self.base = Path(base or tempfile.mkdtemp(prefix="turnstore-faults-pg-"))
        self._runner.own(self.base)
        self.data = self.base / "data"
        self.sockets = self.base / "sockets"
        self.log = self.base / "postgres.log"
        self.port = free_port()

    # ---- set-up and tear-down

    def init(self) -> None:
        self.sockets.mkdir(exist_ok=True)
        self._runner.own(self.sockets)
        self._runner.run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ],
            timeout=120,
        )

    def destroy(self) -> None:
        """Stop the server however it can be stopped, and delete its directory."""
        try:
            if self.running():
                try:
                    self.stop(mode="immediate")
                except ClusterError:
                    self.kill()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    # ---- addresses

    def dsn(self, dbname: str = "postgres", **params: Any) -> str:
        return make_conninfo(
            "", host=_HOST, port=self.port, user="postgres", dbname=dbname, **params
        )

    def connect(self, dbname: str = "postgres") -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn(dbname, connect_timeout=10), autocommit=True)

    # ---- server control

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def running(self) -> bool:
        pid = self.postmaster_pid()
        return pid is not None and _pid_alive(pid)

    def start(self) -> None:
        options = " ".join(
            [
                f"-p {self.port}",
                f"-c listen_addresses={_HOST}",
                f"-c unix_socket_directories={self.sockets}",
                "-c fsync=off",
                # A commit must survive a crash of the server (not of the machine): with
                # fsync off the WAL still reaches the OS at commit, but only when commits
                # wait for their WAL write.
                "-c synchronous_commit=on",
                "-c full_page_writes=off",
                "-c max_connections=200",
                "-c shared_buffers=32MB",
                "-c log_min_messages=warning",
            ]
        )
        self._runner.run(
            [
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-o",
                options,
                "-w",
                "-t",
                str(int(WAIT_SECS)),
                "start",
            ],
            timeout=WAIT_SECS + 10,
        )
        self.wait_ready()

    def wait_ready(self, timeout: float = WAIT_SECS) -> None:
        """Wait until a fresh connection runs a query (bounded)."""

        def answers() -> bool:
            try:
                with self.connect() as conn:
                    conn.execute("SELECT 1")
            except psycopg.Error:
                return False
            return True

        _wait_for(answers, f"PostgreSQL on port {self.port} to answer", timeout)

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m mode``: ``fast`` ends sessions cleanly, ``immediate`` crashes."""
        self._runner.run(
            [
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.data),
                "-m",
                mode,
                "-w",
                "-t",
                str(int(WAIT_SECS)),
                "stop",
            ],
            timeout=WAIT_SECS + 10,
        )
        _wait_for(lambda: not _accepting(self.port), f"port {self.port} to close")

    def kill(self) -> None:
        """SIGKILL the postmaster and every process it forked: a crash of the machine's
        database, as an OOM killer or a lost VM would leave it. Clients see their sockets
        reset; the next ``start`` runs crash recovery."""
        pid = self.postmaster_pid()
        if pid is None or not _pid_alive(pid):
            return
        children = _children(pid)
        for victim in [pid, *children]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        _wait_for(
            lambda: not any(_pid_alive(p) for p in [pid, *children]),
            f"postmaster {pid} and its children to die",
        )
        _wait_for(lambda: not _accepting(self.port), f"port {self.port} to close")
        # A dead postmaster may linger as a zombie until PID 1 reaps it, and the next
        # postmaster would take the zombie's pid for a live server: wait for the reaping a
        # little, then remove the stale lock file ourselves.
        with contextlib.suppress(ClusterError):
            _wait_for(lambda: not _pid_exists(pid), f"postmaster {pid} to be reaped", 5.0)
        if _pid_exists(pid):
            (self.data / "postmaster.pid").unlink(missing_ok=True)

    def restart(self, mode: str = "fast") -> None:
        """Stop (``fast``, or ``immediate`` for a crash) and start again on the same port."""
        self.stop(mode=mode)
        self.start()

    def ensure_running(self) -> None:
        if not self.running():
            self.start()
        else:
            self.wait_ready()

    def terminate_backends(self, dbname: str | None = None) -> int:
        """``pg_terminate_backend`` every client session (of ``dbname``, if given) but the
        one asking; returns how many were terminated."""
        with self.connect() as conn:
            query = (
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'"
                " AND (%s::text IS NULL OR datname = %s::text)"
            )
            row = conn.execute(query, (dbname, dbname)).fetchone()
        return int(row[0]) if row else 0

    # ---- databases

    def create_database(self, name: str) -> None:
        with self.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def drop_database(self, name: str) -> None:
        with self.connect() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


class PgBouncer:
    """A PgBouncer in transaction pooling mode in front of a ``PgCluster``."""

    def __init__(
        self,
        binary: Path,
        cluster: PgCluster,
        *,
        default_pool_size: int = 5,
        max_client_conn: int = 200,
    ) -> None:
        self._runner = _Runner()
        self.binary = binary
        self.cluster = cluster
        self.base = Path(tempfile.mkdtemp(prefix="turnstore-faults-pgbouncer-"))
        self._runner.own(self.base)
        self.port = free_port()
        self.ini = self.base / "pgbouncer.ini"
        self.log = self.base / "pgbouncer.log"
        self.default_pool_size = default_pool_size
        self.max_client_conn = max_client_conn
        self._process: subprocess.Popen[bytes] | None = None

    def _write_config(self) -> None:
        userlist = self.base / "userlist.txt"
        userlist.write_text('"postgres" ""\n')
        self.ini.write_text(
            "\n".join(
                [
                    "[databases]",
                    # Any database name is forwarded to the cluster: tests make their own.
                    f"* = host={_HOST} port={self.cluster.port}",
                    "",
                    "[pgbouncer]",
                    f"listen_addr = {_HOST}",
                    f"listen_port = {self.port}",
                    "unix_socket_dir =",
                    "auth_type = trust",
                    f"auth_file = {userlist}",
                    "pool_mode = transaction",
                    f"max_client_conn = {self.max_client_conn}",
                    f"default_pool_size = {self.default_pool_size}",
                    "min_pool_size = 0",
                    "reserve_pool_size = 0",
                    # psycopg sends these at connect; PgBouncer refuses unknown ones.
                    "ignore_startup_parameters = extra_float_digits,options",
                    "server_login_retry = 1",
                    "query_wait_timeout = 60",
                    "admin_users = postgres",
                    f"pidfile = {self.base / 'pgbouncer.pid'}",
                    "logfile =",
                    "",
                ]
            )
        )
        for path in (userlist, self.ini):
            self._runner.own(path)

    def dsn(self, dbname: str = "postgres", **params: Any) -> str:
        return make_conninfo(
            "", host=_HOST, port=self.port, user="postgres", dbname=dbname, **params
        )

    def start(self) -> None:
        self._write_config()
        self.log.touch()
        self._runner.own(self.log)
        self._process = self._runner.popen([str(self.binary), str(self.ini)], self.log)
        process = self._process

        def listening() -> bool:
            if process.poll() is not None:
                raise ClusterError(
                    f"pgbouncer exited {process.returncode}:\n{self.log.read_text()}"
                )
            return _accepting(self.port)

        _wait_for(listening, f"pgbouncer on port {self.port}")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()  # SIGTERM: PgBouncer exits at once, closing every connection
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def destroy(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

"""The orphan watchdog on both backends: settings, sweeps, settlement in the finalizing
transaction, the scan/CAS race, leader election and its hand-over when the leader's
PostgreSQL session dies."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import psycopg_pool
import pydantic
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from lifecycle_support import Chat, HookRecorder, tapped
from turnstore.election import InProcessElection, LeaderElection
from turnstore.errors import InvalidParameterError
from turnstore.lifecycle import StartKind, TurnLifecycle
from turnstore.memory import InMemoryStore
from turnstore.model import Turn, TurnState
from turnstore.postgres import (
    AdvisoryLockElection,
    LeaseElection,
    PostgresStore,
    advisory_lock_key,
    leader_connection_kwargs,
)
from turnstore.repository import TurnStore
from turnstore.rules import ORPHAN_ERROR_CODE
from turnstore.scope import AccessScope
from turnstore.testing.backends import BackendHarness, PostgresHarness
from turnstore.watchdog import (
    OrphanWatchdog,
    SweepReport,
    WatchdogMetrics,
    WatchdogSettings,
)

TIMEOUT = 60
SETTINGS = WatchdogSettings(orphan_timeout_secs=TIMEOUT)


async def start_turn(store: TurnStore[Any], chat: Chat) -> Turn:
    outcome = await TurnLifecycle(store).begin_turn(chat.scope, chat.params())
    assert outcome.kind is StartKind.STARTED
    assert outcome.turn is not None
    return outcome.turn


async def reload(store: TurnStore[Any], turn: Turn) -> Turn:
    async with store.connection() as conn:
        row = await store.turns.find_by_chat_and_request_id(
            conn, AccessScope.allow_all(), turn.tenant_id, turn.chat_id, turn.request_id
        )
    assert row is not None
    return row


async def orphan(backend: BackendHarness) -> Turn:
    turn = await start_turn(backend.store, Chat())
    await backend.advance_time(TIMEOUT + 1)
    return turn


def election_for(backend: BackendHarness) -> LeaderElection:
    """An election on the backend's real store, for a watchdog built on a tapped store."""
    store: Any = backend.store
    if backend.name == "memory":
        return InProcessElection(store)
    return AdvisoryLockElection.from_dsn(store.dsn, advisory_lock_key(store.schema))


class RaisingMetrics(WatchdogMetrics):
    """Metrics whose every hook fails, after counting the call."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def orphan_detected(self, turn: Turn) -> None:
        self.calls.append("detected")
        raise RuntimeError("metrics backend down")

    def orphan_finalized(self, turn: Turn) -> None:
        self.calls.append("finalized")
        raise RuntimeError("metrics backend down")

    def scan_duration(self, seconds: float) -> None:
        self.calls.append("duration")
        raise RuntimeError("metrics backend down")


class RecordingMetrics(WatchdogMetrics):
    def __init__(self) -> None:
        self.detected: list[Turn] = []
        self.finalized: list[Turn] = []
        self.durations: list[float] = []
        self.finalized_event = asyncio.Event()

    def orphan_detected(self, turn: Turn) -> None:
        self.detected.append(turn)

    def orphan_finalized(self, turn: Turn) -> None:
        self.finalized.append(turn)
        self.finalized_event.set()

    def scan_duration(self, seconds: float) -> None:
        self.durations.append(seconds)


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    "kwargs",
    [
        {"orphan_timeout_secs": 59},
        {"orphan_timeout_secs": 3601},
        {"orphan_timeout_secs": 120.5},
        {"scan_interval_secs": 0},
        {"batch_limit": 0},
        {"batch_limit": 10_001},
        {"unknown": 1},
    ],
)
def test_settings_refuse_bad_values(kwargs: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError):
        WatchdogSettings(**kwargs)


def test_settings_defaults_and_bounds() -> None:
    settings = WatchdogSettings()
    assert (settings.orphan_timeout_secs, settings.scan_interval_secs) == (300, 60)
    assert settings.batch_limit == 100
    assert WatchdogSettings(orphan_timeout_secs=60).orphan_timeout_secs == 60
    assert WatchdogSettings(orphan_timeout_secs=3600).orphan_timeout_secs == 3600


def test_advisory_key_is_stable_per_schema_and_fits_a_bigint() -> None:
    key = advisory_lock_key("turnstore")
    assert key == advisory_lock_key("turnstore") != advisory_lock_key("other")
    assert -(2**63) <= key < 2**63


def test_the_watchdog_imports_no_driver_and_no_backend() -> None:
    """The watchdog is backend-neutral: the store supplies its election."""
    code = (
        "import sys, turnstore.watchdog\n"
        "loaded = [m for m in sys.modules\n"
        "          if m.split('.')[0] in ('psycopg', 'psycopg_pool')\n"
        "          or m.startswith(('turnstore.postgres', 'turnstore.memory'))]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


async def test_a_store_without_a_dsn_needs_an_explicit_advisory_lock_election() -> None:
    """A host pool whose conninfo (or kwargs) is a callable gives the store nothing to open
    the advisory-lock leader's connection from; the default lease election needs none."""

    async def conninfo() -> str:
        return ""

    pools = [
        psycopg_pool.AsyncConnectionPool(conninfo, open=False),
        psycopg_pool.AsyncConnectionPool("", kwargs=lambda: {}, open=False),
    ]
    for pool in pools:
        store = PostgresStore(pool)
        with pytest.raises(InvalidParameterError, match="election"):
            store.advisory_lock_election()
        with pytest.raises(InvalidParameterError, match="election"):
            OrphanWatchdog(store, election=store.advisory_lock_election())
        assert isinstance(store.leader_election(), LeaseElection)
        assert isinstance(OrphanWatchdog(store).election, LeaseElection)


async def test_each_store_builds_its_own_election(turnstore_pg_dsn: str) -> None:
    assert isinstance(InMemoryStore().leader_election(), InProcessElection)
    key = advisory_lock_key("app_turns")
    from_dsn = PostgresStore(
        psycopg_pool.AsyncConnectionPool("", open=False),
        schema="app_turns",
        dsn=turnstore_pg_dsn,
    ).advisory_lock_election()
    # The database only in the pool's kwargs: advisory locks are per database, so an
    # election that ignored the kwargs would lock in another one and win beside from_dsn.
    params = conninfo_to_dict(turnstore_pg_dsn)
    dbname = params.pop("dbname")
    assert dbname != params.get("user", "postgres")
    host_pool = psycopg_pool.AsyncConnectionPool(
        make_conninfo("", **params), kwargs={"dbname": dbname}, open=False
    )
    from_pool = PostgresStore(host_pool, schema="app_turns").advisory_lock_election()
    for election in (from_dsn, from_pool):
        assert isinstance(election, AdvisoryLockElection)
        assert election.key == key
    # Both elections lock in the same database: the first one leads, the other cannot.
    try:
        assert await from_pool.acquire()
        assert not await from_dsn.acquire()
    finally:
        await from_pool.release()
        await from_dsn.release()


# --------------------------------------------------------------------------- sweeps


async def test_sweep_fails_an_orphan_with_orphan_timeout(
    turnstore_backend: BackendHarness,
) -> None:
    turn = await orphan(turnstore_backend)
    settle = HookRecorder()
    metrics = RecordingMetrics()
    watchdog = OrphanWatchdog(
        turnstore_backend.store, SETTINGS, settlement_hook=settle, metrics=metrics
    )
    report = await watchdog.run_once()
    assert report.leader
    assert [t.id for t in report.detected] == [turn.id]
    row = await reload(turnstore_backend.store, turn)
    assert row.state is TurnState.FAILED
    assert row.error_code == ORPHAN_ERROR_CODE
    assert row.completed_at is not None
    assert report.finalized == (row,)
    assert settle.rows == [row]
    assert report.settlement_errors == ()
    assert [t.id for t in metrics.detected] == [turn.id]
    assert metrics.finalized == [row]
    assert len(metrics.durations) == 1
    assert report.duration_secs == metrics.durations[0]
    assert not watchdog.is_leader, "a one-off sweep gives leadership back"


async def test_live_turns_are_left_alone(turnstore_backend: BackendHarness) -> None:
    chat = Chat()
    turn = await start_turn(turnstore_backend.store, chat)
    await turnstore_backend.advance_time(TIMEOUT - 5)
    report = await OrphanWatchdog(turnstore_backend.store, SETTINGS).run_once()
    assert report.leader
    assert report.detected == ()
    assert (await reload(turnstore_backend.store, turn)).state is TurnState.RUNNING


async def test_batch_limit_takes_the_oldest_first(turnstore_backend: BackendHarness) -> None:
    store = turnstore_backend.store
    oldest = await start_turn(store, Chat())
    await turnstore_backend.advance_time(10)
    middle = await start_turn(store, Chat())
    await turnstore_backend.advance_time(10)
    newest = await start_turn(store, Chat())
    await turnstore_backend.advance_time(TIMEOUT + 1)
    watchdog = OrphanWatchdog(store, WatchdogSettings(orphan_timeout_secs=TIMEOUT, batch_limit=2))
    first = await watchdog.run_once()
    assert [t.id for t in first.finalized] == [oldest.id, middle.id]
    second = await watchdog.run_once()
    assert [t.id for t in second.finalized] == [newest.id]


async def sweep_racing(
    backend: BackendHarness, race: Callable[[TurnStore[Any]], Awaitable[None]]
) -> tuple[SweepReport, list[Turn]]:
    """One sweep in which ``race`` runs between the scan and the first CAS; the report and
    the rows the settlement hook saw."""
    store, tap = tapped(backend)
    hook = HookRecorder()

    async def run_race() -> None:
        await race(store)

    tap.after["find_orphan_candidates"] = run_race
    watchdog = OrphanWatchdog(store, SETTINGS, settlement_hook=hook, election=election_for(backend))
    return await watchdog.run_once(), hook.rows


async def test_progress_renewed_between_scan_and_cas_is_not_failed(
    turnstore_backend: BackendHarness,
) -> None:
    turn = await orphan(turnstore_backend)

    async def renew(store: TurnStore[Any]) -> None:
        async with store.connection() as conn:
            assert await store.turns.update_progress_at(conn, AccessScope.allow_all(), turn.id)

    report, settled = await sweep_racing(turnstore_backend, renew)
    assert [t.id for t in report.detected] == [turn.id]
    assert report.finalized == ()
    assert settled == []
    assert (await reload(turnstore_backend.store, turn)).state is TurnState.RUNNING


async def test_turn_finalized_between_scan_and_cas_is_not_settled(
    turnstore_backend: BackendHarness,
) -> None:
    turn = await orphan(turnstore_backend)

    async def complete(store: TurnStore[Any]) -> None:
        scope = AccessScope.for_tenant(turn.tenant_id)
        assert (await TurnLifecycle(store).complete_turn(scope, turn, uuid.uuid4())).won

    report, settled = await sweep_racing(turnstore_backend, complete)
    assert [t.id for t in report.detected] == [turn.id]
    assert report.finalized == ()
    assert settled == []
    assert (await reload(turnstore_backend.store, turn)).state is TurnState.COMPLETED


async def test_settlement_error_rolls_back_and_the_next_sweep_retries(
    turnstore_backend: BackendHarness,
) -> None:
    turn = await orphan(turnstore_backend)
    other = await orphan(turnstore_backend)
    broken = {turn.id}

    async def settle(runner: Any, row: Turn) -> None:
        if row.id in broken:
            raise RuntimeError("ledger down")

    watchdog = OrphanWatchdog(turnstore_backend.store, SETTINGS, settlement_hook=settle)
    report = await watchdog.run_once()
    assert report.settlement_errors == (turn.id,)
    assert [t.id for t in report.finalized] == [other.id]
    assert (await reload(turnstore_backend.store, turn)).state is TurnState.RUNNING
    broken.clear()
    again = await watchdog.run_once()
    assert [t.id for t in again.finalized] == [turn.id]


async def test_a_raising_metrics_hook_never_stops_the_sweep(
    turnstore_backend: BackendHarness, caplog: pytest.LogCaptureFixture
) -> None:
    first = await orphan(turnstore_backend)
    second = await orphan(turnstore_backend)
    metrics = RaisingMetrics()
    settle = HookRecorder()
    watchdog = OrphanWatchdog(
        turnstore_backend.store, SETTINGS, settlement_hook=settle, metrics=metrics
    )
    report = await watchdog.run_once()
    assert {t.id for t in report.detected} == {first.id, second.id}
    assert {t.id for t in report.finalized} == {first.id, second.id}
    assert report.settlement_errors == ()
    assert len(settle.rows) == 2
    for turn in (first, second):
        assert (await reload(turnstore_backend.store, turn)).state is TurnState.FAILED
    assert sorted(metrics.calls) == ["detected"] * 2 + ["duration"] + ["finalized"] * 2
    logged = [r for r in caplog.records if r.name == "turnstore.watchdog" and r.exc_info]
    assert len(logged) == 5
    assert not watchdog.is_leader


def loop_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "turnstore-orphan-watchdog"]


async def looping_in_settlement(
    backend: BackendHarness, release: asyncio.Event
) -> tuple[OrphanWatchdog[Any], Turn]:
    """A running watchdog whose loop is inside the settlement hook of an orphan."""
    turn = await orphan(backend)
    in_settlement = asyncio.Event()

    async def slow_settle(runner: Any, row: Turn) -> None:
        in_settlement.set()
        await release.wait()

    settings = WatchdogSettings(orphan_timeout_secs=TIMEOUT, scan_interval_secs=0.01)
    watchdog = OrphanWatchdog(backend.store, settings, settlement_hook=slow_settle)
    await watchdog.start()
    await asyncio.wait_for(in_settlement.wait(), timeout=30)
    assert watchdog.is_leader
    return watchdog, turn


async def test_stop_cancelled_mid_sweep_leaves_no_task_or_leadership(
    turnstore_backend: BackendHarness,
) -> None:
    release = asyncio.Event()
    watchdog, turn = await looping_in_settlement(turnstore_backend, release)
    try:
        stopping = asyncio.create_task(watchdog.stop())
        await asyncio.sleep(0)  # stop() is now waiting for the scan in flight
        stopping.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stopping
        assert loop_tasks() == []
        assert not watchdog.is_leader
        assert not watchdog.running
        # The interrupted settlement rolled back: the orphan waits for the next scan.
        assert (await reload(turnstore_backend.store, turn)).state is TurnState.RUNNING
        other = OrphanWatchdog(turnstore_backend.store, SETTINGS)
        assert await other.elect()
        await other.stop()
    finally:
        release.set()
        for task in loop_tasks():
            await asyncio.wait({task})
        await watchdog.stop()


async def test_stop_gives_leadership_up_after_the_loop_was_cancelled(
    turnstore_backend: BackendHarness,
) -> None:
    release = asyncio.Event()
    watchdog, _ = await looping_in_settlement(turnstore_backend, release)
    try:
        [task] = loop_tasks()
        task.cancel()  # a host cancelling every task at shutdown
        await asyncio.wait({task})
        await watchdog.stop()
        assert not watchdog.is_leader
        other = OrphanWatchdog(turnstore_backend.store, SETTINGS)
        assert await other.elect()
        await other.stop()
    finally:
        release.set()
        await watchdog.stop()


async def test_loop_finalizes_and_stops_cleanly(turnstore_backend: BackendHarness) -> None:
    turn = await orphan(turnstore_backend)
    metrics = RecordingMetrics()
    settings = WatchdogSettings(orphan_timeout_secs=TIMEOUT, scan_interval_secs=0.01)
    watchdog = OrphanWatchdog(turnstore_backend.store, settings, metrics=metrics)
    async with watchdog:
        assert watchdog.running
        await asyncio.wait_for(metrics.finalized_event.wait(), timeout=30)
        assert watchdog.is_leader
    assert not watchdog.running
    assert not watchdog.is_leader
    assert [t.id for t in metrics.finalized] == [turn.id]
    names = [t.get_name() for t in asyncio.all_tasks()]
    assert "turnstore-orphan-watchdog" not in names


# --------------------------------------------------------------------------- leadership


async def test_two_watchdogs_never_scan_at_once(turnstore_backend: BackendHarness) -> None:
    first_orphan = await orphan(turnstore_backend)
    second_orphan = await orphan(turnstore_backend)
    in_settlement = asyncio.Event()
    release = asyncio.Event()

    async def slow_settle(runner: Any, row: Turn) -> None:
        in_settlement.set()
        await release.wait()

    store = turnstore_backend.store
    leader = OrphanWatchdog(store, SETTINGS, settlement_hook=slow_settle)
    follower = OrphanWatchdog(store, SETTINGS)
    sweep = asyncio.create_task(leader.run_once())
    try:
        await asyncio.wait_for(in_settlement.wait(), timeout=30)
        # A second scanner would wait on the row the leader's settlement holds: bound it.
        blocked = await asyncio.wait_for(follower.run_once(), timeout=30)
        assert not blocked.leader
        assert blocked.detected == ()
        assert not await follower.elect()
    finally:
        release.set()
    report = await sweep
    assert {t.id for t in report.finalized} == {first_orphan.id, second_orphan.id}
    assert await follower.elect()
    assert not await leader.elect()
    await follower.stop()
    assert await leader.elect()
    await leader.stop()


async def test_in_process_election_is_per_store() -> None:
    from turnstore.memory import InMemoryStore

    one, other = InMemoryStore(), InMemoryStore()
    first = OrphanWatchdog(one, SETTINGS)
    assert await first.elect()
    assert not await OrphanWatchdog(one, SETTINGS).elect()
    assert await OrphanWatchdog(other, SETTINGS).elect()
    await first.stop()
    assert await OrphanWatchdog(one, SETTINGS).elect()


async def leader_backend_pids(conn: psycopg.AsyncConnection[Any]) -> list[int]:
    cur = await conn.execute(
        "SELECT l.pid FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
        " WHERE l.locktype = 'advisory' AND l.granted AND a.datname = current_database()"
        " AND a.application_name = 'turnstore-watchdog'"
    )
    return [row[0] for row in await cur.fetchall()]


async def test_terminating_the_leaders_backend_hands_leadership_over(
    turnstore_postgres_store: Any, turnstore_pg_dsn: str
) -> None:
    store: PostgresStore = turnstore_postgres_store
    # The advisory-lock election, whose leadership lives in one server session.
    first = OrphanWatchdog(store, SETTINGS, election=store.advisory_lock_election())
    second = OrphanWatchdog(store, SETTINGS, election=store.advisory_lock_election())
    try:
        assert await first.elect()
        assert not await second.elect()
        async with await psycopg.AsyncConnection.connect(
            turnstore_pg_dsn, autocommit=True
        ) as admin:
            pids = await leader_backend_pids(admin)
            assert len(pids) == 1
            cur = await admin.execute("SELECT pg_terminate_backend(%s, 10000)", (pids[0],))
            row = await cur.fetchone()
            assert row is not None
            assert row[0] is True
            assert await second.elect()
            assert not await first.elect()
            assert not first.is_leader
            assert second.is_leader
            assert len(await leader_backend_pids(admin)) == 1
        turn = await start_turn(store, Chat())
        await PostgresHarness(store=store).advance_time(TIMEOUT + 1)
        assert not (await first.run_once()).leader
        report = await second.run_once()
        assert [t.id for t in report.finalized] == [turn.id]
    finally:
        await first.stop()
        await second.stop()


# --------------------------------------------------------------------------- leader session


class HoldingProxy:
    """A TCP relay to the test server that can hold back the server's replies: a session
    whose server stops answering, as on a silent network partition, without touching the
    server. Closing the client side still ends the server's session."""

    def __init__(self, dsn: str) -> None:
        params = conninfo_to_dict(dsn)
        self._dsn = dsn
        self._host = str(params.get("host") or "localhost")
        self._port = int(params.get("port") or 5432)
        self._replies = asyncio.Event()
        self._replies.set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> HoldingProxy:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._replies.set()
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        if self._tasks:
            await asyncio.wait(self._tasks)

    @property
    def dsn(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return make_conninfo(self._dsn, host="127.0.0.1", port=port)

    def hold(self) -> None:
        self._replies.clear()

    def resume(self) -> None:
        self._replies.set()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.append(writer)
        try:
            if self._host.startswith("/"):
                path = f"{self._host}/.s.PGSQL.{self._port}"
                up_reader, up_writer = await asyncio.open_unix_connection(path)
            else:
                up_reader, up_writer = await asyncio.open_connection(self._host, self._port)
            self._writers.append(up_writer)
            await asyncio.gather(
                self._pipe(reader, up_writer, None),
                self._pipe(up_reader, writer, self._replies),
                return_exceptions=True,
            )
        finally:
            self._tasks.discard(task)
            writer.close()

    @staticmethod
    async def _pipe(
        src: asyncio.StreamReader, dst: asyncio.StreamWriter, gate: asyncio.Event | None
    ) -> None:
        try:
            while data := await src.read(65536):
                if gate is not None:
                    await gate.wait()
                dst.write(data)
                await dst.drain()
        finally:
            dst.close()


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait (bounded) for a server-side effect no client event announces."""
    for _ in range(300):
        if await check():
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"never happened: {what}")


def lock_key(store: Any) -> int:
    return advisory_lock_key(store.schema)


async def test_leader_connection_is_bounded_unless_the_dsn_says_otherwise(
    turnstore_postgres_store: Any, turnstore_pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PGCONNECT_TIMEOUT", raising=False)
    key = lock_key(turnstore_postgres_store)

    async def options(dsn: str) -> dict[str, str | None]:
        election = AdvisoryLockElection.from_dsn(dsn, key)
        assert await election.acquire()
        try:
            conn = election._conn  # the dedicated session itself: what libpq really uses
            assert conn is not None
            info = {o.keyword.decode(): o.val for o in conn.pgconn.info}
            return {k: None if v is None else v.decode() for k, v in info.items()}
        finally:
            await election.release()

    defaults = await options(turnstore_pg_dsn)
    assert defaults["connect_timeout"] == "10"
    assert defaults["keepalives"] == "1"
    assert (defaults["keepalives_idle"], defaults["keepalives_interval"]) == ("30", "10")
    assert defaults["keepalives_count"] == "3"
    assert defaults["application_name"] == "turnstore-watchdog"

    own = await options(make_conninfo(turnstore_pg_dsn, connect_timeout=3, keepalives_idle=7))
    assert (own["connect_timeout"], own["keepalives_idle"]) == ("3", "7")
    assert own["keepalives_interval"] == "10"

    monkeypatch.setenv("PGCONNECT_TIMEOUT", "4")
    assert "connect_timeout" not in leader_connection_kwargs(turnstore_pg_dsn)
    assert (await options(turnstore_pg_dsn))["connect_timeout"] == "4"
    # A host pool's own connection options win over the defaults too.
    pool_kwargs = leader_connection_kwargs(turnstore_pg_dsn, {"keepalives_idle": 5})
    assert pool_kwargs["keepalives_idle"] == 5
    assert pool_kwargs["autocommit"] is True


def test_a_non_positive_check_timeout_is_refused() -> None:
    for bad in (0, -1.0):
        with pytest.raises(InvalidParameterError, match="check_timeout_secs"):
            AdvisoryLockElection.from_dsn("dbname=x", 1, check_timeout_secs=bad)


async def test_a_leader_session_that_stops_answering_loses_leadership(
    turnstore_postgres_store: Any, turnstore_pg_dsn: str
) -> None:
    key = lock_key(turnstore_postgres_store)
    async with HoldingProxy(turnstore_pg_dsn) as proxy:
        # Losing leadership, acquire() tries to win again at once: through the silent
        # proxy that attempt ends at the DSN's own connect_timeout (libpq's minimum).
        dsn = make_conninfo(proxy.dsn, connect_timeout=2)
        kwargs = leader_connection_kwargs(dsn)

        async def connect() -> psycopg.AsyncConnection[Any]:
            return await psycopg.AsyncConnection.connect(dsn, **kwargs)

        leader = AdvisoryLockElection(connect, key, check_timeout_secs=0.2)
        other = AdvisoryLockElection.from_dsn(turnstore_pg_dsn, key)
        try:
            assert await leader.acquire()
            assert not await other.acquire()
            proxy.hold()  # the server goes silent
            assert not await asyncio.wait_for(leader.acquire(), timeout=20)
            assert not leader.is_leader
            # The abandoned session was closed, so the server released the lock.
            await eventually(other.acquire, "another election wins")
        finally:
            await leader.release()
            await other.release()


async def test_cancelled_after_the_lock_was_granted_leaves_no_lock_behind(
    turnstore_postgres_store: Any, turnstore_pg_dsn: str
) -> None:
    key = lock_key(turnstore_postgres_store)
    async with (
        HoldingProxy(turnstore_pg_dsn) as proxy,
        await psycopg.AsyncConnection.connect(turnstore_pg_dsn, autocommit=True) as admin,
    ):
        kwargs = leader_connection_kwargs(proxy.dsn)
        opened: list[psycopg.AsyncConnection[Any]] = []  # kept: only the election may close

        async def connect() -> psycopg.AsyncConnection[Any]:
            conn = await psycopg.AsyncConnection.connect(proxy.dsn, **kwargs)
            opened.append(conn)
            proxy.hold()  # the server will grant the lock, its answer stays in flight
            return conn

        election = AdvisoryLockElection(connect, key, check_timeout_secs=60)
        other = AdvisoryLockElection.from_dsn(turnstore_pg_dsn, key)
        acquiring = asyncio.create_task(election.acquire())
        try:

            async def granted() -> bool:
                return len(await leader_backend_pids(admin)) == 1

            await eventually(granted, "the server granted the lock")
            acquiring.cancel()
            proxy.resume()
            with pytest.raises(asyncio.CancelledError):
                await acquiring
            assert not election.is_leader
            assert [conn.closed for conn in opened] == [True]
            await eventually(other.acquire, "another election wins")
        finally:
            proxy.resume()
            for conn in opened:
                await conn.close()
            await asyncio.wait({acquiring})
            await election.release()
            await other.release()

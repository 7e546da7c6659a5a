"""The differential property test: the in-memory fake against PostgreSQL (docs/design.md, *The
in-memory backend*).

A hypothesis state machine sends the same random calls, in the same order, to an
``InMemoryStore`` and to a ``PostgresStore`` and asserts that every result is the same on
both: returned turns field by field, rows affected, and raised errors by class, message and
the ids they carry. Timestamps cannot be equal (one clock is PostgreSQL's, the other a
``ManualClock``), so they are compared by their *order*: every pair of timestamps seen at
the same place on both backends joins one order-preserving one-to-one map, across all
values of the example.

The calls cover every repository method (lookups, pages and retention included) with ids
drawn from small pools (3 tenants plus one that owns nothing, 4 chats, a few request and
turn ids), so duplicates, running-turn conflicts, reused turn ids and out-of-scope rows are
frequent; tenant and chat are drawn independently, so tenants often share a chat id (a chat
is the pair: their keys, running turns and chat locks must stay apart); scopes of every shape
(allow-all, deny-all, per tenant, per resource, unknown properties, ORs of constraints);
autocommit calls; transactions that commit or roll back, with reads from outside the
transaction in between; time moving forward and orphan sweeps; and a few calls with bad
arguments. Ids are drawn so that calls often aim at a turn in a given state (running,
finished, deleted, deleted while running) or at the turn and chat the previous call touched.

After every step the whole table is compared, at most one running turn per chat
(tenant and chat id) is checked on both, and ``find_latest_turn`` under allow-all must agree
for every chat of every tenant; the same checks
run at the end of every transaction, through its own connections, before it commits or
rolls back.

Hypothesis state machines are synchronous: the async backends run on one event loop made
for the test, which also owns the PostgreSQL pool. Each example starts from an empty table
(``TRUNCATE``) and a fresh fake. ``TURNSTORE_HYPOTHESIS_PROFILE`` picks ``ci`` (default)
or ``thorough``.
"""

from __future__ import annotations

import asyncio
import os
from bisect import bisect_left
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar, TypeVar
from uuid import UUID

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)
from psycopg import sql
from psycopg.rows import dict_row

from strategies import (
    access_scopes,
    cas_complete_params,
    cas_terminal_params,
    create_turn_params,
    update_preflight_params,
)
from turnstore import rules
from turnstore.memory import InMemoryStore
from turnstore.model import ToolCallType, Turn, TurnState
from turnstore.paging import TurnPage
from turnstore.postgres import PostgresStore
from turnstore.scope import AccessScope
from turnstore.testing import ManualClock
from turnstore.testing.backends import MemoryHarness, PostgresHarness

T = TypeVar("T")

PROFILE_ENV = "TURNSTORE_HYPOTHESIS_PROFILE"
_BASE = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
PROFILES: dict[str, settings] = {
    # What CI runs: well under a minute on two busy cores.
    "ci": settings(_BASE, max_examples=75, stateful_step_count=30),
    # By hand, after touching either backend: several minutes.
    "thorough": settings(_BASE, max_examples=1000, stateful_step_count=60),
}

# -- the pools every id is drawn from ----------------------------------------------------

TENANTS = tuple(UUID(int=0x7E000 + n) for n in range(3))
#: A tenant that never owns a turn: scopes naming it see nothing.
STRANGER = UUID(int=0x7E0FF)
CHATS = tuple(UUID(int=0xC4A7000 + n) for n in range(4))
REQUESTS = tuple(UUID(int=0x4E9000 + n) for n in range(5))
USERS = tuple(UUID(int=0x05E4000 + n) for n in range(2))
TURN_IDS = tuple(UUID(int=0x7A4000 + n) for n in range(10))
#: Never a new turn's id: a scope or call naming it matches nothing.
UNUSED_TURN_ID = UUID(int=0x7A40FF)

#: Orphan timeouts of the calls. ``0`` makes every running, live turn a candidate.
TIMEOUTS = (0, 60, 300)
#: Time moves in whole multiples of this many seconds. PostgreSQL's clock also runs in real
#: time while an example runs (well under a second); the fake's stands still. With timeouts
#: and advances multiples of the quantum, "stale for at least the timeout" is decided the
#: same way on both unless an example ran for longer than the quantum.
TIME_QUANTUM = 10
TIMESTAMP_FIELDS = ("started_at", "last_progress_at", "completed_at", "updated_at", "deleted_at")


def _pool(values: Sequence[T]) -> st.SearchStrategy[T]:
    return st.sampled_from(list(values))


def _weighted(*choices: tuple[int, st.SearchStrategy[T]]) -> st.SearchStrategy[T]:
    """Draw from one of the strategies, picked with the given weights.

    ``one_of`` is no substitute here: it flattens nested alternatives, and it drifts
    towards the branches with the most distinct values, so that a ``just`` beside a rich
    strategy is seldom drawn.
    """
    pool = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.sampled_from(pool).flatmap(lambda strategy: strategy)


#: Ids of the turns ``create_turn`` returned (committed or rolled back since), plus one
#: never created.
created = Bundle[UUID]("created")

_tenants = _pool(TENANTS)
_any_chat = _pool(CHATS)
_requests = _pool(REQUESTS)
_new_turn_ids = _pool(TURN_IDS)


def _seen(attribute: str, otherwise: st.SearchStrategy[UUID]) -> st.SearchStrategy[UUID]:
    """An id the machine has seen lately (``attribute``), or one from ``otherwise`` while
    it has seen none: what makes calls hit rows in a given state, and one call follow up
    on the turn or chat the previous ones touched."""

    def ids(machine: DifferentialMachine) -> st.SearchStrategy[UUID]:
        seen: list[UUID] = getattr(machine, attribute)
        return _pool(seen) if seen else otherwise

    return st.runner().flatmap(ids)


_chats = _weighted(
    (3, _seen("recent_chats", _any_chat)), (2, _seen("busy_chats", _any_chat)), (1, _any_chat)
)
#: The tenant of a chat-taking call: drawn apart from the chat id, so a call often names
#: another tenant's chat id (and, now and then, a tenant that owns nothing).
_chat_tenants = _weighted(
    (3, _seen("recent_tenants", _tenants)), (2, _tenants), (1, st.just(STRANGER))
)
_stored_turn_ids = _seen("stored_ids", _new_turn_ids)
#: Turn ids, spread over the states a row can be in (running or not, deleted or not).
_turn_ids = _weighted(
    (3, _seen("recent_ids", _stored_turn_ids)),
    (1, _seen("running_ids", _stored_turn_ids)),
    # Deleted yet running: the edge of most predicates (the repository allows it).
    (3, _seen("deleted_running_ids", _stored_turn_ids)),
    (1, _seen("finished_ids", _stored_turn_ids)),
    (1, _seen("deleted_ids", _stored_turn_ids)),
    (1, created),
    (1, _new_turn_ids),
)
#: Half the time a running turn: deleting one makes a row that is running yet deleted.
_running_or_any = _weighted((1, _seen("running_ids", _turn_ids)), (1, _turn_ids))
_scoped_tenants = _pool((*TENANTS, STRANGER))
_message_ids = _pool(tuple(UUID(int=0x3E5000 + n) for n in range(3)))
_timeouts = _pool(TIMEOUTS)
_limits = st.integers(1, 4) | st.just(100)
_advances = st.integers(1, 400 // TIME_QUANTUM).map(lambda k: k * TIME_QUANTUM)

#: Any shape of scope, over ids that exist and ids that do not.
_any_scope = access_scopes(tenant_ids=_scoped_tenants, turn_ids=_turn_ids)
#: Mostly scopes that see something, so that calls do more than return nothing.
_scopes = _weighted(
    (2, st.just(AccessScope.allow_all())),
    (2, st.builds(AccessScope.for_tenant, _tenants)),
    (1, _any_scope),
)


@dataclass(frozen=True)
class Call:
    """One repository call: ``method(runner, *args)``.

    ``outside`` marks a read that a transaction step runs on an autocommit runner of its
    own while the transaction is open.
    """

    method: str
    args: tuple[Any, ...]
    outside: bool = False
    kwargs: tuple[tuple[str, Any], ...] = ()

    def __repr__(self) -> str:
        where = "outside " if self.outside else ""
        named = "".join(f", {k}={v!r}" for k, v in self.kwargs)
        return f"{where}{self.method}{self.args!r}{named}"


def _call(method: str, *args: st.SearchStrategy[Any]) -> st.SearchStrategy[Call]:
    return st.builds(Call, st.just(method), st.tuples(*args))


@st.composite
def _list_turns(draw: st.DrawFn) -> Call:
    args = (draw(_scopes), draw(_tenants), draw(_chats))
    kwargs = (
        ("limit", draw(st.integers(1, 3) | st.just(50))),
        ("include_deleted", draw(st.booleans())),
    )
    return Call("list_turns", args, kwargs=kwargs)


@st.composite
def _create_turn(draw: st.DrawFn) -> Call:
    params = draw(
        create_turn_params(
            ids=_new_turn_ids,
            tenant_ids=_tenants,
            chat_ids=_chats,
            request_ids=_requests,
            user_ids=_pool(USERS),
        )
    )
    # Mostly a scope that lets the row in; any scope sometimes (often ScopeDeniedError).
    scope = draw(
        _weighted(
            (2, st.just(AccessScope.for_tenant(params.tenant_id))),
            (1, st.just(AccessScope.allow_all())),
            (1, _any_scope),
        )
    )
    return Call("create_turn", (scope, params))


#: Arguments each backend must refuse before touching a row, with the same error.
_bad_arguments = st.one_of(
    _call("find_orphan_candidates", st.sampled_from([-1, True]), _limits),
    _call("find_orphan_candidates", _timeouts, st.sampled_from([0, -3])),
    _call("cas_finalize_orphan", _turn_ids, st.just(-60)),
    _call("find_by_chat_and_request_id", _scopes, _chat_tenants, _chats, st.just(str(REQUESTS[0]))),
    _call("increment_tool_calls", _scopes, _turn_ids, st.just("bogus")),
    _call("purge_turns", st.sampled_from([-1, True]), _limits),
    _call("touch_turns", st.sampled_from([[("allow_all", UUID(int=1))], "targets"])),
    _call("erase_tenant_turns", _tenants, st.sampled_from([0, 100_001])),
    st.builds(
        Call,
        st.just("list_turns"),
        st.tuples(_scopes, _tenants, _chats),
        kwargs=st.sampled_from([(("limit", 0),), (("before", "t1.bogus"),)]),
    ),
)


def _without_a_scope(call: Call) -> Call:
    """``call`` with its scope replaced by something that is not an ``AccessScope``."""
    not_a_scope: Any = "allow_all"
    return Call(call.method, (not_a_scope, *call.args[1:]), call.outside, call.kwargs)


#: Reads that never lock, so they can run beside an open transaction without waiting.
_reads = _weighted(
    (1, _call("find_by_chat_and_request_id", _scopes, _chat_tenants, _chats, _requests)),
    (1, _call("find_running_by_chat_id", _scopes, _chat_tenants, _chats)),
    (1, _call("find_latest_turn", _scopes, _chat_tenants, _chats)),
    (1, _call("find_orphan_candidates", _timeouts, _limits)),
    (1, _call("get_turn", _scopes, _turn_ids)),
    (1, _list_turns()),
    (1, _call("count_purgeable", _timeouts)),
    (1, _call("count_tenant_turns", _tenants)),
)

_calls = _weighted(
    (6, _create_turn()),
    (4, _reads),
    (2, _call("cas_update_state", _scopes, cas_terminal_params(turn_ids=_turn_ids))),
    (2, _call("cas_update_completed", _scopes, cas_complete_params(turn_ids=_turn_ids))),
    (1, _call("set_assistant_message_id", _scopes, _turn_ids, _message_ids)),
    (2, _call("soft_delete", _scopes, _running_or_any, st.none() | _requests)),
    (2, _call("update_progress_at", _scopes, _turn_ids)),
    (2, _call("touch_turns", st.lists(st.tuples(_scopes, _turn_ids), max_size=4))),
    (2, _call("cas_finalize_orphan", _turn_ids, _timeouts)),
    (2, _call("find_latest_for_update", _scopes, _chat_tenants, _chats)),
    (1, _call("update_preflight_fields", _scopes, update_preflight_params(turn_ids=_turn_ids))),
    (2, _call("increment_tool_calls", _scopes, _turn_ids, _pool(list(ToolCallType)))),
    (1, _bad_arguments),
)
#: Any scoped call, but with a scope of the wrong type.
_bad_scopes = _calls.filter(lambda c: bool(c.args) and isinstance(c.args[0], AccessScope)).map(
    _without_a_scope
)

#: Retention deletes, in autocommit as ``turnstore.retention`` runs them (the fake cannot
#: insert a row over one its own open transaction deleted; see ``turnstore.memory``).
_deletes = _weighted(
    (1, _call("purge_turns", _timeouts, _limits)),
    (1, _call("erase_tenant_turns", _tenants, _limits)),
)
_autocommit_calls = _weighted((10, _calls), (1, _bad_scopes), (1, _deletes))
_transaction_calls = _weighted(
    (8, _calls),
    (2, _reads.map(lambda c: Call(c.method, c.args, True, c.kwargs))),
    (1, _bad_scopes),
)


# -- comparing results --------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What a call did: returned ``value``, or raised ``error``."""

    value: Any = None
    error: BaseException | None = None

    def __repr__(self) -> str:
        if self.error is not None:
            return f"raised {type(self.error).__name__}({self.error})"
        return f"returned {self.value!r}"


class TimestampOrder:
    """An order-preserving one-to-one map between the fake's and PostgreSQL's timestamps.

    ``pair(f, p)`` says that ``f`` (fake) and ``p`` (PostgreSQL) stand at the same place in
    two results. Both sorted lists are kept index-aligned; a pair is consistent when both
    are already paired with each other, or both are new and land at the same index (so
    every timestamp seen before is on the same side of ``f`` as of ``p``).
    """

    def __init__(self) -> None:
        self.fake: list[datetime] = []
        self.pg: list[datetime] = []

    def pair(self, f: datetime, p: datetime, where: str) -> None:
        i = bisect_left(self.fake, f)
        j = bisect_left(self.pg, p)
        f_known = i < len(self.fake) and self.fake[i] == f
        p_known = j < len(self.pg) and self.pg[j] == p
        if f_known or p_known:
            if not (f_known and p_known and i == j):
                raise AssertionError(
                    f"{where}: timestamps out of step: fake {f} (seen before: {f_known}) vs "
                    f"PostgreSQL {p} (seen before: {p_known})"
                )
            return
        if i != j:
            raise AssertionError(
                f"{where}: timestamp order differs: fake {f} ranks {i} of {len(self.fake)}, "
                f"PostgreSQL {p} ranks {j} of {len(self.pg)}"
            )
        self.fake.insert(i, f)
        self.pg.insert(j, p)


def _without_timestamps(turn: Turn) -> dict[str, Any]:
    return {k: v for k, v in turn.model_dump().items() if k not in TIMESTAMP_FIELDS}


class DifferentialMachine(RuleBasedStateMachine):
    """Drives a fake and a PostgreSQL store with the same calls and compares everything."""

    #: Set by the test on a subclass: the event loop every call runs on, and the open
    #: PostgreSQL store (its pool lives on that loop).
    loop: ClassVar[asyncio.AbstractEventLoop]
    pg: ClassVar[PostgresStore]

    def __init__(self) -> None:
        super().__init__()
        pg = self.pg
        self.clock = ManualClock()
        self.mem = InMemoryStore(clock=self.clock)
        self.mem_harness = MemoryHarness(store=self.mem, clock=self.clock)
        self.pg_harness = PostgresHarness(store=pg, schema=pg.schema)
        self.table = sql.Identifier(pg.schema, "chat_turns")
        # PostgreSQL's timestamps, once read, are shifted back by every later advance_time;
        # adding the shift made so far gives each stored instant one stable value.
        self.pg_shift = timedelta(0)
        self.order = TimestampOrder()
        # What the fake's table held after the last step, for the strategies to aim at.
        self.stored_ids: list[UUID] = []
        self.running_ids: list[UUID] = []
        self.deleted_running_ids: list[UUID] = []
        self.finished_ids: list[UUID] = []
        self.deleted_ids: list[UUID] = []
        self.busy_chats: list[UUID] = []
        # The turns and chats the last few calls named or returned.
        self.recent_ids: list[UUID] = []
        self.recent_chats: list[UUID] = []
        self.recent_tenants: list[UUID] = []
        self._run(self._truncate())

    def _run(self, coro: Awaitable[T]) -> T:
        async def wrapped() -> T:
            return await coro

        return self.loop.run_until_complete(wrapped())

    async def _truncate(self) -> None:
        async with self.pg.connection() as conn:
            await conn.execute(sql.SQL("TRUNCATE {}").format(self.table))

    def teardown(self) -> None:
        self._run(self.mem.close())

    # -- comparison -----------------------------------------------------------------------

    def _compare_turns(self, fake: Turn | None, pg: Turn | None, where: str) -> None:
        if fake is None or pg is None:
            assert fake is pg, f"{where}: fake {fake!r} vs PostgreSQL {pg!r}"
            return
        fake_fields, pg_fields = _without_timestamps(fake), _without_timestamps(pg)
        assert fake_fields == pg_fields, (
            f"{where}: rows differ:\n  fake       {fake_fields}\n  PostgreSQL {pg_fields}"
        )
        for name in TIMESTAMP_FIELDS:
            f, p = getattr(fake, name), getattr(pg, name)
            if f is None or p is None:
                assert f is p, f"{where}: {name}: fake {f} vs PostgreSQL {p}"
                continue
            self.order.pair(f, p + self.pg_shift, f"{where}: {name} of {fake.id}")

    def _compare_values(self, fake: Any, pg: Any, where: str) -> None:
        if isinstance(fake, TurnPage) and isinstance(pg, TurnPage):
            # A cursor holds a timestamp (each backend's own clock): compare whether one
            # is there, and the turns.
            message = (
                f"{where}: next page: fake {fake.next_cursor!r}, PostgreSQL {pg.next_cursor!r}"
            )
            assert (fake.next_cursor is None) == (pg.next_cursor is None), message
            self._compare_values(fake.turns, pg.turns, where)
        elif isinstance(fake, list) and all(isinstance(x, bool) for x in (*fake, *pg)):
            # touch_turns: one answer per target.
            assert fake == pg, f"{where}: fake touched {fake}, PostgreSQL {pg}"
        elif isinstance(fake, list) and isinstance(pg, list):
            assert [t.id for t in fake] == [t.id for t in pg], (
                f"{where}: lists differ: fake {[t.id for t in fake]} vs "
                f"PostgreSQL {[t.id for t in pg]}"
            )
            for f, p in zip(fake, pg, strict=True):
                self._compare_turns(f, p, where)
        elif isinstance(fake, Turn) or isinstance(pg, Turn):
            self._compare_turns(fake, pg, where)
        else:
            message = f"{where}: fake returned {fake!r}, PostgreSQL {pg!r}"
            assert type(fake) is type(pg), message
            assert fake == pg, message

    def _compare(self, call: Call, fake: Outcome, pg: Outcome) -> list[UUID]:
        """Assert that both outcomes are the same; return the id of a turn created."""
        self._remember(call, fake)
        where = repr(call)
        if fake.error is None and pg.error is None:
            self._compare_values(fake.value, pg.value, where)
            return [fake.value.id] if call.method == "create_turn" else []
        message = f"{where}: fake {fake!r}, PostgreSQL {pg!r}"
        assert type(fake.error) is type(pg.error), message
        assert str(fake.error) == str(pg.error), message
        # The ids an error carries (existing_turn_id, running_turn_id, ...).
        assert vars(fake.error) == vars(pg.error), (
            f"{where}: error attributes differ: fake {vars(fake.error)}, "
            f"PostgreSQL {vars(pg.error)}"
        )
        return []

    def _remember(self, call: Call, outcome: Outcome) -> None:
        """Note the turns and chats ``call`` named or returned, for the next draws."""
        values: list[Any] = [*call.args]
        if isinstance(outcome.value, TurnPage):
            values += outcome.value.turns
        elif isinstance(outcome.value, list):
            values += outcome.value
        elif outcome.value is not None:
            values.append(outcome.value)
        ids: list[UUID] = []
        chats: list[UUID] = []
        tenants: list[UUID] = []
        for value in values:
            for name in ("id", "turn_id"):
                if isinstance(found := getattr(value, name, None), UUID):
                    ids.append(found)
            if isinstance(found := getattr(value, "chat_id", None), UUID):
                chats.append(found)
            if isinstance(found := getattr(value, "tenant_id", None), UUID):
                tenants.append(found)
            if isinstance(value, UUID) and value in _TURN_ID_SET:
                ids.append(value)
            elif isinstance(value, UUID) and value in _CHAT_SET:
                chats.append(value)
            elif isinstance(value, UUID) and value in _TENANT_SET:
                tenants.append(value)
        self.recent_ids = _newest(self.recent_ids, ids)
        self.recent_chats = _newest(self.recent_chats, chats)
        self.recent_tenants = _newest(self.recent_tenants, tenants)

    def _note_states(self, turns: list[Turn]) -> None:
        """Sort the fake's rows by state, for the strategies to aim at each kind."""

        def ids(keep: Callable[[Turn], bool]) -> list[UUID]:
            return sorted(t.id for t in turns if keep(t))

        self.stored_ids = ids(lambda t: True)
        self.running_ids = ids(rules.holds_running_slot)
        self.deleted_running_ids = ids(lambda t: t.state is TurnState.RUNNING and t.is_deleted)
        self.finished_ids = ids(lambda t: t.is_terminal and not t.is_deleted)
        self.deleted_ids = ids(lambda t: t.is_terminal and t.is_deleted)
        self.busy_chats = sorted({t.chat_id for t in turns})

    # -- running calls --------------------------------------------------------------------

    @staticmethod
    async def _invoke(store: Any, runner: Any, call: Call) -> Outcome:
        method: Callable[..., Awaitable[Any]] = getattr(store.turns, call.method)
        try:
            return Outcome(value=await method(runner, *call.args, **dict(call.kwargs)))
        except Exception as exc:
            return Outcome(error=exc)

    @staticmethod
    async def _invoke_outside(store: Any, call: Call) -> Outcome:
        async with store.connection() as runner:
            return await DifferentialMachine._invoke(store, runner, call)

    async def _autocommit(self, call: Call) -> list[UUID]:
        fake = await self._invoke_outside(self.mem, call)
        pg = await self._invoke_outside(self.pg, call)
        return self._compare(call, fake, pg)

    async def _transaction(self, data: st.DataObject, size: int, commit: bool) -> list[UUID]:
        created: list[UUID] = []
        try:
            async with AsyncExitStack() as stack:
                mem_runner = await stack.enter_async_context(self.mem.transaction())
                pg_runner = await stack.enter_async_context(self.pg.transaction())
                for _ in range(size):
                    # Drawn one at a time, so that a call can follow up on the previous.
                    call = data.draw(_transaction_calls, label="call")
                    if call.outside:
                        fake = await self._invoke_outside(self.mem, call)
                        pg = await self._invoke_outside(self.pg, call)
                    else:
                        fake = await self._invoke(self.mem, mem_runner, call)
                        pg = await self._invoke(self.pg, pg_runner, call)
                    created += self._compare(call, fake, pg)
                # What the transaction wrote, seen from inside, before it commits or
                # rolls back (a rollback would hide a difference from the invariants).
                await self._compare_tables(mem_runner, pg_runner, "inside the transaction")
                await self._compare_latest(mem_runner, pg_runner, "inside the transaction")
                if not commit:
                    raise _Rollback
        except _Rollback:
            pass
        return created

    # -- rules ----------------------------------------------------------------------------

    @initialize(target=created)
    def a_turn_that_never_exists(self) -> UUID:
        return UNUSED_TURN_ID

    @rule(target=created, call=_autocommit_calls)
    def autocommit(self, call: Call) -> MultipleResults[UUID]:
        """One call outside any transaction: atomic on its own on both backends."""
        return multiple(*self._run(self._autocommit(call)))

    @rule(target=created, data=st.data(), size=st.integers(1, 6), commit=st.booleans())
    def transaction(self, data: st.DataObject, size: int, commit: bool) -> MultipleResults[UUID]:
        """A few calls in one transaction on each backend, then commit or roll back."""
        return multiple(*self._run(self._transaction(data, size, commit)))

    @rule(seconds=_advances)
    def advance_time(self, seconds: int) -> None:
        """Let time pass for every stored turn on both backends."""
        self._run(self.mem_harness.advance_time(seconds))
        self._run(self.pg_harness.advance_time(seconds))
        self.pg_shift += timedelta(seconds=seconds)

    # -- invariants -----------------------------------------------------------------------

    async def _fake_rows(self, runner: Any) -> dict[tuple[UUID, UUID, UUID], Turn]:
        """Every row of the fake as ``runner`` sees it: a turn's (tenant, chat, request) is
        unique and drawn from the pools, so looking up every triple finds them all."""
        rows: dict[tuple[UUID, UUID, UUID], Turn] = {}
        everything = AccessScope.allow_all()
        for tenant_id in TENANTS:
            for chat_id in CHATS:
                for request_id in REQUESTS:
                    turn = await self.mem.turns.find_by_chat_and_request_id(
                        runner, everything, tenant_id, chat_id, request_id
                    )
                    if turn is not None:
                        rows[(tenant_id, chat_id, request_id)] = turn
        return rows

    async def _pg_rows(self, conn: Any) -> dict[tuple[UUID, UUID, UUID], Turn]:
        """Every row of the PostgreSQL table as ``conn`` sees it, read past the repository."""
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(sql.SQL("SELECT * FROM {}").format(self.table))
        turns = [Turn.model_validate(row) for row in await cur.fetchall()]
        return {(t.tenant_id, t.chat_id, t.request_id): t for t in turns}

    async def _compare_tables(self, mem_runner: Any, pg_conn: Any, where: str) -> list[Turn]:
        """Assert that both tables hold the same rows; return the fake's."""
        fake_rows = await self._fake_rows(mem_runner)
        pg_rows = await self._pg_rows(pg_conn)
        assert sorted(fake_rows) == sorted(pg_rows), (
            f"{where}: different (tenant, chat, request) keys: fake {sorted(fake_rows)}, "
            f"PostgreSQL {sorted(pg_rows)}"
        )
        for key in sorted(fake_rows):
            self._compare_turns(fake_rows[key], pg_rows[key], f"{where}: row {key}")
        for name, rows in (("fake", fake_rows), ("PostgreSQL", pg_rows)):
            running = Counter(
                (t.tenant_id, t.chat_id) for t in rows.values() if rules.holds_running_slot(t)
            )
            assert all(n <= 1 for n in running.values()), f"{where}: {name}: running {running}"
        return list(fake_rows.values())

    async def _compare_committed_tables(self) -> list[Turn]:
        async with self.mem.connection() as mem_runner, self.pg.connection() as pg_conn:
            return await self._compare_tables(mem_runner, pg_conn, "stored")

    async def _compare_latest(self, mem_runner: Any, pg_conn: Any, where: str) -> None:
        """Assert that ``find_latest_turn`` under allow-all agrees for every chat."""
        everything = AccessScope.allow_all()
        for tenant_id in TENANTS:
            for chat_id in CHATS:
                fake = await self.mem.turns.find_latest_turn(
                    mem_runner, everything, tenant_id, chat_id
                )
                pg = await self.pg.turns.find_latest_turn(pg_conn, everything, tenant_id, chat_id)
                self._compare_turns(
                    fake, pg, f"{where}: latest turn of chat {chat_id} of tenant {tenant_id}"
                )

    async def _compare_committed_latest(self) -> None:
        async with self.mem.connection() as mem_runner, self.pg.connection() as pg_conn:
            await self._compare_latest(mem_runner, pg_conn, "stored")

    @invariant()
    def same_rows_everywhere(self) -> None:
        """The two tables hold the same rows, and both keep one running turn per chat."""
        self._note_states(self._run(self._compare_committed_tables()))

    @invariant()
    def same_latest_turn_of_every_chat(self) -> None:
        """``find_latest_turn`` under allow-all agrees for every chat."""
        self._run(self._compare_committed_latest())


_TURN_ID_SET = frozenset(TURN_IDS)
_CHAT_SET = frozenset(CHATS)
_TENANT_SET = frozenset((*TENANTS, STRANGER))
#: How many recently touched turns and chats the machine remembers.
_RECENT = 3


def _newest(old: list[UUID], new: list[UUID]) -> list[UUID]:
    """The ``_RECENT`` newest distinct ids of ``old`` followed by ``new``."""
    merged = [i for i in old if i not in new] + list(dict.fromkeys(new))
    return merged[-_RECENT:]


class _Rollback(Exception):
    """Raised inside a transaction step to roll both transactions back."""


def _profile() -> settings:
    name = os.environ.get(PROFILE_ENV, "ci")
    if name not in PROFILES:
        raise pytest.UsageError(f"{PROFILE_ENV}={name!r}: choose one of {sorted(PROFILES)}")
    return PROFILES[name]


def test_fake_and_postgres_agree(turnstore_pg_dsn: str, turnstore_schema: str) -> None:
    """Every call gives the same result on the fake and on PostgreSQL."""
    loop = asyncio.new_event_loop()
    try:
        pg = loop.run_until_complete(
            PostgresStore.open(turnstore_pg_dsn, schema=turnstore_schema, min_size=2, max_size=4)
        )
        try:

            class OnThisServer(DifferentialMachine):
                pass

            OnThisServer.loop, OnThisServer.pg = loop, pg
            run_state_machine_as_test(OnThisServer, settings=_profile())
        finally:
            loop.run_until_complete(pg.close())
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

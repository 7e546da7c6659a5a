"""Record the SQL a turnstore call sends, then replay it with plain psycopg or pgbench.

The baselines must run *the same SQL* as turnstore, and no hand copy of it may drift from
the library. So a call is made once on a connection whose cursors record every
``execute`` (query rendered to text, parameters, prepare and binary flags). Values that
change from one call to the next (a new turn id, another chat) are passed in as *sentinels*
during the recording; a replay maps each sentinel to the value of the round at hand.

- ``Recording.replay`` runs the statements with plain ``AsyncConnection.execute``, fetching
  rows when there are any: what hand-written psycopg code does.
- ``Recording.pgbench_commands`` renders them as a pgbench script: each sentinel becomes a
  pgbench variable drawn at random per transaction (``md5(:var::text)::uuid``), every other
  value an SQL literal, so pgbench's prepared statements match turnstore's statement for
  statement.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, cast
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.abc import Params, Query

__all__ = ["Recording", "RecordingCursor", "Statement", "recording"]

_LOG: ContextVar[list[Statement] | None] = ContextVar("turnstore_bench_log", default=None)
_COMMENT = re.compile(r"--[^\n]*")
_PLACEHOLDER = re.compile(r"%(?:\((?P<name>[^)]+)\))?(?P<fmt>[sbt%])")


@dataclass(frozen=True)
class Statement:
    """One ``execute`` as the library made it."""

    query: str
    params: Params | None
    prepare: bool | None
    binary: bool
    #: Sent inside ``conn.pipeline()``, batched with its neighbours in one round trip.
    pipelined: bool = False
    #: Whether it returned rows (then a replay fetches them, as the library did).
    returns_rows: bool = False


class RecordingCursor(psycopg.AsyncCursor[Any]):
    """A plain cursor that also notes each ``execute`` while a recording is active."""

    async def execute(
        self,
        query: Query,
        params: Params | None = None,
        *,
        prepare: bool | None = None,
        binary: bool | None = None,
    ) -> RecordingCursor:
        # Template queries (t-strings) take no parameters; turnstore sends none.
        await super().execute(cast(Any, query), params, prepare=prepare, binary=binary)
        log = _LOG.get()
        if log is not None:
            text = _render(query, self.connection)
            pipelined = self.connection.pgconn.pipeline_status != psycopg.pq.PipelineStatus.OFF
            is_binary = binary if binary is not None else self.format == psycopg.pq.Format.BINARY
            # In a pipeline the result has not arrived yet; there a SELECT returns rows.
            rows = (
                text.lstrip().upper().startswith("SELECT")
                if pipelined
                else self.description is not None
            )
            log.append(Statement(text, params, prepare, bool(is_binary), pipelined, rows))
        return self


def _render(query: Query, conn: psycopg.AsyncConnection[Any]) -> str:
    if isinstance(query, sql.Composable):
        return query.as_string(conn)
    if isinstance(query, bytes):
        return query.decode()
    return str(query)


@contextmanager
def recording() -> Iterator[list[Statement]]:
    """Collect the statements executed by recording cursors in this context."""
    log: list[Statement] = []
    token = _LOG.set(log)
    try:
        yield log
    finally:
        _LOG.reset(token)


def _substitute(value: Any, mapping: Mapping[Any, Any]) -> Any:
    if isinstance(value, (list, tuple)):
        return type(value)(_substitute(v, mapping) for v in value)
    if isinstance(value, UUID):
        return mapping.get(value, value)
    return value


#: Where a parameter comes from in a replay: a sentinel's name, or ``None`` for a constant.
_Slot = tuple[str | None, Any]


def _slots(params: Params | None, by_value: Mapping[UUID, str]) -> list[_Slot] | None:
    """A per-parameter recipe, or ``None`` when a sentinel hides inside a list or a
    mapping (then the generic substitution runs)."""
    if params is None or isinstance(params, Mapping):
        return None
    slots: list[_Slot] = []
    for value in params:
        if isinstance(value, UUID) and value in by_value:
            slots.append((by_value[value], None))
        elif isinstance(value, (list, tuple)) and any(v in by_value for v in value):
            return None
        else:
            slots.append((None, value))
    return slots


@dataclass(frozen=True)
class Recording:
    """The statements of one call, with the sentinel values that vary per call."""

    statements: tuple[Statement, ...]
    sentinels: Mapping[str, UUID]
    _recipes: tuple[list[_Slot] | None, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_value = {value: name for name, value in self.sentinels.items()}
        recipes = tuple(_slots(st.params, by_value) for st in self.statements)
        object.__setattr__(self, "_recipes", recipes)

    @property
    def queries(self) -> list[str]:
        return [s.query for s in self.statements]

    def params_for(self, values: Mapping[str, UUID]) -> list[Params | None]:
        """Each statement's parameters with the sentinels replaced by ``values``.

        Kept lean (a list built from a precomputed recipe) so the baseline pays no more
        than hand-written code building its parameter list.
        """
        out: list[Params | None] = []
        mapping: dict[UUID, UUID] | None = None
        for st, recipe in zip(self.statements, self._recipes, strict=True):
            if recipe is not None:
                out.append([values[name] if name is not None else c for name, c in recipe])
                continue
            if mapping is None:
                mapping = {self.sentinels[name]: value for name, value in values.items()}
            if isinstance(st.params, Mapping):
                out.append({k: _substitute(v, mapping) for k, v in st.params.items()})
            elif st.params is not None:
                out.append([_substitute(v, mapping) for v in st.params])
            else:
                out.append(None)
        return out

    async def replay(self, conn: psycopg.AsyncConnection[Any], values: Mapping[str, UUID]) -> None:
        """Run the statements on ``conn`` as hand-written psycopg code would: one round trip
        each, except statements the library pipelined, which go out together again."""
        batch: list[tuple[Statement, Params | None]] = []
        for st, params in zip(self.statements, self.params_for(values), strict=True):
            if st.pipelined:
                batch.append((st, params))
                continue
            if batch:
                await _pipelined(conn, batch)
                batch = []
            cur = await conn.execute(st.query, params, prepare=st.prepare, binary=st.binary)
            if st.returns_rows:
                await cur.fetchall()
        if batch:
            await _pipelined(conn, batch)

    def without(self, *names: str) -> Recording:
        """The same statements with fewer sentinels (the named values stay constants)."""
        kept = {k: v for k, v in self.sentinels.items() if k not in names}
        return Recording(self.statements, kept)

    def pgbench_commands(self, conn: psycopg.Connection[Any]) -> list[str]:
        """The statements as pgbench SQL commands (sentinels become ``:name`` variables)."""
        by_value = {value: name for name, value in self.sentinels.items()}
        return [_pgbench_command(st, by_value, conn) for st in self.statements]


async def _pipelined(
    conn: psycopg.AsyncConnection[Any], batch: list[tuple[Statement, Params | None]]
) -> None:
    cursors = [conn.cursor() for _ in batch]
    async with conn.pipeline():
        for cur, (st, params) in zip(cursors, batch, strict=True):
            await cur.execute(st.query, params, prepare=st.prepare, binary=st.binary)
    for cur, (st, _) in zip(cursors, batch, strict=True):
        if st.returns_rows:
            await cur.fetchall()


def _pgbench_command(
    st: Statement, by_value: Mapping[UUID, str], conn: psycopg.Connection[Any]
) -> str:
    positional: Sequence[Any] = () if isinstance(st.params, Mapping) else (st.params or ())
    named: Mapping[str, Any] = st.params if isinstance(st.params, Mapping) else {}
    index = 0

    def token(value: Any) -> str:
        if isinstance(value, UUID) and value in by_value:
            return f"md5(:{by_value[value]}::text)::uuid"
        if isinstance(value, (list, tuple)):
            return "ARRAY[" + ", ".join(token(v) for v in value) + "]"
        return sql.Literal(value).as_string(conn)

    def replace(match: re.Match[str]) -> str:
        nonlocal index
        if match.group("fmt") == "%":
            return "%"
        if match.group("name") is not None:
            return token(named[match.group("name")])
        value = positional[index]
        index += 1
        return token(value)

    text = _PLACEHOLDER.sub(replace, _COMMENT.sub("", st.query)).strip()
    text = " ".join(text.split())
    return text if text.endswith(";") else text + ";"

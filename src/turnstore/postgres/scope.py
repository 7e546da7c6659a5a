"""Scope compilation: an ``AccessScope`` as a boolean SQL expression over ``chat_turns``.

``compile_scope`` turns a scope into SQL text plus its parameters; ``CompiledScope`` keeps
that result for one scope object together with the statements already rendered around
it, so a request that passes the same scope object to every call compiles it once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg import sql

from turnstore.model import check_scope
from turnstore.scope import PROPERTY_COLUMNS, AccessScope, FilterOp

__all__ = [
    "SCOPE_CACHE_SIZE",
    "SCOPE_MARK",
    "CompiledScope",
    "ScopedStatement",
    "compile_scope",
]

#: Scope objects a repository keeps compiled; past this many it starts over (scopes are
#: per request, so an old one is rarely seen again).
SCOPE_CACHE_SIZE = 256

#: Where a rendered statement is split for its scope expression (see ``ScopedStatement``).
SCOPE_MARK = "\x00scope\x00"

_SCOPE_COLUMN_SQL: dict[str, str] = {
    prop: sql.Identifier(col).as_string(None) for prop, col in PROPERTY_COLUMNS.items()
}
_UNRESTRICTED: tuple[str, tuple[Any, ...]] = ("TRUE", ())
_NOTHING: tuple[str, tuple[Any, ...]] = ("FALSE", ())


def compile_scope(scope: AccessScope) -> tuple[str, tuple[Any, ...]]:
    """Compile ``scope`` to a boolean SQL expression over ``chat_turns`` and its parameters.

    Mirrors ``AccessScope.permits``: unrestricted is ``TRUE``; an OR of constraints, each an
    AND of ``col = %s`` / ``col = ANY(%s)``; a constraint naming an unknown property or an
    empty ``IN`` matches nothing and is dropped; nothing left is ``FALSE``. Column names
    come from a fixed table, values are always parameters.
    """
    check_scope(scope)
    if scope.unrestricted:
        return _UNRESTRICTED
    ors: list[str] = []
    params: list[Any] = []
    for constraint in scope.constraints:
        ands: list[str] = []
        values: list[Any] = []
        for f in constraint.filters:
            column = _SCOPE_COLUMN_SQL.get(f.name)
            if column is None or not f.values:
                break
            if f.op is FilterOp.EQ:
                ands.append(column + " = %s")
                values.append(f.values[0])
            else:
                ands.append(column + " = ANY(%s)")
                values.append(list(f.values))
        else:
            ors.append(" AND ".join(ands))
            params.extend(values)
    if not ors:
        return _NOTHING
    return "(" + ") OR (".join(ors) + ")", tuple(params)


@dataclass(frozen=True, eq=False)
class ScopedStatement:
    """A rendered statement split around its scope placeholder (hashed by identity: it is
    a key of every ``CompiledScope.rendered``)."""

    head: str
    tail: str

    def render(self, scope_sql: str) -> str:
        return self.head + scope_sql + self.tail


class CompiledScope:
    """One scope object compiled once, with the statements rendered around it so far.

    A host builds a scope per request and passes that object to every call of the request,
    so compiling and rendering per scope object, not per call, leaves each call a dict
    lookup; the same ``str`` object each time also keeps psycopg's query cache lookups
    cheap (its hash is computed once).
    """

    __slots__ = ("params", "rendered", "scope", "sql")

    def __init__(self, scope: AccessScope) -> None:
        self.sql, self.params = compile_scope(scope)
        # Held so that ``id(scope)``, the cache key, cannot be reused while cached.
        self.scope = scope
        self.rendered: dict[ScopedStatement, str] = {}

    def statement(self, scoped: ScopedStatement) -> str:
        text = self.rendered.get(scoped)
        if text is None:
            text = self.rendered[scoped] = scoped.render(self.sql)
        return text

"""Access scopes: which turns a caller may read or change (docs/design.md, *Access scopes*).

An ``AccessScope`` is an OR of ``ScopeConstraint``; a constraint is an AND of
``ScopeFilter``; a filter is ``property = value`` or ``property IN (values)``. The known
properties are ``owner_tenant_id`` (column ``tenant_id``) and ``id`` (column ``id``). A
constraint that names any other property matches nothing (fails closed). The default
scope, ``AccessScope()``, is deny-all.

Every model here is strict (docs/security.md, *What a scope guarantees*): ids are
``uuid.UUID`` objects and ``unrestricted`` is a real ``bool``, even when a caller asks
pydantic for lax validation; only JSON text (``model_validate_json``) may give ids as UUID
strings. ``"yes"``, ``1`` or ``"true"`` never make a scope unrestricted.

``permits`` is the pure reference semantics; the PostgreSQL backend compiles the same
structure to a WHERE clause with bound parameters, and the in-memory fake calls ``permits``.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum
from typing import Annotated, Any, Protocol
from uuid import UUID

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from turnstore.errors import InvalidParameterError
from turnstore.validation import ExactBool, Id, check_instance, check_uuid

__all__ = [
    "MAX_SCOPE_CONSTRAINTS",
    "MAX_SCOPE_FILTERS",
    "PROPERTY_COLUMNS",
    "AccessScope",
    "MAX_TOUCH_TARGETS",
    "FilterOp",
    "ScopeConstraint",
    "ScopeFilter",
    "ScopedRow",
    "check_scope",
    "check_touch_targets",
]

#: The most constraints one scope holds, and filters one constraint holds: on PostgreSQL
#: each filter is one bound value (an ``IN`` filter one array, however many ids it names),
#: so a scope stays far below the 65,535 values a statement can carry. Name many turns or
#: tenants with one ``IN`` filter (``for_resources``, ``for_tenants``) instead.
MAX_SCOPE_CONSTRAINTS = 1000
MAX_SCOPE_FILTERS = 16

#: The scope properties turnstore knows, and the ``chat_turns`` column each one reads.
PROPERTY_COLUMNS: dict[str, str] = {"owner_tenant_id": "tenant_id", "id": "id"}


class ScopedRow(Protocol):
    """What a scope reads of a row: a ``Turn``, or the ``CreateTurnParams`` of a new one."""

    @property
    def id(self) -> UUID: ...

    @property
    def tenant_id(self) -> UUID: ...


def _list_as_tuple(value: object) -> object:
    """Strict mode takes only tuples for a tuple field; a list is the same sequence."""
    return tuple(value) if isinstance(value, list) else value


_Ids = Annotated[tuple[Id, ...], BeforeValidator(_list_as_tuple)]


class FilterOp(str, Enum):
    EQ = "eq"
    IN = "in"


class ScopeFilter(BaseModel):
    """``name = value`` (``op=eq``, one value) or ``name IN (values)``, where ``name`` is a
    scope property such as ``owner_tenant_id``."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    name: str = Field(min_length=1)
    # The operator may be given by its value ("eq", "in"): a closed set, nothing to coerce.
    op: Annotated[FilterOp, Field(strict=False)]
    values: _Ids

    @model_validator(mode="after")
    def _eq_has_one_value(self) -> ScopeFilter:
        if self.op is FilterOp.EQ and len(self.values) != 1:
            raise ValueError(f"an 'eq' filter takes exactly one value, got {len(self.values)}")
        return self

    @classmethod
    def eq(cls, property: str, value: UUID) -> ScopeFilter:
        return cls(name=property, op=FilterOp.EQ, values=(value,))

    @classmethod
    def in_(cls, property: str, values: Iterable[UUID]) -> ScopeFilter:
        return cls(name=property, op=FilterOp.IN, values=tuple(values))

    @property
    def column(self) -> str | None:
        """The column this filter reads, or ``None`` for an unknown property."""
        return PROPERTY_COLUMNS.get(self.name)

    def matches(self, turn: ScopedRow) -> bool:
        column = self.column
        if column is None:
            return False
        value: UUID = getattr(turn, column)
        return value in self.values


class ScopeConstraint(BaseModel):
    """An AND of filters. It must name at least one filter: an empty AND would match
    everything, which is what ``AccessScope.allow_all()`` is for."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    filters: Annotated[tuple[ScopeFilter, ...], BeforeValidator(_list_as_tuple)] = Field(
        min_length=1, max_length=MAX_SCOPE_FILTERS
    )

    def __init__(self, filters: Iterable[ScopeFilter] | None = None, /, **data: Any) -> None:
        # Positional for callers; by keyword for pydantic itself, which calls this
        # __init__ when it validates a nested constraint (model_validate, JSON).
        if filters is not None:
            data["filters"] = tuple(filters)
        super().__init__(**data)

    @property
    def is_satisfiable(self) -> bool:
        """False when a filter names an unknown property or an empty ``IN``."""
        return all(f.column is not None and f.values for f in self.filters)

    def matches(self, turn: ScopedRow) -> bool:
        # Loops rather than all()/any() over a generator (about half the cost): the fake
        # checks a scope on every call.
        for scope_filter in self.filters:  # noqa: SIM110
            if not scope_filter.matches(turn):
                return False
        return True


def _parse_json_ids(constraint: object) -> object:
    """A constraint decoded from JSON, with each filter's UUID strings parsed."""
    if not isinstance(constraint, dict) or not isinstance(constraint.get("filters"), list):
        return constraint
    filters = []
    for f in constraint["filters"]:
        if isinstance(f, dict) and isinstance(f.get("values"), list):
            f = {**f, "values": [UUID(v) if isinstance(v, str) else v for v in f["values"]]}
        filters.append(f)
    return {**constraint, "filters": filters}


class AccessScope(BaseModel):
    """An OR of constraints, or unrestricted. ``AccessScope()`` permits nothing."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    constraints: Annotated[tuple[ScopeConstraint, ...], BeforeValidator(_list_as_tuple)] = Field(
        default=(), max_length=MAX_SCOPE_CONSTRAINTS
    )
    unrestricted: ExactBool = False

    @field_validator("constraints", mode="before")
    @classmethod
    def _ids_from_json(cls, value: object, info: ValidationInfo) -> object:
        """From JSON text, filter values are UUID strings: parse them here, because
        ``ScopeConstraint`` (which has an ``__init__`` of its own) validates its filters as
        Python objects, where a string is refused."""
        if info.mode != "json" or not isinstance(value, list):
            return value
        return [_parse_json_ids(constraint) for constraint in value]

    @classmethod
    def allow_all(cls) -> AccessScope:
        """No filtering at all: for trusted system code only."""
        return cls(unrestricted=True)

    @classmethod
    def deny_all(cls) -> AccessScope:
        return cls()

    @classmethod
    def for_tenant(cls, tenant_id: UUID) -> AccessScope:
        return cls.from_constraints(
            [ScopeConstraint([ScopeFilter.eq("owner_tenant_id", tenant_id)])]
        )

    @classmethod
    def for_tenants(cls, tenant_ids: Iterable[UUID]) -> AccessScope:
        return cls.from_constraints(
            [ScopeConstraint([ScopeFilter.in_("owner_tenant_id", tenant_ids)])]
        )

    @classmethod
    def for_resource(cls, turn_id: UUID) -> AccessScope:
        return cls.from_constraints([ScopeConstraint([ScopeFilter.eq("id", turn_id)])])

    @classmethod
    def for_resources(cls, turn_ids: Iterable[UUID]) -> AccessScope:
        return cls.from_constraints([ScopeConstraint([ScopeFilter.in_("id", turn_ids)])])

    @classmethod
    def from_constraints(cls, constraints: Iterable[ScopeConstraint]) -> AccessScope:
        return cls(constraints=tuple(constraints))

    @property
    def is_deny_all(self) -> bool:
        """True when no row can match (no satisfiable constraint and not unrestricted)."""
        return not self.unrestricted and not any(c.is_satisfiable for c in self.constraints)

    def permits_tenant(self, tenant_id: UUID) -> bool:
        """Does the scope permit *every* turn of ``tenant_id``? A pure check, no row needed:
        true when unrestricted or when a constraint made of ``owner_tenant_id`` filters only
        matches the tenant. A scope that names turns (``for_resource``) sees a chat only
        through its rows, so this is false for it (docs/design.md, *Access scopes*)."""
        if self.unrestricted:
            return True
        for constraint in self.constraints:
            if all(
                f.name == "owner_tenant_id" and tenant_id in f.values for f in constraint.filters
            ):
                return True
        return False

    def tenants_for_turn(self, turn_id: UUID) -> frozenset[UUID] | None:
        """The tenants whose turn ``turn_id`` this scope permits: ``None`` for any tenant,
        an empty set for none (docs/design.md, *Keep-alive hub*).

        A turn's id is known before its row is read, so every ``id`` filter is decided here;
        what is left of each constraint is a set of tenants. For any turn ``t``,
        ``permits(t)`` equals ``r is None or t.tenant_id in r`` with
        ``r = tenants_for_turn(t.id)``: that is how one statement checks every turn of a
        batch against its own stream's scope, with per-turn bound values only.
        """
        if self.unrestricted:
            return None
        tenants: set[UUID] = set()
        for constraint in self.constraints:
            allowed: frozenset[UUID] | None = None
            for f in constraint.filters:
                column = f.column
                if column == "id":
                    if turn_id not in f.values:
                        break
                elif column == "tenant_id":
                    values = frozenset(f.values)
                    allowed = values if allowed is None else allowed & values
                else:
                    break  # an unknown property matches nothing (fails closed)
            else:
                if allowed is None:
                    return None
                tenants |= allowed
        return frozenset(tenants)

    def permits(self, turn: ScopedRow) -> bool:
        """The reference semantics of the scope: may the caller see or change ``turn``?"""
        if self.unrestricted:
            return True
        for constraint in self.constraints:  # noqa: SIM110 (see ScopeConstraint.matches)
            if constraint.matches(turn):
                return True
        return False


#: The most ``(scope, turn_id)`` targets one ``touch_turns`` call takes.
MAX_TOUCH_TARGETS = 10_000


def check_touch_targets(targets: object) -> None:
    """Refuse ``touch_turns`` targets that are not a list or tuple of at most
    ``MAX_TOUCH_TARGETS`` ``(AccessScope, UUID)`` pairs: ``InvalidParameterError``."""
    if not isinstance(targets, (list, tuple)):
        raise InvalidParameterError("targets must be a list or tuple of (scope, turn_id) pairs")
    if len(targets) > MAX_TOUCH_TARGETS:
        raise InvalidParameterError(
            f"targets: at most {MAX_TOUCH_TARGETS} per call, got {len(targets)}"
        )
    for target in targets:
        if not isinstance(target, tuple) or len(target) != 2:
            raise InvalidParameterError("each target must be a (scope, turn_id) tuple")
        check_scope(target[0])
        check_uuid("turn_id", target[1])


def check_scope(scope: object) -> None:
    """Refuse a scope that is not an ``AccessScope``, or one whose ``unrestricted`` is not a
    real bool (an unvalidated ``model_construct``): ``InvalidParameterError``."""
    check_instance("scope", scope, AccessScope)
    if type(scope.unrestricted) is not bool:  # type: ignore[attr-defined]
        raise InvalidParameterError("scope.unrestricted must be a bool")
    if len(scope.constraints) > MAX_SCOPE_CONSTRAINTS:  # type: ignore[attr-defined]
        raise InvalidParameterError(
            f"a scope has at most {MAX_SCOPE_CONSTRAINTS} constraints "
            f"(got {len(scope.constraints)}): "  # type: ignore[attr-defined]
            "name many turns or tenants with one IN filter"
        )

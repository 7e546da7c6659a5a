"""``AccessScope.permits``: an OR of ANDs of ``eq`` / ``in`` filters that fails closed.

Ids come from pools of three tenants and three turn ids, so ``UNIVERSE`` (every pairing) is small
enough to check every row. The property tests compare ``permits`` on random scopes with a
set-algebra model of docs/design.md, *Access scopes*: each filter selects a set of rows, a
constraint intersects its filters' sets, a scope unites its constraints' sets. The named shapes are
checked on every row of the universe.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from uuid import UUID, uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from strategies import (
    UNKNOWN_PROPERTIES,
    access_scopes,
    create_turn_params,
    ids_from,
    scope_constraints,
    turns,
)
from turnstore.model import CreateTurnParams, RequesterType, Turn, TurnState
from turnstore.scope import AccessScope, FilterOp, ScopeConstraint, ScopeFilter

TENANTS = (UUID(int=1), UUID(int=2), UUID(int=3))
TURN_IDS = (UUID(int=11), UUID(int=12), UUID(int=13))

#: Scopes and rows drawn from the same small pools, so that matches and misses are common.
pooled_scopes = access_scopes(tenant_ids=ids_from(TENANTS), turn_ids=ids_from(TURN_IDS))


def _row(tenant_id: UUID, turn_id: UUID) -> Turn:
    """A plain running row, for the example-based tests."""
    now = datetime(2030, 1, 1, tzinfo=timezone.utc)
    return Turn(
        id=turn_id,
        tenant_id=tenant_id,
        chat_id=uuid4(),
        request_id=uuid4(),
        requester_type=RequesterType.SYSTEM,
        requester_user_id=None,
        state=TurnState.RUNNING,
        started_at=now,
        last_progress_at=now,
        updated_at=now,
    )


#: A scope reads only ``tenant_id`` and ``id``, so plain rows do here; one test below
#: checks that the rest of a row (any state) plays no part.
UNIVERSE = [_row(tenant, turn_id) for tenant in TENANTS for turn_id in TURN_IDS]


# --- the set-algebra model ------------------------------------------------------------------


def _model_filter(f: ScopeFilter, universe: list[Turn]) -> set[int]:
    column = {"owner_tenant_id": "tenant_id", "id": "id"}.get(f.name)
    if column is None:
        return set()
    return {i for i, t in enumerate(universe) if getattr(t, column) in set(f.values)}


def _model_scope(scope: AccessScope, universe: list[Turn]) -> set[int]:
    everything = set(range(len(universe)))
    if scope.unrestricted:
        return everything
    selected: set[int] = set()
    for constraint in scope.constraints:
        rows = set(everything)
        for f in constraint.filters:
            rows &= _model_filter(f, universe)
        selected |= rows
    return selected


def _witness(scope: AccessScope) -> tuple[UUID, UUID] | None:
    """A ``(tenant_id, id)`` the scope admits, found by intersecting each constraint's
    allowed values per property; ``None`` when no row at all can match."""
    if scope.unrestricted:
        return (uuid4(), uuid4())
    for constraint in scope.constraints:
        allowed: dict[str, set[UUID] | None] = {"owner_tenant_id": None, "id": None}
        feasible = True
        for f in constraint.filters:
            if f.name not in allowed:
                feasible = False
                break
            previous = allowed[f.name]
            allowed[f.name] = set(f.values) if previous is None else previous & set(f.values)
        tenants, ids = allowed["owner_tenant_id"], allowed["id"]
        if feasible and tenants != set() and ids != set():
            return (min(tenants) if tenants else uuid4(), min(ids) if ids else uuid4())
    return None


@given(scope=pooled_scopes)
def test_permits_equals_the_set_model(scope: AccessScope) -> None:
    permitted = {i for i, turn in enumerate(UNIVERSE) if scope.permits(turn)}
    assert permitted == _model_scope(scope, UNIVERSE)
    if scope.is_deny_all:
        assert not permitted


def _filters_each_property_once(scope: AccessScope) -> bool:
    return all(len({f.name for f in c.filters}) == len(c.filters) for c in scope.constraints)


@given(scope=pooled_scopes)
def test_is_deny_all_never_hides_a_matchable_scope(scope: AccessScope) -> None:
    """A backend may skip the query for a deny-all scope, so ``is_deny_all`` must never be
    True for a scope some row satisfies. It is exact unless a constraint contradicts itself
    (``tenant = a AND tenant = b``), which it does not try to detect."""
    witness = _witness(scope)
    if witness is not None:
        assert not scope.is_deny_all
        assert scope.permits(_row(*witness))
    if _filters_each_property_once(scope):
        assert scope.is_deny_all == (witness is None)


@given(
    scope=pooled_scopes,
    params=create_turn_params(ids=ids_from(TURN_IDS), tenant_ids=ids_from(TENANTS)),
)
def test_new_turn_params_are_judged_like_the_row(
    scope: AccessScope, params: CreateTurnParams
) -> None:
    """``create_turn`` checks the scope on its parameters: the verdict must be the one the
    inserted row would get."""
    assert scope.permits(params) == scope.permits(_row(params.tenant_id, params.id))


@given(scope=pooled_scopes, turn=turns(ids=ids_from(TURN_IDS), tenant_ids=ids_from(TENANTS)))
def test_only_tenant_and_id_decide(scope: AccessScope, turn: Turn) -> None:
    """State, deletion, chat and timestamps play no part in the verdict."""
    assert scope.permits(turn) == scope.permits(_row(turn.tenant_id, turn.id))


@given(scope=pooled_scopes)
def test_scopes_round_trip_through_dicts_and_json(scope: AccessScope) -> None:
    """A host may ship scopes between services."""
    assert AccessScope.model_validate(scope.model_dump()) == scope
    assert AccessScope.model_validate_json(scope.model_dump_json()) == scope


# --- the named shapes ---------------------------------------------------------------------


def test_default_scope_is_deny_all() -> None:
    for scope in (AccessScope(), AccessScope.deny_all()):
        assert scope == AccessScope()
        assert scope.is_deny_all
        assert not any(scope.permits(turn) for turn in UNIVERSE)


def test_allow_all_permits_every_row() -> None:
    scope = AccessScope.allow_all()
    assert all(scope.permits(turn) for turn in UNIVERSE)
    assert not scope.is_deny_all


#: (constructor of one value, constructor of many, the pool, the column it reads)
CONVENIENCE = [
    (AccessScope.for_tenant, AccessScope.for_tenants, TENANTS, "tenant_id"),
    (AccessScope.for_resource, AccessScope.for_resources, TURN_IDS, "id"),
]


@pytest.mark.parametrize(("one", "many", "pool", "column"), CONVENIENCE, ids=["tenant", "resource"])
def test_for_tenant_and_for_resource(
    one: Callable[[UUID], AccessScope],
    many: Callable[[Iterable[UUID]], AccessScope],
    pool: tuple[UUID, ...],
    column: str,
) -> None:
    for value in pool:
        scope = one(value)
        assert [scope.permits(t) for t in UNIVERSE] == [
            getattr(t, column) == value for t in UNIVERSE
        ]
        assert not scope.is_deny_all
    for size in range(len(pool) + 1):
        values = set(pool[:size])
        scope = many(values)
        assert [scope.permits(t) for t in UNIVERSE] == [
            getattr(t, column) in values for t in UNIVERSE
        ]
        # No values at all: an empty IN, which matches nothing.
        assert scope.is_deny_all == (not values)


def test_tenant_scope_reads_tenant_id_and_resource_scope_reads_id() -> None:
    """The two properties read different columns: a tenant id equal to some turn's id does
    not admit that turn, and vice versa."""
    a, b = UUID(int=100), UUID(int=200)
    turn = _row(tenant_id=b, turn_id=a)
    assert AccessScope.for_tenant(b).permits(turn)
    assert not AccessScope.for_tenant(a).permits(turn)
    assert AccessScope.for_resource(a).permits(turn)
    assert not AccessScope.for_resource(b).permits(turn)


# --- AND, OR, eq, in ------------------------------------------------------------------------


def _scope(*constraints: list[ScopeFilter]) -> AccessScope:
    return AccessScope.from_constraints([ScopeConstraint(filters) for filters in constraints])


def test_a_constraint_is_an_and() -> None:
    for tenant in TENANTS:
        for turn_id in TURN_IDS:
            scope = _scope(
                [ScopeFilter.eq("owner_tenant_id", tenant), ScopeFilter.eq("id", turn_id)]
            )
            for turn in UNIVERSE:
                assert scope.permits(turn) == (turn.tenant_id == tenant and turn.id == turn_id)


def test_constraints_are_ored() -> None:
    for tenant in TENANTS:
        for turn_id in TURN_IDS:
            scope = _scope(
                [ScopeFilter.eq("owner_tenant_id", tenant)], [ScopeFilter.eq("id", turn_id)]
            )
            for turn in UNIVERSE:
                assert scope.permits(turn) == (turn.tenant_id == tenant or turn.id == turn_id)


@pytest.mark.parametrize("name", ["owner_tenant_id", "id"])
def test_eq_is_in_of_one_value(name: str) -> None:
    for value in TENANTS + TURN_IDS:
        eq = _scope([ScopeFilter.eq(name, value)])
        in_ = _scope([ScopeFilter.in_(name, [value])])
        assert [eq.permits(t) for t in UNIVERSE] == [in_.permits(t) for t in UNIVERSE]
        pool = TENANTS if name == "owner_tenant_id" else TURN_IDS
        assert any(eq.permits(t) for t in UNIVERSE) == (value in pool)


@pytest.mark.parametrize("name", ["owner_tenant_id", "id"])
def test_empty_in_matches_nothing(name: str) -> None:
    empty = ScopeFilter.in_(name, [])
    scope = _scope([empty])
    assert scope.is_deny_all
    for turn in UNIVERSE:
        assert not scope.permits(turn)
        # An empty IN also vetoes an otherwise matching AND.
        assert not _scope([ScopeFilter.eq("id", turn.id), empty]).permits(turn)


# --- failing closed ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", UNKNOWN_PROPERTIES)
@pytest.mark.parametrize("op", list(FilterOp))
def test_unknown_property_fails_closed(name: str, op: FilterOp) -> None:
    for turn in UNIVERSE:
        # Values that would match if the name were read as a column.
        unknown = ScopeFilter(name=name, op=op, values=(turn.tenant_id,))
        alone = _scope([unknown])
        assert not alone.permits(turn)
        assert alone.is_deny_all
        # Matching filters in the same constraint do not rescue it...
        known = [ScopeFilter.eq("owner_tenant_id", turn.tenant_id), ScopeFilter.eq("id", turn.id)]
        for position in range(len(known) + 1):
            anded = _scope([*known[:position], unknown, *known[position:]])
            assert not anded.permits(turn)
            assert anded.is_deny_all
        # ...but another satisfiable constraint of the OR still matches.
        ored = _scope([unknown, *known], [known[0]])
        assert ored.permits(turn)
        assert not ored.is_deny_all


def test_a_scope_without_constraints_is_deny_all() -> None:
    scope = AccessScope.from_constraints([])
    assert scope.is_deny_all
    assert not any(scope.permits(turn) for turn in UNIVERSE)


@given(constraints=st.lists(scope_constraints(), max_size=3))
def test_unrestricted_overrides_constraints(constraints: list[ScopeConstraint]) -> None:
    scope = AccessScope(constraints=tuple(constraints), unrestricted=True)
    assert all(scope.permits(turn) for turn in UNIVERSE)
    assert not scope.is_deny_all


# --- construction -------------------------------------------------------------------------------


def test_empty_constraint_is_rejected() -> None:
    """An empty AND would match everything; ``allow_all()`` is the explicit way to say that."""
    with pytest.raises(ValidationError, match="at least 1 item"):
        ScopeConstraint([])
    with pytest.raises(ValidationError, match="at least 1 item"):
        AccessScope.model_validate({"constraints": [{"filters": []}]})
    with pytest.raises(ValidationError, match="Field required"):
        AccessScope.model_validate({"constraints": [{}]})


@pytest.mark.parametrize("count", [0, 2, 3])
def test_eq_takes_exactly_one_value(count: int) -> None:
    with pytest.raises(ValidationError, match=f"exactly one value, got {count}"):
        ScopeFilter(name="owner_tenant_id", op=FilterOp.EQ, values=TENANTS[:count])


def test_filter_needs_a_property_name() -> None:
    with pytest.raises(ValidationError, match="at least 1 character"):
        ScopeFilter.eq("", UUID(int=1))


def test_filter_values_must_be_uuids() -> None:
    with pytest.raises(ValidationError, match="UUID"):
        ScopeFilter.in_("id", ["not-a-uuid"])  # type: ignore[list-item]


def test_scopes_are_frozen_values() -> None:
    scope = AccessScope.for_tenant(TENANTS[0])
    with pytest.raises(ValidationError, match="frozen"):
        scope.unrestricted = True  # type: ignore[misc]
    assert scope == AccessScope.for_tenant(TENANTS[0])
    assert not scope.permits(_row(tenant_id=TENANTS[1], turn_id=TURN_IDS[0]))


def test_permits_tenant_is_a_pure_check_of_tenant_only_constraints() -> None:
    """docs/design.md, *Access scopes*: a scope sees a chat whole only when it permits every
    turn of the tenant; a constraint with an ``id`` filter needs a row."""
    tenant, other, turn = uuid4(), uuid4(), uuid4()
    assert AccessScope.allow_all().permits_tenant(tenant)
    assert AccessScope.for_tenant(tenant).permits_tenant(tenant)
    assert AccessScope.for_tenants([other, tenant]).permits_tenant(tenant)
    assert not AccessScope.for_tenant(other).permits_tenant(tenant)
    assert not AccessScope.deny_all().permits_tenant(tenant)
    assert not AccessScope.for_resource(turn).permits_tenant(tenant)
    narrowed = AccessScope.from_constraints(
        [ScopeConstraint([ScopeFilter.eq("owner_tenant_id", tenant), ScopeFilter.eq("id", turn)])]
    )
    assert not narrowed.permits_tenant(tenant)
    either = AccessScope.from_constraints(
        [
            ScopeConstraint([ScopeFilter.eq("id", turn)]),
            ScopeConstraint([ScopeFilter.in_("owner_tenant_id", [tenant])]),
        ]
    )
    assert either.permits_tenant(tenant)
    unknown = AccessScope.from_constraints([ScopeConstraint([ScopeFilter.eq("owner", tenant)])])
    assert not unknown.permits_tenant(tenant)


@given(scope=pooled_scopes)
def test_tenants_for_turn_is_permits_with_the_id_decided(scope: AccessScope) -> None:
    """docs/design.md, *Keep-alive hub*: what ``touch_turns`` binds per target (a set of
    tenants, or any) permits exactly the rows ``permits`` does, on every row of the universe."""
    for turn_id in TURN_IDS:
        tenants = scope.tenants_for_turn(turn_id)
        for tenant_id in TENANTS:
            row = _row(tenant_id, turn_id)
            assert scope.permits(row) == (tenants is None or tenant_id in tenants)


def test_tenants_for_turn_of_the_named_shapes() -> None:
    tenant, turn_id = TENANTS[0], TURN_IDS[0]
    assert AccessScope.allow_all().tenants_for_turn(turn_id) is None
    assert AccessScope.deny_all().tenants_for_turn(turn_id) == frozenset()
    assert AccessScope.for_tenant(tenant).tenants_for_turn(turn_id) == frozenset({tenant})
    assert AccessScope.for_resource(turn_id).tenants_for_turn(turn_id) is None
    assert AccessScope.for_resource(turn_id).tenants_for_turn(TURN_IDS[1]) == frozenset()

"""Hypothesis strategies for the turnstore domain, shared by the property tests.

Every strategy builds only *valid* values: parameter models that construct, ``Turn`` rows in
a state the schema and the repository can produce, and access scopes of every shape
(allow-all, deny-all, unknown properties, empty ``IN``, ORs of several constraints).
Id strategies are arguments, so a caller can draw from a small pool (``ids_from``) to make
collisions (same chat, same request, same tenant) likely instead of astronomically rare.

The ``*_kwargs`` strategies return the keyword arguments of a valid model, so a test can
break exactly one of them and check that construction fails.

Leaf strategies are built once at import: hypothesis validates every strategy object the
first time it is drawn from, and rebuilding them inside composites on every draw made
drawing a row several times slower.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import UUID

from hypothesis import strategies as st

from turnstore.model import (
    INT4_MAX,
    INT8_MAX,
    CasCompleteParams,
    CasTerminalParams,
    CreateTurnParams,
    RequesterType,
    ToolCallType,
    Turn,
    TurnState,
    UpdatePreflightParams,
)
from turnstore.rules import ORPHAN_ERROR_CODE
from turnstore.scope import PROPERTY_COLUMNS, AccessScope, ScopeConstraint, ScopeFilter

__all__ = [
    "ERROR_CODE_MAX",
    "MODEL_MAX",
    "PROVIDER_MAX",
    "TERMINAL_STATES",
    "UNKNOWN_PROPERTIES",
    "access_scopes",
    "cas_complete_kwargs",
    "cas_complete_params",
    "cas_terminal_kwargs",
    "cas_terminal_params",
    "create_turn_kwargs",
    "create_turn_params",
    "ids_from",
    "preflight_kwargs",
    "scope_constraints",
    "scope_filters",
    "storable_text",
    "timestamps",
    "turns",
    "update_preflight_kwargs",
    "update_preflight_params",
]

ERROR_CODE_MAX = 64
PROVIDER_MAX = 128
MODEL_MAX = 1024

TERMINAL_STATES: tuple[TurnState, ...] = tuple(s for s in TurnState if s.is_terminal)

#: Property names turnstore does not know; a filter on one of them must fail closed.
#: Some are column names or near-misses of the known properties on purpose.
UNKNOWN_PROPERTIES: tuple[str, ...] = (
    "tenant_id",
    "chat_id",
    "owner_id",
    "ID",
    "owner_tenant_id ",
    "request_id",
)

_EPOCH_MIN = datetime(2000, 1, 1)
_EPOCH_MAX = datetime(2100, 1, 1)
#: A week: long enough to cross any orphan timeout, short enough to stay in range.
_MAX_STEP = timedelta(days=7)


def ids_from(pool: Sequence[UUID]) -> st.SearchStrategy[UUID]:
    """Draw ids from a fixed pool, so that equal ids (collisions) are common."""
    return st.sampled_from(list(pool))


def storable_text(*, min_size: int = 1, max_size: int | None = None) -> st.SearchStrategy[str]:
    """Text PostgreSQL can store: any Unicode scalar value except NUL (no surrogates)."""
    return st.text(alphabet=_STORABLE_CHARS, min_size=min_size, max_size=max_size)


def timestamps() -> st.SearchStrategy[datetime]:
    """Aware UTC instants with microsecond resolution, like ``timestamptz``."""
    return _TIMESTAMPS


_STORABLE_CHARS = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")
_TIMESTAMPS = st.datetimes(
    min_value=_EPOCH_MIN, max_value=_EPOCH_MAX, timezones=st.just(timezone.utc)
)
_UUIDS = st.uuids()
_MAYBE_UUID = st.none() | _UUIDS
_BOOLS = st.booleans()
_REQUESTER_TYPES = st.sampled_from(RequesterType)
_STATES = st.sampled_from(TurnState)
_TERMINAL = st.sampled_from(TERMINAL_STATES)
#: A non-negative gap between two timestamps; zero is common (same-statement time).
_STEPS = st.one_of(
    st.just(timedelta(0)),
    st.timedeltas(min_value=timedelta(0), max_value=timedelta(microseconds=10)),
    st.timedeltas(min_value=timedelta(0), max_value=_MAX_STEP),
)
_INT4 = st.one_of(st.integers(0, INT4_MAX), st.sampled_from([0, INT4_MAX]))
_INT8 = st.one_of(st.integers(0, INT8_MAX), st.sampled_from([0, INT8_MAX]))
_RESERVE_SURPLUS = st.one_of(st.just(0), st.integers(0, INT8_MAX - INT4_MAX))
_MAYBE_PROVIDER_TEXT = st.none() | storable_text(max_size=PROVIDER_MAX)
_ERROR_CODES = st.just(ORPHAN_ERROR_CODE) | storable_text(max_size=ERROR_CODE_MAX)
_MAYBE_ERROR_CODE = st.none() | _ERROR_CODES
_MAYBE_DETAIL = st.none() | storable_text(min_size=0)
_MODELS = storable_text(max_size=MODEL_MAX)


def _or_default(strategy: st.SearchStrategy[Any] | None, default: st.SearchStrategy[Any]) -> Any:
    return strategy if strategy is not None else default


def _draw_preflight(draw: st.DrawFn) -> dict[str, Any]:
    max_output = draw(_INT4)
    return {
        "reserve_tokens": max_output + draw(_RESERVE_SURPLUS),
        "max_output_tokens_applied": max_output,
        "reserved_credits_micro": draw(_INT8),
        "policy_version_applied": draw(_INT8),
        "effective_model": draw(_MODELS),
        "minimal_generation_floor_applied": draw(_INT4),
    }


@st.composite
def preflight_kwargs(draw: st.DrawFn) -> dict[str, Any]:
    """The six preflight fields, valid together (``reserve_tokens >= max_output``)."""
    return _draw_preflight(draw)


def _draw_turn_keys(draw: st.DrawFn, **keys: st.SearchStrategy[Any] | None) -> dict[str, Any]:
    """The ids and the requester of a new turn (``keys`` as for ``create_turn_kwargs``):
    a user turn always names its user, a system turn may or may not."""
    user_ids = keys.get("user_ids")
    requester_type = draw(_or_default(keys.get("requester_types"), _REQUESTER_TYPES))
    if requester_type is RequesterType.USER:
        user_id: UUID | None = draw(_or_default(user_ids, _UUIDS))
    elif user_ids is None:
        user_id = draw(_MAYBE_UUID)
    else:
        user_id = draw(user_ids) if draw(_BOOLS) else None
    return {
        "id": draw(_or_default(keys.get("ids"), _UUIDS)),
        "tenant_id": draw(_or_default(keys.get("tenant_ids"), _UUIDS)),
        "chat_id": draw(_or_default(keys.get("chat_ids"), _UUIDS)),
        "request_id": draw(_or_default(keys.get("request_ids"), _UUIDS)),
        "requester_type": requester_type,
        "requester_user_id": user_id,
    }


def _draw_create_kwargs(draw: st.DrawFn, **keys: Any) -> dict[str, Any]:
    kwargs = _draw_turn_keys(draw, **keys)
    kwargs["provider_name"] = draw(_MAYBE_PROVIDER_TEXT)
    kwargs["web_search_enabled"] = draw(_BOOLS)
    if draw(_BOOLS):
        kwargs.update(_draw_preflight(draw))
    return kwargs


@st.composite
def create_turn_kwargs(
    draw: st.DrawFn,
    *,
    ids: st.SearchStrategy[UUID] | None = None,
    tenant_ids: st.SearchStrategy[UUID] | None = None,
    chat_ids: st.SearchStrategy[UUID] | None = None,
    request_ids: st.SearchStrategy[UUID] | None = None,
    user_ids: st.SearchStrategy[UUID] | None = None,
    requester_types: st.SearchStrategy[RequesterType] | None = None,
) -> dict[str, Any]:
    """Keyword arguments of a valid ``CreateTurnParams`` (preflight fields all or none)."""
    return _draw_create_kwargs(
        draw,
        ids=ids,
        tenant_ids=tenant_ids,
        chat_ids=chat_ids,
        request_ids=request_ids,
        user_ids=user_ids,
        requester_types=requester_types,
    )


def create_turn_params(**strategies: st.SearchStrategy[Any]) -> st.SearchStrategy[CreateTurnParams]:
    """Valid ``CreateTurnParams``; keyword arguments as for ``create_turn_kwargs``."""
    return create_turn_kwargs(**strategies).map(lambda kw: CreateTurnParams(**kw))


def _draw_cas_fields(draw: st.DrawFn, state: TurnState, *, payload: bool = True) -> dict[str, Any]:
    """What a CAS to terminal ``state`` may write. Without ``payload``, the free text is
    fixed and only what the rules distinguish varies."""
    if state is TurnState.COMPLETED:
        error_code = None
        message_id: UUID | None = draw(_UUIDS)
    elif state is TurnState.FAILED:
        error_code = draw(_ERROR_CODES) if payload else ORPHAN_ERROR_CODE
        message_id = draw(_MAYBE_UUID)
    else:
        error_code = draw(_MAYBE_ERROR_CODE) if payload else None
        message_id = draw(_MAYBE_UUID)
    return {
        "error_code": error_code,
        "error_detail": draw(_MAYBE_DETAIL) if payload else None,
        "assistant_message_id": message_id,
        "provider_response_id": draw(_MAYBE_PROVIDER_TEXT) if payload else None,
    }


@st.composite
def cas_terminal_kwargs(
    draw: st.DrawFn,
    *,
    turn_ids: st.SearchStrategy[UUID] | None = None,
    states: st.SearchStrategy[TurnState] | None = None,
) -> dict[str, Any]:
    """Keyword arguments of a valid ``CasTerminalParams`` (any terminal target)."""
    state = draw(_or_default(states, _TERMINAL))
    return {
        "turn_id": draw(_or_default(turn_ids, _UUIDS)),
        "state": state,
        **_draw_cas_fields(draw, state),
    }


def cas_terminal_params(
    *,
    turn_ids: st.SearchStrategy[UUID] | None = None,
    states: st.SearchStrategy[TurnState] | None = None,
) -> st.SearchStrategy[CasTerminalParams]:
    """Valid ``CasTerminalParams``."""
    return cas_terminal_kwargs(turn_ids=turn_ids, states=states).map(
        lambda kw: CasTerminalParams(**kw)
    )


@st.composite
def cas_complete_kwargs(
    draw: st.DrawFn, *, turn_ids: st.SearchStrategy[UUID] | None = None
) -> dict[str, Any]:
    """Keyword arguments of a valid ``CasCompleteParams``."""
    return {
        "turn_id": draw(_or_default(turn_ids, _UUIDS)),
        "assistant_message_id": draw(_UUIDS),
        "provider_response_id": draw(_MAYBE_PROVIDER_TEXT),
    }


def cas_complete_params(
    *, turn_ids: st.SearchStrategy[UUID] | None = None
) -> st.SearchStrategy[CasCompleteParams]:
    """Valid ``CasCompleteParams``."""
    return cas_complete_kwargs(turn_ids=turn_ids).map(lambda kw: CasCompleteParams(**kw))


@st.composite
def update_preflight_kwargs(
    draw: st.DrawFn, *, turn_ids: st.SearchStrategy[UUID] | None = None
) -> dict[str, Any]:
    """Keyword arguments of a valid ``UpdatePreflightParams``."""
    kwargs = _draw_preflight(draw)
    kwargs["turn_id"] = draw(_or_default(turn_ids, _UUIDS))
    return kwargs


def update_preflight_params(
    *, turn_ids: st.SearchStrategy[UUID] | None = None
) -> st.SearchStrategy[UpdatePreflightParams]:
    """Valid ``UpdatePreflightParams``."""
    return update_preflight_kwargs(turn_ids=turn_ids).map(lambda kw: UpdatePreflightParams(**kw))


@st.composite
def turns(
    draw: st.DrawFn,
    *,
    ids: st.SearchStrategy[UUID] | None = None,
    tenant_ids: st.SearchStrategy[UUID] | None = None,
    chat_ids: st.SearchStrategy[UUID] | None = None,
    request_ids: st.SearchStrategy[UUID] | None = None,
    user_ids: st.SearchStrategy[UUID] | None = None,
    requester_types: st.SearchStrategy[RequesterType] | None = None,
    states: st.SearchStrategy[TurnState] | None = None,
    deleted: bool | None = None,
    started_ats: st.SearchStrategy[datetime] | None = None,
    payload: bool = True,
) -> Turn:
    """A ``Turn`` row in any state the repository can leave it in.

    Invariants kept (the schema's CHECKs plus what the methods write): a user turn has a
    user id; the preflight fields are all set or none, reserve covering max output; a
    running turn has no ``completed_at``, no ``error_code`` and no provider response; a
    terminal one has ``completed_at`` no earlier than its last progress; ``completed`` has
    an assistant message and no error code; ``failed`` has an error code; timestamps never
    precede ``started_at`` and ``updated_at`` is the newest; ``replaced_by_request_id``
    only on a deleted turn. ``deleted=None`` draws either way; ``started_ats`` may draw
    from a small pool so that ties in ``(started_at, id)`` ordering occur.

    ``payload=False`` leaves out what no rule reads (provider, preflight, counters, error
    text: defaults or fixed values), which makes drawing a row several times cheaper.
    """
    keys: dict[str, Any] = {
        "ids": ids,
        "tenant_ids": tenant_ids,
        "chat_ids": chat_ids,
        "request_ids": request_ids,
        "user_ids": user_ids,
        "requester_types": requester_types,
    }
    row = _draw_create_kwargs(draw, **keys) if payload else _draw_turn_keys(draw, **keys)
    state = draw(_or_default(states, _STATES))
    started_at = draw(_or_default(started_ats, _TIMESTAMPS))
    last_progress_at = started_at + draw(_STEPS)
    newest = last_progress_at
    row.update(state=state, started_at=started_at, last_progress_at=last_progress_at)
    if payload:
        for tool in ToolCallType:
            row[tool.column] = draw(_INT4)
    if state is TurnState.RUNNING:
        # set_assistant_message_id works in any state.
        row["assistant_message_id"] = draw(_MAYBE_UUID)
    else:
        row.update(_draw_cas_fields(draw, state, payload=payload))
        newest += draw(_STEPS)
        row["completed_at"] = newest
    is_deleted = draw(_BOOLS) if deleted is None else deleted
    if is_deleted:
        deleted_at = started_at + draw(_STEPS)
        newest = max(newest, deleted_at)
        row["deleted_at"] = deleted_at
        row["replaced_by_request_id"] = draw(_MAYBE_UUID)
    row["updated_at"] = newest + draw(_STEPS)
    return Turn(**row)


def _known_filters(
    tenant_ids: st.SearchStrategy[UUID], turn_ids: st.SearchStrategy[UUID]
) -> st.SearchStrategy[ScopeFilter]:
    def on(name: str, values: st.SearchStrategy[UUID]) -> st.SearchStrategy[ScopeFilter]:
        return st.one_of(
            st.builds(ScopeFilter.eq, st.just(name), values),
            st.builds(ScopeFilter.in_, st.just(name), st.lists(values, max_size=4)),
        )

    return on("owner_tenant_id", tenant_ids) | on("id", turn_ids)


_UNKNOWN_NAMES = st.sampled_from(UNKNOWN_PROPERTIES) | st.text(min_size=1, max_size=8).filter(
    lambda name: name not in PROPERTY_COLUMNS
)


def scope_filters(
    *,
    tenant_ids: st.SearchStrategy[UUID] | None = None,
    turn_ids: st.SearchStrategy[UUID] | None = None,
    unknown: bool = True,
) -> st.SearchStrategy[ScopeFilter]:
    """One filter: ``eq`` or ``in`` (possibly empty) on a known property, or, when
    ``unknown``, an ``in`` on a property turnstore does not know, with values that would
    match if it were read as a column."""
    tenants = _or_default(tenant_ids, _UUIDS)
    resources = _or_default(turn_ids, _UUIDS)
    known = _known_filters(tenants, resources)
    if not unknown:
        return known
    unknown_filters = st.builds(
        ScopeFilter.in_, _UNKNOWN_NAMES, st.lists(tenants | resources, min_size=1, max_size=3)
    )
    return st.one_of(known, known, unknown_filters)


def scope_constraints(
    *,
    tenant_ids: st.SearchStrategy[UUID] | None = None,
    turn_ids: st.SearchStrategy[UUID] | None = None,
    unknown: bool = True,
) -> st.SearchStrategy[ScopeConstraint]:
    """An AND of one to three filters."""
    filters = scope_filters(tenant_ids=tenant_ids, turn_ids=turn_ids, unknown=unknown)
    return st.lists(filters, min_size=1, max_size=3).map(ScopeConstraint)


def access_scopes(
    *,
    tenant_ids: st.SearchStrategy[UUID] | None = None,
    turn_ids: st.SearchStrategy[UUID] | None = None,
    unknown: bool = True,
) -> st.SearchStrategy[AccessScope]:
    """Any access scope: allow-all, deny-all, the convenience constructors, and ORs of up
    to three constraints (which may name unknown properties when ``unknown``)."""
    tenants = _or_default(tenant_ids, _UUIDS)
    resources = _or_default(turn_ids, _UUIDS)
    constraints = scope_constraints(tenant_ids=tenants, turn_ids=resources, unknown=unknown)
    return st.one_of(
        st.just(AccessScope.allow_all()),
        st.just(AccessScope.deny_all()),
        st.builds(AccessScope.for_tenant, tenants),
        st.builds(AccessScope.for_tenants, st.lists(tenants, max_size=3)),
        st.builds(AccessScope.for_resource, resources),
        st.builds(AccessScope.for_resources, st.lists(resources, max_size=3)),
        st.lists(constraints, min_size=1, max_size=3).map(AccessScope.from_constraints),
    )

"""Parameter validation: every valid input constructs, every invalid one names its problem.

Each test breaks exactly one rule of ``turnstore.model`` on top of otherwise valid input and
checks the error's location and message, so it fails if that rule is removed.
"""

from __future__ import annotations

import re
from typing import Any
from uuid import UUID

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from strategies import (
    ERROR_CODE_MAX,
    MODEL_MAX,
    PROVIDER_MAX,
    cas_complete_kwargs,
    cas_terminal_kwargs,
    create_turn_kwargs,
    preflight_kwargs,
    storable_text,
    turns,
    update_preflight_kwargs,
)
from turnstore.model import (
    INT4_MAX,
    INT8_MAX,
    CasCompleteParams,
    CasTerminalParams,
    CreateTurnParams,
    RequesterType,
    Turn,
    TurnState,
    UpdatePreflightParams,
)

PREFLIGHT = (
    "reserve_tokens",
    "max_output_tokens_applied",
    "reserved_credits_micro",
    "policy_version_applied",
    "effective_model",
    "minimal_generation_floor_applied",
)
INT4_FIELDS = ("max_output_tokens_applied", "minimal_generation_floor_applied")
INT8_FIELDS = ("reserve_tokens", "reserved_credits_micro", "policy_version_applied")

PARAM_MODELS: dict[type[BaseModel], st.SearchStrategy[dict[str, Any]]] = {
    CreateTurnParams: create_turn_kwargs(),
    CasTerminalParams: cas_terminal_kwargs(),
    CasCompleteParams: cas_complete_kwargs(),
    UpdatePreflightParams: update_preflight_kwargs(),
}

#: (model, text field, max length) for every length-limited text field.
BOUNDED_TEXT = [
    (CreateTurnParams, "provider_name", PROVIDER_MAX),
    (CreateTurnParams, "effective_model", MODEL_MAX),
    (UpdatePreflightParams, "effective_model", MODEL_MAX),
    (CasTerminalParams, "error_code", ERROR_CODE_MAX),
    (CasTerminalParams, "provider_response_id", PROVIDER_MAX),
    (CasCompleteParams, "provider_response_id", PROVIDER_MAX),
]
#: Every text field of every parameter model (``error_detail`` is unbounded ``text``).
ALL_TEXT = [(model, field) for model, field, _ in BOUNDED_TEXT] + [
    (CasTerminalParams, "error_detail")
]
INT_FIELDS = [
    (model, field)
    for model in (CreateTurnParams, UpdatePreflightParams)
    for field in INT4_FIELDS + INT8_FIELDS
]


def _name(model: type[BaseModel]) -> str:
    return model.__name__


def _fillable_kwargs(model: type[BaseModel]) -> st.SearchStrategy[dict[str, Any]]:
    """Valid kwargs in which every field may be set: all preflight fields present, and a
    ``failed`` target (the one terminal state that requires an ``error_code``)."""
    if model is CreateTurnParams:
        both = st.tuples(create_turn_kwargs(), preflight_kwargs())
        return both.map(lambda kw: {**kw[0], **kw[1]})
    if model is CasTerminalParams:
        return cas_terminal_kwargs(states=st.just(TurnState.FAILED))
    return PARAM_MODELS[model]


@st.composite
def _field_case(draw: st.DrawFn, cases: list[Any]) -> tuple[Any, ...]:
    """One (model, field, ...) case plus valid kwargs for its model, as one tuple."""
    case = draw(st.sampled_from(cases))
    return (*case, draw(_fillable_kwargs(case[0])))


def _text_of_length(length: int) -> st.SearchStrategy[str]:
    """Storable text of exactly ``length`` characters (a short random text repeated, which
    keeps multi-byte characters in play without generating kilobytes per example)."""
    return storable_text(max_size=8).map(lambda unit: (unit * length)[:length])


def assert_rejected(
    model: type[BaseModel], kwargs: dict[str, Any], *, field: str | None, match: str
) -> ValidationError:
    """Construction fails with exactly one error, located at ``field`` (``None``: the model
    as a whole), whose message matches ``match``."""
    with pytest.raises(ValidationError) as info:
        model(**kwargs)
    errors = info.value.errors()
    assert len(errors) == 1, errors
    assert errors[0]["loc"] == ((field,) if field is not None else ()), errors
    assert re.search(match, errors[0]["msg"]), errors[0]["msg"]
    return info.value


# --- valid input -----------------------------------------------------------------------


@pytest.mark.parametrize("model", list(PARAM_MODELS), ids=_name)
@given(data=st.data())
def test_valid_input_constructs_and_keeps_its_values(
    model: type[BaseModel], data: st.DataObject
) -> None:
    kwargs = data.draw(PARAM_MODELS[model])
    params = model(**kwargs)
    assert {name: getattr(params, name) for name in kwargs} == kwargs


@given(turn=turns())
def test_turn_rows_round_trip(turn: Turn) -> None:
    assert Turn(**turn.model_dump()) == turn


@given(case=_field_case(INT_FIELDS))
def test_integers_at_their_bounds_are_accepted(case: tuple[Any, ...]) -> None:
    model, field, kwargs = case
    bound = INT4_MAX if field in INT4_FIELDS else INT8_MAX
    # Keep reserve >= max_output whatever the value, so only the bound is under test.
    kwargs.update(reserve_tokens=INT8_MAX, max_output_tokens_applied=0)
    for value in (0, bound):
        kwargs[field] = value
        assert getattr(model(**kwargs), field) == value


@given(kwargs=create_turn_kwargs())
def test_system_turn_without_user_or_preflight(kwargs: dict[str, Any]) -> None:
    """A system turn needs no user, and a turn may start before its preflight is known."""
    kwargs.update(requester_type=RequesterType.SYSTEM, requester_user_id=None)
    for name in PREFLIGHT:
        kwargs.pop(name, None)
    params = CreateTurnParams(**kwargs)
    assert params.requester_user_id is None
    assert all(getattr(params, name) is None for name in PREFLIGHT)


# --- CreateTurnParams rules -------------------------------------------------------------


@given(kwargs=create_turn_kwargs())
def test_user_turn_requires_requester_user_id(kwargs: dict[str, Any]) -> None:
    kwargs.update(requester_type=RequesterType.USER, requester_user_id=None)
    assert_rejected(CreateTurnParams, kwargs, field=None, match="requester_user_id is required")


@given(
    kwargs=_fillable_kwargs(CreateTurnParams),
    omitted=st.sets(st.sampled_from(PREFLIGHT), min_size=1, max_size=len(PREFLIGHT) - 1),
)
def test_preflight_fields_are_all_or_none(kwargs: dict[str, Any], omitted: set[str]) -> None:
    for name in omitted:
        del kwargs[name]
    error = assert_rejected(CreateTurnParams, kwargs, field=None, match="all set or all omitted")
    for name in omitted:
        assert name in str(error)


@given(
    case=_field_case([(CreateTurnParams,), (UpdatePreflightParams,)]),
    max_output=st.integers(1, INT4_MAX),
    data=st.data(),
)
def test_reserve_tokens_must_cover_max_output(
    case: tuple[Any, ...], max_output: int, data: st.DataObject
) -> None:
    model, kwargs = case
    kwargs.update(max_output_tokens_applied=max_output, reserve_tokens=max_output)
    assert model(**kwargs).reserve_tokens == max_output
    reserve = data.draw(st.integers(0, max_output - 1))
    kwargs["reserve_tokens"] = reserve
    assert_rejected(
        model, kwargs, field=None, match=rf"reserve_tokens \({reserve}\) must be >= .*{max_output}"
    )


# --- integer ranges -----------------------------------------------------------------------


@st.composite
def _bad_integers(draw: st.DrawFn, field: str) -> tuple[object, str]:
    """A value outside ``field``'s column type, and the message that must name it."""
    bound = INT4_MAX if field in INT4_FIELDS else INT8_MAX
    kind = draw(st.sampled_from(["negative", "too large", "bool"]))
    if kind == "negative":
        return draw(st.integers(max_value=-1)), "greater than or equal to 0"
    if kind == "too large":
        return bound + draw(st.integers(1, 2**70)), f"less than or equal to {bound}"
    return draw(st.booleans()), "got a bool"


@given(case=_field_case(INT_FIELDS), data=st.data())
def test_integers_outside_their_column_type_are_rejected(
    case: tuple[Any, ...], data: st.DataObject
) -> None:
    """Negative, beyond int4/int8, or a bool (which Python counts as an int)."""
    model, field, kwargs = case
    kwargs[field], message = data.draw(_bad_integers(field))
    assert_rejected(model, kwargs, field=field, match=message)


# --- text -----------------------------------------------------------------------------------


@given(case=_field_case(BOUNDED_TEXT), data=st.data())
def test_text_length_limits(case: tuple[Any, ...], data: st.DataObject) -> None:
    """Length counts characters, as ``varchar(n)`` does, not UTF-8 bytes; empty text is
    refused (``None`` is how to say "no value")."""
    model, field, limit, kwargs = case
    kwargs[field] = data.draw(_text_of_length(limit))
    assert getattr(model(**kwargs), field) == kwargs[field]
    kwargs[field] = data.draw(_text_of_length(limit + data.draw(st.integers(1, 3))))
    assert_rejected(model, kwargs, field=field, match=f"at most {limit} characters")
    kwargs[field] = ""
    assert_rejected(model, kwargs, field=field, match="at least 1 character")


def _with_inserted(char: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Valid short text with ``char`` inserted at any position."""
    return st.tuples(storable_text(min_size=0, max_size=20), char, st.integers(0, 20)).map(
        lambda t: t[0][: t[2]] + t[1] + t[0][t[2] :]
    )


_UNSTORABLE = st.one_of(
    st.tuples(_with_inserted(st.just("\x00")), st.just("NUL")),
    st.tuples(_with_inserted(st.integers(0xD800, 0xDFFF).map(chr)), st.just("lone surrogates")),
    st.tuples(st.integers() | st.binary(max_size=4), st.just("must be a str")),
)


@given(case=_field_case(ALL_TEXT), bad=_UNSTORABLE)
def test_text_postgresql_cannot_store_is_rejected(
    case: tuple[Any, ...], bad: tuple[object, str]
) -> None:
    """NUL anywhere, a lone surrogate anywhere, or not a str at all (bytes would be
    decoded past the NUL check)."""
    model, field, kwargs = case
    kwargs[field], message = bad
    assert_rejected(model, kwargs, field=field, match=message)


# --- CasTerminalParams rules --------------------------------------------------------------


@given(kwargs=cas_terminal_kwargs())
def test_cas_target_must_be_terminal(kwargs: dict[str, Any]) -> None:
    kwargs["state"] = TurnState.RUNNING
    assert_rejected(CasTerminalParams, kwargs, field=None, match="must be terminal.*running")


@given(kwargs=cas_terminal_kwargs(states=st.just(TurnState.COMPLETED)))
def test_completed_requires_assistant_message_id(kwargs: dict[str, Any]) -> None:
    kwargs["assistant_message_id"] = None
    assert_rejected(CasTerminalParams, kwargs, field=None, match="requires assistant_message_id")


@given(
    kwargs=cas_terminal_kwargs(states=st.just(TurnState.COMPLETED)),
    code=storable_text(max_size=ERROR_CODE_MAX),
)
def test_completed_forbids_error_code(kwargs: dict[str, Any], code: str) -> None:
    kwargs["error_code"] = code
    assert_rejected(CasTerminalParams, kwargs, field=None, match="cannot carry an error_code")


@given(kwargs=cas_terminal_kwargs(states=st.just(TurnState.FAILED)))
def test_failed_requires_error_code(kwargs: dict[str, Any]) -> None:
    kwargs["error_code"] = None
    assert_rejected(CasTerminalParams, kwargs, field=None, match="requires an error_code")


@given(kwargs=cas_terminal_kwargs(states=st.just(TurnState.CANCELLED)))
def test_cancel_needs_neither_message_nor_error(kwargs: dict[str, Any]) -> None:
    """Also: the state may be given as its text, and an error detail may be empty."""
    kwargs.update(state="cancelled", error_code=None, assistant_message_id=None, error_detail="")
    params = CasTerminalParams(**kwargs)
    assert params.state is TurnState.CANCELLED
    assert params.error_detail == ""


@given(kwargs=cas_terminal_kwargs(), state=st.text(max_size=12))
def test_unknown_state_is_rejected(kwargs: dict[str, Any], state: str) -> None:
    if state in {s.value for s in TurnState}:
        state += "?"
    kwargs["state"] = state
    assert_rejected(CasTerminalParams, kwargs, field="state", match="Input should be")


# --- shape: extra fields, frozen, ids -----------------------------------------------------


@given(
    model=st.sampled_from(list(PARAM_MODELS)),
    name=st.from_regex(r"[a-z_]{1,20}", fullmatch=True),
    data=st.data(),
)
def test_extra_fields_are_forbidden(model: type[BaseModel], name: str, data: st.DataObject) -> None:
    if name in model.model_fields:
        name += "_extra"
    kwargs = data.draw(PARAM_MODELS[model])
    kwargs[name] = 1
    assert_rejected(model, kwargs, field=name, match="Extra inputs are not permitted")


@given(model=st.sampled_from([*PARAM_MODELS, Turn]), data=st.data())
def test_models_are_frozen(model: type[BaseModel], data: st.DataObject) -> None:
    value = data.draw(turns()) if model is Turn else model(**data.draw(PARAM_MODELS[model]))
    field = data.draw(st.sampled_from(sorted(model.model_fields)))
    before = value.model_dump()
    with pytest.raises(ValidationError, match="frozen"):
        setattr(value, field, None)
    assert value.model_dump() == before


@given(model=st.sampled_from(list(PARAM_MODELS)), bad=st.text(max_size=10), data=st.data())
def test_ids_must_be_uuids(model: type[BaseModel], bad: str, data: st.DataObject) -> None:
    kwargs = data.draw(PARAM_MODELS[model])
    id_fields = [n for n, v in kwargs.items() if isinstance(v, UUID)]
    field = data.draw(st.sampled_from(id_fields))
    kwargs[field] = bad
    assert_rejected(model, kwargs, field=field, match="UUID")

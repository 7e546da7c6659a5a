"""Hostile inputs at the doors that need no server (docs/security.md, *How refusal looks*):
parameter models, scopes and settings refuse with ``pydantic.ValidationError``, the schema
name checks with ``InvalidParameterError``, the command line with exit code 2, one error
line on stderr and no traceback.

The exact reproductions of what a hostile caller once got through come first, as plain
examples; the hypothesis properties after them break one argument at a time. The database
doors (repository, lifecycle, watchdog, ``PostgresStore.open``) are in
tests/property/test_hostile_inputs.py.
"""

from __future__ import annotations

import json
import os
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hostile_support import (
    bool_hostile,
    count_input,
    int_hostile,
    refused_now,
    schema_hostile,
    seconds_hostile,
    text_hostile,
    uuid_hostile,
)
from strategies import (
    cas_complete_kwargs,
    cas_terminal_kwargs,
    create_turn_kwargs,
    update_preflight_kwargs,
)
from turnstore.cli import ENV_DSN, EXIT_USAGE, main
from turnstore.errors import InvalidParameterError
from turnstore.model import (
    INT4_MAX,
    INT8_MAX,
    CasCompleteParams,
    CasTerminalParams,
    CreateTurnParams,
    RequesterType,
    TurnState,
    UpdatePreflightParams,
)
from turnstore.postgres import PostgresTurnRepository, advisory_lock_key, schema_sql
from turnstore.scope import AccessScope, FilterOp, ScopeConstraint, ScopeFilter
from turnstore.settings import KeepAliveSettings, WatchdogSettings
from turnstore.validation import MAX_ERROR_DETAIL_CHARS, check_schema_name

PROFILE_ENV = "TURNSTORE_HYPOTHESIS_PROFILE"
#: ``ci``: a few hundred inputs per property, seconds in all; ``thorough``: ten times more.
EXAMPLES = 1500 if os.environ.get(PROFILE_ENV) == "thorough" else 150
HOSTILE = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

TENANT = UUID("01890a5d-ac96-774b-bcce-b302099a8001")


def system_params(**changes: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "id": uuid4(),
        "tenant_id": TENANT,
        "chat_id": uuid4(),
        "request_id": uuid4(),
        "requester_type": RequesterType.SYSTEM,
    }
    return {**kwargs, **changes}


PREFLIGHT = {
    "reserve_tokens": 10,
    "max_output_tokens_applied": 5,
    "reserved_credits_micro": 1,
    "policy_version_applied": 1,
    "effective_model": "m",
    "minimal_generation_floor_applied": 1,
}

# --------------------------------------------------------------------------- reproductions


@pytest.mark.parametrize("unrestricted", ["yes", 1, "true", 1.0])
def test_a_scope_is_never_made_unrestricted_by_a_truthy_non_bool(unrestricted: object) -> None:
    with pytest.raises(pydantic.ValidationError, match="unrestricted"):
        AccessScope.model_validate({"unrestricted": unrestricted})
    with pytest.raises(pydantic.ValidationError, match="unrestricted"):
        AccessScope.model_validate({"unrestricted": unrestricted}, strict=False)


def test_a_scope_from_json_may_hold_uuid_strings_but_not_from_python() -> None:
    tenant = str(TENANT)
    data = {
        "constraints": [{"filters": [{"name": "owner_tenant_id", "op": "eq", "values": [tenant]}]}]
    }
    scope = AccessScope.model_validate_json(json.dumps(data))
    assert scope == AccessScope.for_tenant(TENANT)
    with pytest.raises(pydantic.ValidationError, match="uuid"):
        AccessScope.model_validate(data)
    with pytest.raises(pydantic.ValidationError):
        AccessScope.model_validate_json('{"unrestricted": "yes"}')
    with pytest.raises(pydantic.ValidationError):
        AccessScope.model_validate_json(
            '{"constraints": [{"filters": [{"name": "id", "op": "eq", "values": ["x"]}]}]}'
        )


@pytest.mark.parametrize("value", ["5", Decimal(5), 1.0, True])
def test_an_int_field_takes_only_an_int(value: object) -> None:
    with pytest.raises(pydantic.ValidationError, match="reserve_tokens"):
        CreateTurnParams(**system_params(**{**PREFLIGHT, "reserve_tokens": value}))
    with pytest.raises(pydantic.ValidationError, match="batch_limit"):
        WatchdogSettings(batch_limit=value)  # type: ignore[arg-type]
    with pytest.raises(pydantic.ValidationError, match="orphan_timeout_secs"):
        WatchdogSettings(orphan_timeout_secs=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["no", 0.0, 0, "false", None])
def test_a_bool_field_takes_only_a_bool(value: object) -> None:
    with pytest.raises(pydantic.ValidationError, match="web_search_enabled"):
        CreateTurnParams(**system_params(web_search_enabled=value))
    with pytest.raises(pydantic.ValidationError, match="heartbeat"):
        KeepAliveSettings(heartbeat=value)  # type: ignore[arg-type]


def test_a_keep_alive_interval_is_not_a_bool() -> None:
    with pytest.raises(pydantic.ValidationError, match="interval_secs"):
        KeepAliveSettings(interval_secs=True)


def test_error_detail_is_bounded_to_16_kib_of_characters() -> None:
    def fail(detail: str) -> CasTerminalParams:
        return CasTerminalParams(
            turn_id=uuid4(), state=TurnState.FAILED, error_code="e", error_detail=detail
        )

    assert fail("é" * MAX_ERROR_DETAIL_CHARS).error_detail is not None
    with pytest.raises(pydantic.ValidationError, match="error_detail"):
        fail("x" * (MAX_ERROR_DETAIL_CHARS + 1))
    with pytest.raises(pydantic.ValidationError, match="error_detail"):
        fail("x" * (256 * 1024 * 1024 // 1024))  # the 256 MiB detail, cut to keep this fast


@pytest.mark.parametrize(
    "schema",
    ["s" * 63 + "_A", "s" * 63 + "_B", "pg_probe", "bad\udcffname", "nul\x00", "", "€" * 22],
)
def test_schema_names_postgresql_would_change_or_refuse_are_refused_up_front(
    schema: str,
) -> None:
    for door in (check_schema_name, schema_sql, PostgresTurnRepository, advisory_lock_key):
        with pytest.raises(InvalidParameterError, match="schema"):
            door(schema)


def test_the_longest_schema_name_postgresql_keeps_is_accepted() -> None:
    assert PostgresTurnRepository("s" * 63).schema == "s" * 63
    assert PostgresTurnRepository("€" * 21).schema == "€" * 21  # 63 bytes


def assert_usage_error(code: int, capsys: pytest.CaptureFixture[str]) -> str:
    """Exit 2, nothing on stdout, and one error line (after argparse's usage synopsis)."""
    captured = capsys.readouterr()
    assert code == EXIT_USAGE, captured.err
    assert captured.out == ""
    assert "Traceback" not in captured.err
    lines = captured.err.splitlines()
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1, captured.err
    assert lines[-1] == errors[0]
    assert all(line.startswith(("usage:", " ")) for line in lines[:-1]), captured.err
    return errors[0]


def test_an_undecodable_byte_in_the_dsn_variable_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # How Python hands over a byte the locale cannot decode: a lone surrogate.
    monkeypatch.setenv(ENV_DSN, os.fsdecode(b"host=db\xff"))
    line = assert_usage_error(main(["migrate"]), capsys)
    assert f"${ENV_DSN}" in line


def test_an_undecodable_byte_in_an_argument_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    line = assert_usage_error(main(["sql", "--schema", os.fsdecode(b"s\xff")]), capsys)
    assert "argument 3" in line


# --------------------------------------------------------------------------- properties


def not_none(strategy: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return strategy.filter(lambda value: value is not None)


_REQUIRED_ID = uuid_hostile()
_OPTIONAL_ID = not_none(uuid_hostile())
_ENUM_HOSTILE = st.sampled_from(["USER", "admin", " user", "", 1, None, True, b"user", 0.5])
_STATE_HOSTILE = st.sampled_from(
    ["RUNNING", "done", "", 1, None, True, b"failed", RequesterType.USER]
)


def _ints(low: int, high: int, *, optional: bool) -> st.SearchStrategy[object]:
    return not_none(int_hostile(low, high)) if optional else int_hostile(low, high)


_PREFLIGHT_HOSTILE: dict[str, st.SearchStrategy[object]] = {
    "reserve_tokens": _ints(0, INT8_MAX, optional=True),
    "max_output_tokens_applied": _ints(0, INT4_MAX, optional=True),
    "reserved_credits_micro": _ints(0, INT8_MAX, optional=True),
    "policy_version_applied": _ints(0, INT8_MAX, optional=True),
    "effective_model": text_hostile(1024),
    "minimal_generation_floor_applied": _ints(0, INT4_MAX, optional=True),
}

#: For each parameter model: how to draw valid keyword arguments, and a hostile value for
#: each field.
MODELS: dict[type[pydantic.BaseModel], tuple[Any, dict[str, st.SearchStrategy[object]]]] = {
    CreateTurnParams: (
        create_turn_kwargs(),
        {
            "id": _REQUIRED_ID,
            "tenant_id": _REQUIRED_ID,
            "chat_id": _REQUIRED_ID,
            "request_id": _REQUIRED_ID,
            "requester_type": _ENUM_HOSTILE,
            "requester_user_id": _OPTIONAL_ID,
            "provider_name": text_hostile(128),
            "web_search_enabled": bool_hostile(),
            **_PREFLIGHT_HOSTILE,
        },
    ),
    CasTerminalParams: (
        cas_terminal_kwargs(),
        {
            "turn_id": _REQUIRED_ID,
            "state": _STATE_HOSTILE,
            "error_code": text_hostile(64),
            "error_detail": text_hostile(MAX_ERROR_DETAIL_CHARS, min_chars=0),
            "assistant_message_id": _OPTIONAL_ID,
            "provider_response_id": text_hostile(128),
        },
    ),
    CasCompleteParams: (
        cas_complete_kwargs(),
        {
            "turn_id": _REQUIRED_ID,
            "assistant_message_id": _REQUIRED_ID,
            "provider_response_id": text_hostile(128),
        },
    ),
    UpdatePreflightParams: (
        update_preflight_kwargs(),
        {"turn_id": _REQUIRED_ID, **_PREFLIGHT_HOSTILE},
    ),
}


@st.composite
def broken_model_kwargs(draw: st.DrawFn) -> tuple[type[pydantic.BaseModel], dict[str, Any]]:
    """A parameter model and valid keyword arguments with exactly one field made hostile."""
    model = draw(st.sampled_from(list(MODELS)))
    valid, fields = MODELS[model]
    kwargs = dict(draw(valid))
    name = draw(st.sampled_from(sorted(fields)))
    kwargs[name] = draw(fields[name])
    return model, kwargs


@HOSTILE
@given(broken_model_kwargs())
def test_a_parameter_model_refuses_any_hostile_field(
    case: tuple[type[pydantic.BaseModel], dict[str, Any]],
) -> None:
    model, kwargs = case
    error = refused_now(lambda: model(**kwargs))
    assert isinstance(error, pydantic.ValidationError)


_SETTINGS: dict[type[pydantic.BaseModel], dict[str, st.SearchStrategy[object]]] = {
    KeepAliveSettings: {
        "interval_secs": seconds_hostile(100.0),
        "orphan_timeout_secs": int_hostile(60, 3600),
        "heartbeat": bool_hostile(),
    },
    WatchdogSettings: {
        "orphan_timeout_secs": int_hostile(60, 3600),
        "scan_interval_secs": seconds_hostile(3600.0),
        "batch_limit": int_hostile(1, 10_000),
    },
}


@HOSTILE
@given(st.data())
def test_settings_refuse_any_hostile_field(data: st.DataObject) -> None:
    model = data.draw(st.sampled_from(list(_SETTINGS)))
    name = data.draw(st.sampled_from(sorted(_SETTINGS[model])))
    value = data.draw(_SETTINGS[model][name])
    error = refused_now(lambda: model(**{name: value}))
    assert isinstance(error, pydantic.ValidationError)


def _scope_dict(value: object, where: str) -> dict[str, Any]:
    filter_: dict[str, Any] = {"name": "owner_tenant_id", "op": "eq", "values": [TENANT]}
    if where == "unrestricted":
        return {"unrestricted": value}
    if where == "op":
        filter_["op"] = value
    elif where == "name":
        filter_["name"] = value
    elif where == "values":
        filter_["values"] = value
    else:
        filter_["values"] = [value]
    return {"constraints": [{"filters": [filter_]}]}


_SCOPE_PARTS: dict[str, st.SearchStrategy[object]] = {
    "unrestricted": bool_hostile(),
    "op": st.sampled_from(["EQ", "=", "like", "", None, 1, True, FilterOp]),
    "name": st.sampled_from(["", None, 1, b"id", ["id"]]),
    "values": st.sampled_from([None, "x", str(TENANT), TENANT, 5, {"a": 1}]),
    "value": uuid_hostile(),
}


@HOSTILE
@given(st.data())
def test_a_scope_from_python_values_refuses_any_hostile_part(data: st.DataObject) -> None:
    where = data.draw(st.sampled_from(sorted(_SCOPE_PARTS)))
    value = data.draw(_SCOPE_PARTS[where])
    error = refused_now(lambda: AccessScope.model_validate(_scope_dict(value, where)))
    assert isinstance(error, pydantic.ValidationError)


@HOSTILE
@given(uuid_hostile())
def test_scope_builders_refuse_a_hostile_id(value: object) -> None:
    for build in (AccessScope.for_tenant, AccessScope.for_resource):
        refused_now(lambda: build(value))  # type: ignore[arg-type]  # noqa: B023
    refused_now(lambda: ScopeFilter(name="id", op=FilterOp.IN, values=(value,)))  # type: ignore[arg-type]
    refused_now(lambda: ScopeConstraint([ScopeFilter.eq("id", value)]))  # type: ignore[arg-type]


@HOSTILE
@given(schema_hostile())
def test_every_schema_door_refuses_a_hostile_name(schema: object) -> None:
    for door in (check_schema_name, schema_sql, PostgresTurnRepository, advisory_lock_key):
        refused_now(lambda: door(schema), invalid_parameter=True)  # type: ignore[arg-type]  # noqa: B023


# --------------------------------------------------------------------------- the command line

_POISON = st.sampled_from(["\x00", "\udcff", "\udc80", "\ud800"])
_TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=12)
_POISONED = st.builds(lambda a, bad, b: a + bad + b, _TEXT, _POISON, _TEXT)
_BAD_DSNS = st.sampled_from(["not a dsn", "host='unterminated", "=x", "a=b c"]) | _POISONED
_BAD_INTS = st.sampled_from(
    ["\u0661\u0662\u0660", " 60", "6_0", "60.0", "1e3", "0x3c", "", "99999999999", "sixty", "+-1"]
) | st.integers().map(lambda n: str(n) + ".5")
_SCHEMA_ARGS: st.SearchStrategy[str] = schema_hostile().filter(lambda s: isinstance(s, str))  # type: ignore[assignment]


@st.composite
def hostile_command_lines(draw: st.DrawFn) -> tuple[list[str], str | None]:
    """A command line (and ``$TURNSTORE_DSN``) that is bad usage however it is read."""
    kind = draw(st.sampled_from(["schema", "dsn", "env", "int", "argv"]))
    if kind == "schema":
        command = draw(st.sampled_from(["sql", "migrate", "sweep", "demo"]))
        extra = ["--once"] if command == "sweep" else []
        return [command, *extra, "--schema", draw(_SCHEMA_ARGS), "--dsn", "host=x"], None
    if kind == "dsn":
        words = draw(st.sampled_from([["migrate"], ["migrate", "--check"], ["sweep", "--once"]]))
        return [*words, "--dsn", draw(_BAD_DSNS)], None
    if kind == "env":
        env = draw(st.builds(lambda a, b: a + "\udcff" + b, _TEXT, _TEXT))
        return draw(st.sampled_from([["migrate"], ["sweep", "--once"]])), env
    if kind == "int":
        option = draw(st.sampled_from(["--timeout", "--limit"]))
        return ["sweep", "--once", "--dsn", "host=x", option, draw(_BAD_INTS)], None
    argv = draw(st.lists(_TEXT, max_size=4))
    argv.insert(draw(st.integers(0, len(argv))), draw(_POISONED))
    return argv, None


@HOSTILE
@given(case=hostile_command_lines())
def test_the_command_line_refuses_hostile_arguments_with_one_line_and_exit_2(
    case: tuple[list[str], str | None],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv, env = case
    if env is None:
        monkeypatch.delenv(ENV_DSN, raising=False)
    else:
        monkeypatch.setenv(ENV_DSN, env)
    capsys.readouterr()
    count_input()
    assert_usage_error(main(argv), capsys)


@pytest.mark.parametrize("value", [b"failed", bytearray(b"failed"), 3])
def test_an_enum_field_takes_its_string_value_only(value: object) -> None:
    """Found by the property test: lax pydantic decoded ``b"failed"`` into a state."""
    with pytest.raises(pydantic.ValidationError):
        CasTerminalParams(turn_id=uuid4(), state=value, error_code="x")

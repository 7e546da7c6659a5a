"""Hostile values for the hostile-input suites (tests/unit/test_hostile_models.py and
tests/property/test_hostile_inputs.py), the count of inputs tried, and the one assertion
every refusal must pass.

Each ``*_hostile`` strategy draws values a careless or malicious caller could pass where a
public door expects one kind of argument: the wrong type (a string id, a bool for an int, a
dict for a scope), an out-of-range value, or text PostgreSQL cannot store. None of them is
ever valid for that argument, so every call given one must be refused.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from decimal import Decimal
from uuid import UUID, uuid4

import pydantic
import pytest
from hypothesis import strategies as st

from turnstore.errors import InvalidParameterError, TurnStoreError
from turnstore.scope import AccessScope

__all__ = [
    "DOCUMENTED",
    "HOSTILE_INPUTS",
    "bool_hostile",
    "count_input",
    "int_hostile",
    "refused",
    "refused_now",
    "schema_hostile",
    "scope_hostile",
    "seconds_hostile",
    "text_hostile",
    "uuid_hostile",
]

#: The exceptions a public door may raise for a bad argument: nothing else may escape.
DOCUMENTED: tuple[type[BaseException], ...] = (pydantic.ValidationError, TurnStoreError)


class _Counter:
    """How many hostile inputs this run tried (printed by tests/conftest.py at the end)."""

    def __init__(self) -> None:
        self.count = 0


HOSTILE_INPUTS = _Counter()


def count_input() -> None:
    HOSTILE_INPUTS.count += 1


def _judge(exc: BaseException, invalid_parameter: bool) -> BaseException:
    if not isinstance(exc, DOCUMENTED):
        raise exc
    if invalid_parameter and not isinstance(exc, InvalidParameterError):
        pytest.fail(f"expected InvalidParameterError, got {type(exc).__name__}: {exc}")
    if isinstance(exc, InvalidParameterError):
        assert exc.code == "invalid_parameter"
        assert getattr(exc, "retryable", False) is False
    return exc


def refused_now(call: Callable[[], object], *, invalid_parameter: bool = False) -> BaseException:
    """``call()`` must raise one of the ``DOCUMENTED`` errors (with ``invalid_parameter``,
    an ``InvalidParameterError``); anything else escapes and fails the test. Counts one
    hostile input."""
    count_input()
    try:
        call()
    except Exception as exc:
        return _judge(exc, invalid_parameter)
    pytest.fail("a hostile input was accepted")


async def refused(
    call: Callable[[], Awaitable[object]], *, invalid_parameter: bool = False
) -> BaseException:
    """``refused_now`` for a coroutine: ``await call()`` must raise a documented error."""
    count_input()
    try:
        await call()
    except Exception as exc:
        return _judge(exc, invalid_parameter)
    pytest.fail("a hostile input was accepted")


_UUID = UUID("01890a5d-ac96-774b-bcce-b302099a8057")

#: Things that are not a ``uuid.UUID``, several of which lax validation would turn into one.
_NOT_UUIDS: list[object] = [
    None,
    str(_UUID),
    _UUID.hex,
    f" {_UUID} ",
    _UUID.bytes,
    _UUID.int,
    "",
    "\x00",
    "\udcff",
    True,
    0,
    1.5,
    Decimal(1),
    [_UUID],
    (_UUID,),
    {"id": _UUID},
    object(),
    AccessScope(),
]

_NOT_INTS: list[object] = [
    None,
    True,
    False,
    1.0,
    60.0,
    "60",
    "5",
    Decimal(60),
    Decimal("5"),
    float("nan"),
    float("inf"),
    b"60",
    [60],
    _UUID,
]

_NOT_BOOLS: list[object] = [None, 0, 1, 0.0, 1.0, "no", "yes", "true", "", b"1", [True], Decimal(1)]

_NOT_SECONDS: list[object] = [
    None,
    True,
    False,
    0,
    0.0,
    -1,
    -0.5,
    "30",
    Decimal(30),
    float("nan"),
    float("inf"),
    -float("inf"),
    [30],
]


def uuid_hostile() -> st.SearchStrategy[object]:
    """Never a ``uuid.UUID``: strings (canonical ones too), ints, bytes, None, containers."""
    return st.sampled_from(_NOT_UUIDS) | st.uuids().map(str) | st.text(max_size=40)


def int_hostile(low: int, high: int) -> st.SearchStrategy[object]:
    """Never an ``int`` in ``[low, high]``: out of range, bools, floats, numeric strings."""
    out_of_range = st.integers(max_value=low - 1) | st.integers(min_value=high + 1)
    floats = st.floats(allow_nan=True, allow_infinity=True)
    return st.sampled_from(_NOT_INTS) | out_of_range | floats | st.integers().map(str)


def bool_hostile() -> st.SearchStrategy[object]:
    """Never ``True`` or ``False``."""
    return st.sampled_from(_NOT_BOOLS) | st.integers() | st.text(max_size=5)


def seconds_hostile(high: float) -> st.SearchStrategy[object]:
    """Never a finite number of seconds in ``(0, high]`` (bools included)."""
    too_big = st.floats(min_value=high, exclude_min=True, allow_nan=False)
    negative = st.floats(max_value=0, allow_nan=False)
    return st.sampled_from(_NOT_SECONDS) | too_big | negative | st.integers(max_value=0)


def text_hostile(max_chars: int, *, min_chars: int = 1) -> st.SearchStrategy[object]:
    """Never a storable ``str`` of ``min_chars..max_chars`` characters: too long, NUL,
    a lone surrogate, bytes, numbers, or too short."""
    chars = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")
    # One character repeated: drawing thousands of characters one by one would be slow.
    too_long = st.builds(lambda c, k: c * (max_chars + 1 + k), chars, st.integers(0, 3))

    def poisoned(text: str, bad: str, at: int) -> str:
        cut = at % (len(text) + 1)
        return text[:cut] + bad + text[cut:]

    short = st.text(chars, max_size=max(1, min(max_chars - 1, 20)))
    bad_char = st.sampled_from(["\x00", "\ud800", "\udcff", "\udfff"])
    poison = st.builds(poisoned, short, bad_char, st.integers(0, 20))
    wrong_type = st.sampled_from([b"x", 5, 1.0, True, ["x"], _UUID, Decimal(1)])
    result = too_long | poison | wrong_type
    if min_chars > 0:
        result = result | st.just("")
    return result


def schema_hostile() -> st.SearchStrategy[object]:
    """Never a schema name PostgreSQL keeps as given: empty, over 63 bytes (in characters
    or in multi-byte UTF-8), ``pg_``-prefixed, NUL, lone surrogates, not a str."""
    chars = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")
    long_ascii = st.integers(64, 80).map(lambda n: "s" * n)
    long_utf8 = st.integers(22, 40).map(lambda n: "\u20ac" * n)  # 3 bytes each: 66+ bytes
    reserved = st.text(chars, max_size=10).map(lambda s: "pg_" + s) | st.sampled_from(
        ["pg_probe", "PG_catalog", "Pg_x"]
    )
    poison = st.builds(
        lambda a, bad, b: a + bad + b,
        st.text(chars, max_size=10),
        st.sampled_from(["\x00", "\ud800", "\udcff"]),
        st.text(chars, max_size=10),
    )
    wrong_type = st.sampled_from([None, b"turnstore", 5, True, ["turnstore"], _UUID])
    return st.just("") | long_ascii | long_utf8 | reserved | poison | wrong_type


def scope_hostile() -> st.SearchStrategy[object]:
    """Never an ``AccessScope``: its dict form (allow-all included), None, a tenant id, a
    string, or an ``AccessScope`` built without validation with a truthy non-bool."""
    forged = [
        AccessScope.model_construct(unrestricted="yes"),  # type: ignore[arg-type]
        AccessScope.model_construct(unrestricted=1),  # type: ignore[arg-type]
    ]
    values: list[object] = [
        None,
        {"unrestricted": True},
        {"unrestricted": "yes"},
        "allow_all",
        True,
        1,
        _UUID,
        [],
        AccessScope,
        uuid4,
    ]
    return st.sampled_from(values + forged)

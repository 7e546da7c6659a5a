"""The argument checks of every public door, in one place (docs/design.md, *Access scopes*).

Every public method checks its arguments here before any SQL runs, so a wrong type or an
out-of-range value is refused the same way on both backends, in the lifecycle and in the
watchdog: an ``InvalidParameterError`` (code ``invalid_parameter``, not retryable) naming
the argument, and nothing written. Parameter *models* refuse bad fields with a
``pydantic.ValidationError`` instead; the field types below make them strict.

Nothing coerces: an id is a ``uuid.UUID`` (a string is refused), an int is an ``int`` (a
``bool``, a ``float``, a ``Decimal`` or a numeric string is refused), a bool is a ``bool``.
One exception, on purpose: a model read from JSON text (``model_validate_json``) accepts
ids as strings, because JSON has no UUID type; the string must still be a valid UUID.

This module sits below the model: ``check_scope`` lives next to ``AccessScope`` in
``turnstore.scope`` and ``check_turn`` next to ``Turn`` in ``turnstore.model``, both built
on ``check_instance`` here.

The text limits are those of docs/security.md, *Limits*; each is mirrored by a column type
or a CHECK constraint of ``turnstore/sql/`` (``char_length``, as pydantic's ``max_length``
counts characters).
"""

from __future__ import annotations

import math
from typing import Annotated, Any
from uuid import UUID

from pydantic import BeforeValidator, ValidationInfo

from turnstore.errors import InvalidParameterError

__all__ = [
    "INT4_MAX",
    "INT8_MAX",
    "MAX_EFFECTIVE_MODEL_CHARS",
    "MAX_ERROR_CODE_CHARS",
    "MAX_ERROR_DETAIL_CHARS",
    "MAX_PROVIDER_NAME_CHARS",
    "MAX_PROVIDER_RESPONSE_ID_CHARS",
    "MAX_SCHEMA_NAME_BYTES",
    "MAX_TIMEOUT_SECS",
    "ExactBool",
    "Id",
    "Number",
    "check_bool",
    "check_callable",
    "check_instance",
    "check_int",
    "check_optional_uuid",
    "check_pool_sizes",
    "check_schema_name",
    "check_seconds",
    "check_timeout_ms",
    "check_text",
    "check_uuid",
    "exact_bool",
    "exact_number",
    "strict_uuid",
    "validate_orphan_args",
]

INT4_MAX = 2**31 - 1
INT8_MAX = 2**63 - 1

#: The stored texts and their maximum length in characters (docs/security.md, *Limits*).
MAX_ERROR_CODE_CHARS = 64
#: 16 KiB of characters: room for a provider's error body or a short stack trace, while a
#: runaway detail (a whole response, a log) is refused instead of bloating every read.
MAX_ERROR_DETAIL_CHARS = 16384
MAX_PROVIDER_NAME_CHARS = 128
MAX_PROVIDER_RESPONSE_ID_CHARS = 128
MAX_EFFECTIVE_MODEL_CHARS = 1024
#: PostgreSQL's NAMEDATALEN - 1: a longer identifier is silently truncated by the server,
#: so two long names would share one table.
MAX_SCHEMA_NAME_BYTES = 63


def _type_name(value: object) -> str:
    return type(value).__name__


def _preview(value: str, limit: int = 80) -> str:
    """``repr`` of ``value`` (which escapes NUL and lone surrogates), cut to ``limit``."""
    return repr(value) if len(value) <= limit else repr(value[:limit]) + "..."


# ---- method arguments: InvalidParameterError naming the argument


def check_instance(name: str, value: object, kind: type, kind_name: str | None = None) -> None:
    """Refuse ``value`` unless it is a ``kind``."""
    if not isinstance(value, kind):
        expected = kind_name or kind.__name__
        article = "an" if expected[0].lower() in "aeio" else "a"
        raise InvalidParameterError(f"{name} must be {article} {expected}, got {_type_name(value)}")


def check_uuid(name: str, value: object) -> None:
    """Refuse an id that is not a ``uuid.UUID`` (a string is refused too)."""
    if not isinstance(value, UUID):
        raise InvalidParameterError(f"{name} must be a uuid.UUID, got {_type_name(value)}")


def check_optional_uuid(name: str, value: object) -> None:
    """``check_uuid``, with ``None`` allowed."""
    if value is not None and not isinstance(value, UUID):
        raise InvalidParameterError(f"{name} must be a uuid.UUID or None, got {_type_name(value)}")


def check_bool(name: str, value: object) -> None:
    """Refuse anything but ``True`` or ``False`` (``0``, ``1``, ``"no"`` are refused)."""
    if type(value) is not bool:
        raise InvalidParameterError(f"{name} must be a bool, got {_type_name(value)}")


def check_int(name: str, value: object, low: int, high: int) -> None:
    """Refuse anything but an ``int`` in ``[low, high]`` (a ``bool`` is refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidParameterError(f"{name} must be an int in [{low}, {high}], got {value!r}")


def check_seconds(name: str, value: object, high: float) -> None:
    """Refuse anything but a finite ``int`` or ``float`` in ``(0, high]`` (not a bool)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 < value <= high
    ):
        raise InvalidParameterError(
            f"{name} must be a number of seconds in (0, {high}], got {value!r}"
        )


#: The longest lock or statement timeout a store accepts: a day.
MAX_TIMEOUT_SECS = 86_400.0


def check_timeout_ms(name: str, value: object) -> int | None:
    """A lock or statement timeout in seconds as whole milliseconds (``None`` passes: the
    server's own setting); refuse anything but a finite number in [0.001, 86400]."""
    if value is None:
        return None
    check_seconds(name, value, MAX_TIMEOUT_SECS)
    assert isinstance(value, int | float)
    millis = round(value * 1000)
    if millis < 1:
        raise InvalidParameterError(f"{name} must be at least 0.001 seconds, got {value!r}")
    return millis


def check_callable(name: str, value: object) -> None:
    """Refuse a hook or clock that cannot be called (``None`` is checked by the caller)."""
    if not callable(value):
        raise InvalidParameterError(f"{name} must be callable, got {_type_name(value)}")


def _text_problem(value: str) -> str | None:
    """Why PostgreSQL could not store ``value`` as text, or ``None``."""
    if "\x00" in value:
        return "must not contain NUL characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode (no lone surrogates)"
    return None


def check_text(name: str, value: object, *, max_chars: int, min_chars: int = 1) -> None:
    """Refuse anything but a storable ``str`` of ``min_chars..max_chars`` characters."""
    if not isinstance(value, str):
        raise InvalidParameterError(f"{name} must be a str, got {_type_name(value)}")
    problem = _text_problem(value)
    if problem is None and not min_chars <= len(value) <= max_chars:
        problem = f"must be {min_chars} to {max_chars} characters long, got {len(value)}"
    if problem is not None:
        raise InvalidParameterError(f"{name} {problem}")


def check_schema_name(value: object, name: str = "schema") -> str:
    """A schema name PostgreSQL keeps as given: 1 to 63 bytes of valid UTF-8, no NUL, not
    starting with ``pg_`` (reserved for system schemas). Returns it."""
    if not isinstance(value, str):
        raise InvalidParameterError(f"{name} must be a str, got {_type_name(value)}")
    problem = _text_problem(value)
    if problem is None:
        size = len(value.encode("utf-8"))
        if size == 0:
            problem = "must not be empty"
        elif size > MAX_SCHEMA_NAME_BYTES:
            problem = (
                f"is longer than PostgreSQL's {MAX_SCHEMA_NAME_BYTES} bytes ({size} bytes in"
                " UTF-8; PostgreSQL would silently truncate it)"
            )
        elif value.lower().startswith("pg_"):
            problem = "must not start with 'pg_' (reserved for PostgreSQL's own schemas)"
    if problem is not None:
        raise InvalidParameterError(f"{name} {_preview(value)} {problem}")
    return value


def check_pool_sizes(min_size: object, max_size: object, *, limit: int = 10_000) -> None:
    """``0 <= min_size <= limit`` and ``max(1, min_size) <= max_size <= limit``, ints."""
    check_int("min_size", min_size, 0, limit)
    assert isinstance(min_size, int)
    check_int("max_size", max_size, max(1, min_size), limit)


_NOT_GIVEN: Any = object()


def validate_orphan_args(timeout_secs: object, limit: object = _NOT_GIVEN) -> None:
    """The scalar rules of the orphan methods: ``0 <= timeout_secs <= 2**31 - 1`` and, when
    the method takes one, ``1 <= limit <= 2**31 - 1`` (``None`` is no limit: refused).
    Ints, not bools. Raises ``InvalidParameterError``."""
    check_int("timeout_secs", timeout_secs, 0, INT4_MAX)
    if limit is not _NOT_GIVEN:
        check_int("limit", limit, 1, INT4_MAX)


# ---- model fields: strict even when a caller asks pydantic for lax validation


def exact_bool(value: object) -> object:
    """A bool field's check: ``True`` or ``False`` only, even under ``strict=False``."""
    if type(value) is not bool:
        raise ValueError(f"expected a bool, got {_type_name(value)}")
    return value


def strict_uuid(value: object, info: ValidationInfo) -> object:
    """An id field's check: a ``uuid.UUID``; from JSON text, also a string (JSON has no
    UUID type), which pydantic then parses. Holds even under ``strict=False``."""
    if isinstance(value, UUID) or (info.mode == "json" and isinstance(value, str)):
        return value
    raise ValueError(f"expected a uuid.UUID, got {_type_name(value)}")


def exact_number(value: object) -> object:
    """A seconds field's check: an ``int`` or a ``float``, not a bool, a ``Decimal`` or a
    string (strict pydantic still takes a ``Decimal`` for a float)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {_type_name(value)}")
    return value


#: A bool field that accepts nothing else.
ExactBool = Annotated[bool, BeforeValidator(exact_bool)]
#: An id field: ``uuid.UUID`` from Python, a UUID string only from JSON text.
Id = Annotated[UUID, BeforeValidator(strict_uuid)]
#: A float field (seconds) that takes an ``int`` or a ``float`` and nothing else.
Number = Annotated[float, BeforeValidator(exact_number)]

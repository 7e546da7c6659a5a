"""The domain model: the ``Turn`` row, its enums, and the validated parameter models.

Everything here is pure: no I/O. Parameter models reject bad input on construction with a
``pydantic.ValidationError`` (a ``ValueError``), so nothing reaches the database unchecked.
They are strict: ids are ``uuid.UUID`` objects, ints are ints (not bools, floats, Decimals
or numeric strings), bools are bools; enums may be given by value (``"failed"``). From JSON
text (``model_validate_json``) ids may be UUID strings. The limits (docs/security.md,
*Limits*) mirror the column types and CHECK constraints of ``turnstore/sql/``.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)

from turnstore.fingerprint import MAX_FINGERPRINT_LENGTH, normalize_fingerprint
from turnstore.scope import check_scope
from turnstore.validation import (
    INT4_MAX,
    INT8_MAX,
    MAX_EFFECTIVE_MODEL_CHARS,
    MAX_ERROR_CODE_CHARS,
    MAX_ERROR_DETAIL_CHARS,
    MAX_PROVIDER_NAME_CHARS,
    MAX_PROVIDER_RESPONSE_ID_CHARS,
    ExactBool,
    Id,
    check_instance,
    check_int,
    check_uuid,
    validate_orphan_args,
)

__all__ = [
    "INT4_MAX",
    "INT8_MAX",
    "MAX_RETENTION_BATCH",
    "CasCompleteParams",
    "CasTerminalParams",
    "CreateTurnParams",
    "RequesterType",
    "ToolCallType",
    "Turn",
    "TurnState",
    "UpdatePreflightParams",
    "check_instance",
    "check_scope",
    "check_turn",
    "check_uuid",
    "trusted_turn",
    "validate_orphan_args",
    "validate_retention_args",
]


class TurnState(str, Enum):
    """The four states of a turn; only ``running`` is not terminal."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self is not TurnState.RUNNING

    def __str__(self) -> str:
        return self.value


class RequesterType(str, Enum):
    """Who asked for the turn: an end user, or the system (e.g. a scheduled job)."""

    USER = "user"
    SYSTEM = "system"

    def __str__(self) -> str:
        return self.value


class ToolCallType(str, Enum):
    """Which completed-tool-call counter ``increment_tool_calls`` bumps."""

    WEB_SEARCH = "web_search"
    CODE_INTERPRETER = "code_interpreter"
    FILE_SEARCH = "file_search"

    @property
    def column(self) -> str:
        """The counter column this tool maps to."""
        return f"{self.value}_completed_count"

    def __str__(self) -> str:
        return self.value


def _storable_text(value: object) -> object:
    """PostgreSQL text cannot hold NUL, and only valid UTF-8 reaches the server.

    It runs before pydantic's own ``str`` check, which would reject a lone surrogate with a
    vaguer message and would decode ``bytes`` (NUL included) past this check.
    """
    if not isinstance(value, str):
        raise ValueError(f"text must be a str, got {type(value).__name__}")
    if "\x00" in value:
        raise ValueError("text must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("text must be valid Unicode (no lone surrogates)") from exc
    return value


def _not_bool(value: object) -> object:
    """``True`` is an ``int`` to Python, but never a token count or a version to a caller."""
    if isinstance(value, bool):
        raise ValueError("expected an integer, got a bool")
    return value


ErrorDetail = Annotated[
    str, Field(max_length=MAX_ERROR_DETAIL_CHARS), BeforeValidator(_storable_text)
]
NonNegInt4 = Annotated[int, BeforeValidator(_not_bool), Field(ge=0, le=INT4_MAX)]
NonNegInt8 = Annotated[int, BeforeValidator(_not_bool), Field(ge=0, le=INT8_MAX)]
# The length bounds sit on the str itself so that the message counts characters (as
# varchar(n) does) instead of "items".
ErrorCode = Annotated[
    str, Field(min_length=1, max_length=MAX_ERROR_CODE_CHARS), BeforeValidator(_storable_text)
]
ProviderName = Annotated[
    str, Field(min_length=1, max_length=MAX_PROVIDER_NAME_CHARS), BeforeValidator(_storable_text)
]
ProviderResponseId = Annotated[
    str,
    Field(min_length=1, max_length=MAX_PROVIDER_RESPONSE_ID_CHARS),
    BeforeValidator(_storable_text),
]
EffectiveModel = Annotated[
    str,
    Field(min_length=1, max_length=MAX_EFFECTIVE_MODEL_CHARS),
    BeforeValidator(_storable_text),
]
# Validators run last-listed first: bytes become hex before the text check.
RequestFingerprint = Annotated[
    str,
    Field(min_length=1, max_length=MAX_FINGERPRINT_LENGTH),
    BeforeValidator(_storable_text),
    BeforeValidator(normalize_fingerprint),
]

_PARAMS_CONFIG = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=False, strict=True)


def _enum_text(value: object) -> object:
    """An enum field takes a member or its exact ``str`` value, never bytes or a number
    (pydantic's lax mode would decode ``b"failed"``)."""
    if not isinstance(value, str):
        raise ValueError(f"must be one of the enum's string values, got {type(value).__name__}")
    return value


# Enums may be given by value: a closed set of strings, nothing is coerced.
_RequesterTypeField = Annotated[RequesterType, Field(strict=False), BeforeValidator(_enum_text)]
_StateField = Annotated[TurnState, Field(strict=False), BeforeValidator(_enum_text)]

PREFLIGHT_FIELDS: tuple[str, ...] = (
    "reserve_tokens",
    "max_output_tokens_applied",
    "reserved_credits_micro",
    "policy_version_applied",
    "effective_model",
    "minimal_generation_floor_applied",
)


class Turn(BaseModel):
    """One row of ``chat_turns``: immutable; a transition returns a new row."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    id: Id
    tenant_id: Id
    chat_id: Id
    request_id: Id
    requester_type: _RequesterTypeField
    requester_user_id: Id | None
    state: _StateField
    provider_name: str | None = None
    provider_response_id: str | None = None
    assistant_message_id: Id | None = None
    error_code: str | None = None
    error_detail: str | None = None
    reserve_tokens: int | None = None
    max_output_tokens_applied: int | None = None
    reserved_credits_micro: int | None = None
    policy_version_applied: int | None = None
    effective_model: str | None = None
    minimal_generation_floor_applied: int | None = None
    web_search_enabled: ExactBool = False
    web_search_completed_count: int = 0
    code_interpreter_completed_count: int = 0
    file_search_completed_count: int = 0
    deleted_at: datetime | None = None
    replaced_by_request_id: Id | None = None
    started_at: datetime
    last_progress_at: datetime | None
    completed_at: datetime | None = None
    updated_at: datetime
    request_fingerprint: str | None = None

    @property
    def is_deleted(self) -> bool:
        return self.deleted_at is not None

    @property
    def is_terminal(self) -> bool:
        return self.state.is_terminal


_TURN_FIELDS = frozenset(Turn.model_fields)
_new_turn = Turn.__new__
_set = object.__setattr__


def trusted_turn(data: dict[str, Any]) -> Turn:
    """A ``Turn`` holding ``data`` (every field, each already of its type), unvalidated.

    For backends only: their values come from validated parameter models, the database's
    typed columns or a clock, so running the model's validation again would cost more than
    the rest of a call. The result equals a validated ``Turn`` with every field set.
    """
    turn = _new_turn(Turn)
    _set(turn, "__dict__", data)
    _set(turn, "__pydantic_fields_set__", set(_TURN_FIELDS))
    _set(turn, "__pydantic_extra__", None)
    _set(turn, "__pydantic_private__", None)
    return turn


def _check_reserve(reserve: int | None, max_output: int | None) -> None:
    if reserve is not None and max_output is not None and reserve < max_output:
        raise ValueError(
            f"reserve_tokens ({reserve}) must be >= max_output_tokens_applied ({max_output})"
        )


class CreateTurnParams(BaseModel):
    """What ``create_turn`` inserts. Ids are caller-provided (UUIDv7 recommended)."""

    model_config = _PARAMS_CONFIG

    id: Id
    tenant_id: Id
    chat_id: Id
    request_id: Id
    requester_type: _RequesterTypeField
    requester_user_id: Id | None = None
    provider_name: ProviderName | None = None
    reserve_tokens: NonNegInt8 | None = None
    max_output_tokens_applied: NonNegInt4 | None = None
    reserved_credits_micro: NonNegInt8 | None = None
    policy_version_applied: NonNegInt8 | None = None
    effective_model: EffectiveModel | None = None
    minimal_generation_floor_applied: NonNegInt4 | None = None
    web_search_enabled: ExactBool = False
    #: What the request asked for (``turnstore.request_fingerprint`` computes one): a resend
    #: of the same request id with another fingerprint is refused, not replayed. ``bytes``
    #: (a raw digest) are stored as hex.
    request_fingerprint: RequestFingerprint | None = None

    @model_validator(mode="after")
    def _rules(self) -> CreateTurnParams:
        if self.requester_type is RequesterType.USER and self.requester_user_id is None:
            raise ValueError("requester_user_id is required when requester_type is 'user'")
        given = [getattr(self, name) is not None for name in PREFLIGHT_FIELDS]
        if any(given) and not all(given):
            missing = [n for n, g in zip(PREFLIGHT_FIELDS, given, strict=True) if not g]
            raise ValueError(
                "preflight fields are all set or all omitted; missing: " + ", ".join(missing)
            )
        _check_reserve(self.reserve_tokens, self.max_output_tokens_applied)
        return self


class CasTerminalParams(BaseModel):
    """A compare-and-swap from ``running`` to a terminal ``state``.

    ``completed`` requires ``assistant_message_id`` (completed means replayable) and
    forbids ``error_code``; ``failed`` requires ``error_code``.
    """

    model_config = _PARAMS_CONFIG

    turn_id: Id
    state: _StateField
    error_code: ErrorCode | None = None
    error_detail: ErrorDetail | None = None
    assistant_message_id: Id | None = None
    provider_response_id: ProviderResponseId | None = None

    @model_validator(mode="after")
    def _rules(self) -> CasTerminalParams:
        if not self.state.is_terminal:
            raise ValueError(f"target state must be terminal, got '{self.state.value}'")
        if self.state is TurnState.COMPLETED:
            if self.error_code is not None:
                raise ValueError("a completed turn cannot carry an error_code")
            if self.assistant_message_id is None:
                raise ValueError("completing a turn requires assistant_message_id")
        if self.state is TurnState.FAILED and self.error_code is None:
            raise ValueError("failing a turn requires an error_code")
        return self


class CasCompleteParams(BaseModel):
    """A compare-and-swap from ``running`` to ``completed``."""

    model_config = _PARAMS_CONFIG

    turn_id: Id
    assistant_message_id: Id
    provider_response_id: ProviderResponseId | None = None


class UpdatePreflightParams(BaseModel):
    """The six preflight fields, written together while the turn runs."""

    model_config = _PARAMS_CONFIG

    turn_id: Id
    reserve_tokens: NonNegInt8
    max_output_tokens_applied: NonNegInt4
    reserved_credits_micro: NonNegInt8
    policy_version_applied: NonNegInt8
    effective_model: EffectiveModel
    minimal_generation_floor_applied: NonNegInt4

    @model_validator(mode="after")
    def _rules(self) -> UpdatePreflightParams:
        _check_reserve(self.reserve_tokens, self.max_output_tokens_applied)
        return self


# ---- the argument check of a method taking a turn (the others: turnstore.validation)


def check_turn(name: str, value: object) -> None:
    """Refuse anything but a ``Turn`` whose ids are ``uuid.UUID`` objects (a ``Turn`` built
    with ``model_construct`` is not validated): ``InvalidParameterError``."""
    check_instance(name, value, Turn)
    assert isinstance(value, Turn)
    for field in ("id", "tenant_id", "chat_id", "request_id"):
        check_uuid(f"{name}.{field}", getattr(value, field, None))


#: The most rows one retention batch deletes (in one transaction).
MAX_RETENTION_BATCH = 100_000


def validate_retention_args(older_than_secs: object | None, limit: object | None = None) -> None:
    """The scalar rules of the retention methods: ``0 <= older_than_secs <= 2**31 - 1`` and
    ``1 <= limit <= 100000``, ints (not bools). Raises ``InvalidParameterError``."""
    if older_than_secs is not None:
        check_int("older_than_secs", older_than_secs, 0, INT4_MAX)
    if limit is not None:
        check_int("limit", limit, 1, MAX_RETENTION_BATCH)

"""The domain model: the ``Turn`` row, its enums, and the validated parameter models.

Everything here is pure: no I/O. Parameter models reject bad input on construction with a
``pydantic.ValidationError`` (a ``ValueError``), so nothing reaches the database unchecked.
The limits mirror the column types and CHECK constraints of ``turnstore/sql/``.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Annotated, Any
from uuid import UUID

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)

from turnstore.errors import InvalidParameterError
from turnstore.fingerprint import MAX_FINGERPRINT_LENGTH, normalize_fingerprint
from turnstore.scope import AccessScope

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
    "check_uuid",
    "trusted_turn",
    "validate_orphan_args",
    "validate_retention_args",
]

INT4_MAX = 2**31 - 1
INT8_MAX = 2**63 - 1


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


Text = Annotated[str, BeforeValidator(_storable_text)]
NonNegInt4 = Annotated[int, BeforeValidator(_not_bool), Field(ge=0, le=INT4_MAX)]
NonNegInt8 = Annotated[int, BeforeValidator(_not_bool), Field(ge=0, le=INT8_MAX)]
# The length bounds sit on the str itself so that the message counts characters (as
# varchar(n) does) instead of "items".
ErrorCode = Annotated[str, Field(min_length=1, max_length=64), BeforeValidator(_storable_text)]
ProviderName = Annotated[str, Field(min_length=1, max_length=128), BeforeValidator(_storable_text)]
ProviderResponseId = Annotated[
    str, Field(min_length=1, max_length=128), BeforeValidator(_storable_text)
]
EffectiveModel = Annotated[
    str, Field(min_length=1, max_length=1024), BeforeValidator(_storable_text)
]
# Validators run last-listed first: bytes become hex before the text check.
RequestFingerprint = Annotated[
    str,
    Field(min_length=1, max_length=MAX_FINGERPRINT_LENGTH),
    BeforeValidator(_storable_text),
    BeforeValidator(normalize_fingerprint),
]

_PARAMS_CONFIG = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=False)

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

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: UUID
    tenant_id: UUID
    chat_id: UUID
    request_id: UUID
    requester_type: RequesterType
    requester_user_id: UUID | None
    state: TurnState
    provider_name: str | None = None
    provider_response_id: str | None = None
    assistant_message_id: UUID | None = None
    error_code: str | None = None
    error_detail: str | None = None
    reserve_tokens: int | None = None
    max_output_tokens_applied: int | None = None
    reserved_credits_micro: int | None = None
    policy_version_applied: int | None = None
    effective_model: str | None = None
    minimal_generation_floor_applied: int | None = None
    web_search_enabled: bool = False
    web_search_completed_count: int = 0
    code_interpreter_completed_count: int = 0
    file_search_completed_count: int = 0
    deleted_at: datetime | None = None
    replaced_by_request_id: UUID | None = None
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

    id: UUID
    tenant_id: UUID
    chat_id: UUID
    request_id: UUID
    requester_type: RequesterType
    requester_user_id: UUID | None = None
    provider_name: ProviderName | None = None
    reserve_tokens: NonNegInt8 | None = None
    max_output_tokens_applied: NonNegInt4 | None = None
    reserved_credits_micro: NonNegInt8 | None = None
    policy_version_applied: NonNegInt8 | None = None
    effective_model: EffectiveModel | None = None
    minimal_generation_floor_applied: NonNegInt4 | None = None
    web_search_enabled: bool = False
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

    turn_id: UUID
    state: TurnState
    error_code: ErrorCode | None = None
    error_detail: Text | None = None
    assistant_message_id: UUID | None = None
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

    turn_id: UUID
    assistant_message_id: UUID
    provider_response_id: ProviderResponseId | None = None


class UpdatePreflightParams(BaseModel):
    """The six preflight fields, written together while the turn runs."""

    model_config = _PARAMS_CONFIG

    turn_id: UUID
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


# ---- argument checks of the repository methods, shared by both backends so that a bad
# argument gets the same InvalidParameterError, with the same message, everywhere.


def check_instance(name: str, value: object, kind: type, kind_name: str | None = None) -> None:
    """Refuse ``value`` unless it is a ``kind``."""
    if not isinstance(value, kind):
        raise InvalidParameterError(
            f"{name} must be a {kind_name or kind.__name__}, got {type(value).__name__}"
        )


def check_uuid(name: str, value: object) -> None:
    """Refuse an id that is not a ``uuid.UUID`` (a string is refused too)."""
    if not isinstance(value, UUID):
        raise InvalidParameterError(f"{name} must be a uuid.UUID, got {type(value).__name__}")


def check_scope(scope: object) -> None:
    """Refuse a scope that is not an ``AccessScope``."""
    if not isinstance(scope, AccessScope):
        raise InvalidParameterError(f"scope must be an AccessScope, got {type(scope).__name__}")


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidParameterError(f"{name} must be an int in [{low}, {high}], got {value!r}")


def validate_orphan_args(timeout_secs: object, limit: object | None = None) -> None:
    """The scalar rules of the orphan methods: ``0 <= timeout_secs <= 2**31 - 1`` and
    ``1 <= limit <= 2**31 - 1``, ints (not bools). Raises ``InvalidParameterError``."""
    _check_int("timeout_secs", timeout_secs, 0, INT4_MAX)
    if limit is not None:
        _check_int("limit", limit, 1, INT4_MAX)


#: The most rows one retention batch deletes (in one transaction).
MAX_RETENTION_BATCH = 100_000


def validate_retention_args(older_than_secs: object | None, limit: object | None = None) -> None:
    """The scalar rules of the retention methods: ``0 <= older_than_secs <= 2**31 - 1`` and
    ``1 <= limit <= 100000``, ints (not bools). Raises ``InvalidParameterError``."""
    if older_than_secs is not None:
        _check_int("older_than_secs", older_than_secs, 0, INT4_MAX)
    if limit is not None:
        _check_int("limit", limit, 1, MAX_RETENTION_BATCH)

"""HTTP mapping of turnstore's refusals: a status code and a JSON error body for each.

Every web host writes this table again, so it lives here, framework-free (nothing here
imports a web framework): ``status_for`` gives the status, ``error_body`` the JSON body
``{"error": {"code": ..., "message": ..., "retryable": ...}}``, ``headers_for`` the extra
headers (``Retry-After`` on 503 and 504). Each accepts a ``TurnStoreError``, a rejected
``StartOutcome`` (docs/design.md, *Starting a turn*), a lost ``FinalizeOutcome``, or an
error code string.

The table, by code (docs/design.md names the rules behind each):

====================================================  ======
``generation_in_progress``, ``request_id_conflict``,  409
``not_latest_turn``, ``invalid_turn_state``,
``turn_id_conflict``, ``turn_not_running``
``turn_not_found``                                    404
``forbidden``, ``scope_denied``                       403
``invalid_parameter``                                 422
``store_unavailable``, ``schema_mismatch``            503 (+ ``Retry-After``)
``lock_timeout``, ``statement_timeout``               504 (+ ``Retry-After``)
anything else                                         500
====================================================  ======
"""

from __future__ import annotations

from typing import Any

from turnstore.errors import TurnStoreError
from turnstore.lifecycle import FinalizeOutcome, StartOutcome

__all__ = [
    "RETRY_AFTER_SECS",
    "RETRYABLE_CODES",
    "STATUS_BY_CODE",
    "TURN_NOT_RUNNING",
    "Refusal",
    "code_of",
    "error_body",
    "headers_for",
    "is_retryable",
    "message_of",
    "status_for",
]

#: The code of a complete/fail/cancel that lost its CAS: the turn had already ended.
TURN_NOT_RUNNING = "turn_not_running"

STATUS_BY_CODE: dict[str, int] = {
    "generation_in_progress": 409,
    "request_id_conflict": 409,
    "request_in_progress": 409,
    "request_fingerprint_mismatch": 422,
    "not_latest_turn": 409,
    "invalid_turn_state": 409,
    "turn_id_conflict": 409,
    TURN_NOT_RUNNING: 409,
    "turn_not_found": 404,
    "forbidden": 403,
    "scope_denied": 403,
    "invalid_parameter": 422,
    "store_unavailable": 503,
    "schema_mismatch": 503,
    "lock_timeout": 504,
    "statement_timeout": 504,
}

#: Codes where the same request may succeed later, for errors that do not say themselves
#: (an error's own ``retryable`` attribute wins). ``generation_in_progress`` clears when the
#: running turn ends.
RETRYABLE_CODES = frozenset(
    {
        "generation_in_progress",
        "request_in_progress",
        "store_unavailable",
        "lock_timeout",
        "statement_timeout",
    }
)

#: The ``Retry-After`` seconds sent with a 503 or a 504.
RETRY_AFTER_SECS = 1

#: What the functions here accept.
Refusal = TurnStoreError | StartOutcome | FinalizeOutcome | str


def code_of(refusal: Refusal) -> str:
    """The stable error code of ``refusal``."""
    if isinstance(refusal, str):
        return refusal
    if isinstance(refusal, TurnStoreError):
        return refusal.code
    if isinstance(refusal, StartOutcome):
        if refusal.reason is None:
            raise ValueError(f"a {refusal.kind.value} start is not a refusal")
        return refusal.reason.value
    if refusal.won:
        raise ValueError("a won finalize is not a refusal")
    return TURN_NOT_RUNNING


def status_for(refusal: Refusal) -> int:
    """The HTTP status for ``refusal`` (500 for an unknown code)."""
    return STATUS_BY_CODE.get(code_of(refusal), 500)


def is_retryable(refusal: Refusal) -> bool:
    """Whether the same request may succeed later: the error's own ``retryable`` when it
    has one, else whether its code is in ``RETRYABLE_CODES``."""
    own = getattr(refusal, "retryable", None)
    if isinstance(own, bool):
        return own
    return code_of(refusal) in RETRYABLE_CODES


def message_of(refusal: Refusal) -> str:
    """A human-readable message (an error's own text; a sentence for an outcome)."""
    if isinstance(refusal, TurnStoreError):
        return str(refusal) or refusal.code
    if isinstance(refusal, StartOutcome):
        if refusal.reason is not None and refusal.reason.value == "generation_in_progress":
            return "the chat already has a running turn"
        return "the request id is already used by another turn of this chat"
    if isinstance(refusal, FinalizeOutcome):
        return f"turn {refusal.turn_id} is no longer running"
    return refusal.replace("_", " ")


def error_body(refusal: Refusal, *, message: str | None = None, **details: Any) -> dict[str, Any]:
    """``{"error": {"code", "message", "retryable", **details}}`` for ``refusal``.

    ``details`` (JSON-ready values) are added to the inner object, e.g. the id of the
    running turn; never put there what the caller's scope may not see.
    """
    return {
        "error": {
            "code": code_of(refusal),
            "message": message if message is not None else message_of(refusal),
            "retryable": is_retryable(refusal),
            **details,
        }
    }


def headers_for(refusal: Refusal) -> dict[str, str]:
    """Extra response headers: ``Retry-After`` for a 503 or a 504, else none."""
    if status_for(refusal) in (503, 504):
        return {"Retry-After": str(RETRY_AFTER_SECS)}
    return {}

"""turnstore.http: every refusal gets its status, body and headers (no server needed)."""

from __future__ import annotations

import ast
import uuid
from pathlib import Path

import pytest

import turnstore.http
from turnstore.errors import (
    DuplicateRequestError,
    DuplicateTurnIdError,
    ForbiddenError,
    GenerationInProgressError,
    InvalidParameterError,
    InvalidTurnStateError,
    MigrationError,
    NotLatestTurnError,
    SchemaMismatchError,
    ScopeDeniedError,
    StoreUnavailableError,
    TurnNotFoundError,
    TurnStoreError,
)
from turnstore.http import (
    TURN_NOT_RUNNING,
    Refusal,
    code_of,
    error_body,
    headers_for,
    is_retryable,
    status_for,
)
from turnstore.lifecycle import FinalizeOutcome, RejectReason, StartKind, StartOutcome
from turnstore.model import TurnState

ID = uuid.uuid4()

ERRORS: list[tuple[TurnStoreError, int, bool]] = [
    (GenerationInProgressError(ID, ID), 409, True),
    (DuplicateRequestError(ID, ID), 409, False),
    (NotLatestTurnError(ID, None), 409, False),
    (InvalidTurnStateError(ID, "running"), 409, False),
    (DuplicateTurnIdError(ID), 409, False),
    (TurnNotFoundError(ID), 404, False),
    (ForbiddenError(ID, ID), 403, False),
    (ScopeDeniedError(ID, ID), 403, False),
    (InvalidParameterError("limit must be positive"), 422, False),
    (StoreUnavailableError("connection refused"), 503, True),
    (SchemaMismatchError("public", pending=[2]), 503, False),
    (MigrationError("0002 changed"), 500, False),
    (TurnStoreError("something else"), 500, False),
]


@pytest.mark.parametrize(("error", "status", "retryable"), ERRORS, ids=lambda v: repr(v)[:40])
def test_each_error_has_its_status_and_body(
    error: TurnStoreError, status: int, retryable: bool
) -> None:
    assert status_for(error) == status
    body = error_body(error)
    assert body == {"error": {"code": error.code, "message": str(error), "retryable": retryable}}


@pytest.mark.parametrize(
    ("code", "status"), [("lock_timeout", 504), ("statement_timeout", 504), ("no_such", 500)]
)
def test_codes_without_an_error_class_here_yet(code: str, status: int) -> None:
    assert status_for(code) == status
    assert error_body(code)["error"]["code"] == code


def test_an_errors_own_retryable_wins_over_the_table() -> None:
    class Flaky(StoreUnavailableError):
        retryable = False

    assert is_retryable(StoreUnavailableError("down"))
    assert not is_retryable(Flaky("down"))
    assert error_body(Flaky("down"))["error"]["retryable"] is False


def test_a_rejected_start_maps_by_its_reason() -> None:
    busy = StartOutcome(
        StartKind.REJECTED, reason=RejectReason.GENERATION_IN_PROGRESS, running_turn_id=ID
    )
    taken = StartOutcome(StartKind.REJECTED, reason=RejectReason.REQUEST_ID_CONFLICT)
    assert (status_for(busy), status_for(taken)) == (409, 409)
    body = error_body(busy, running_turn_id=str(ID))
    assert body["error"] == {
        "code": "generation_in_progress",
        "message": "the chat already has a running turn",
        "retryable": True,
        "running_turn_id": str(ID),
    }
    assert error_body(taken)["error"]["code"] == "request_id_conflict"
    assert error_body(taken)["error"]["retryable"] is False


def test_a_started_or_replayed_start_is_not_a_refusal() -> None:
    with pytest.raises(ValueError, match="not a refusal"):
        status_for(StartOutcome(StartKind.STARTED))
    with pytest.raises(ValueError, match="not a refusal"):
        error_body(StartOutcome(StartKind.REPLAY))


def test_a_lost_finalize_is_a_conflict_and_a_won_one_is_not_a_refusal() -> None:
    lost = FinalizeOutcome(ID, TurnState.CANCELLED, won=False)
    assert code_of(lost) == TURN_NOT_RUNNING
    assert status_for(lost) == 409
    assert not is_retryable(lost)
    with pytest.raises(ValueError, match="not a refusal"):
        status_for(FinalizeOutcome(ID, TurnState.CANCELLED, won=True))


@pytest.mark.parametrize(
    ("refusal", "headers"),
    [
        (StoreUnavailableError("down"), {"Retry-After": "1"}),
        ("lock_timeout", {"Retry-After": "1"}),
        (GenerationInProgressError(ID), {}),
        (TurnNotFoundError(ID), {}),
    ],
)
def test_retry_after_only_when_the_service_is_unavailable_or_timed_out(
    refusal: Refusal, headers: dict[str, str]
) -> None:
    assert headers_for(refusal) == headers


def test_the_module_imports_no_web_framework() -> None:
    tree = ast.parse(Path(turnstore.http.__file__).read_text(encoding="utf-8"))
    imported = {
        (node.module or "") if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    roots = {name.split(".")[0] for name in imported}
    assert roots <= {"__future__", "typing", "turnstore"}, roots

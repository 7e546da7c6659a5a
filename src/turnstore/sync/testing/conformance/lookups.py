# WARNING: this file is generated from src/turnstore/testing/conformance/lookups.py by tools/async_to_sync.py; do not edit.
"""Conformance of the lookups: ``get_turn`` and the keyset pages of ``list_turns``, and the
request fingerprint stored with a turn."""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

import pytest

from turnstore.errors import InvalidParameterError
from turnstore.model import Turn
from turnstore.paging import MAX_PAGE_LIMIT
from turnstore.scope import AccessScope
from turnstore.sync.testing.backends import BackendHarness
from turnstore.sync.testing.conformance._support import ALLOW, Backend, make_params

__all__ = ["TestGetTurn", "TestListTurns", "TestRequestFingerprint"]
_MAX_PAGES = 50


def _all_pages(
    db: Backend, tenant_id: UUID, chat_id: UUID, limit: int, **kwargs: Any
) -> list[list[Turn]]:
    pages: list[list[Turn]] = []
    cursor: str | None = None
    with db.store.connection() as runner:
        for _ in range(_MAX_PAGES):
            page = db.repo.list_turns(
                runner, ALLOW, tenant_id, chat_id, limit=limit, before=cursor, **kwargs
            )
            pages.append(page.turns)
            if page.next_cursor is None:
                return pages
            cursor = page.next_cursor
    raise AssertionError(f"more than {_MAX_PAGES} pages: the cursor does not advance")


def _newest_first(turns: list[Turn]) -> list[UUID]:
    return [t.id for t in sorted(turns, key=lambda t: (t.started_at, t.id), reverse=True)]


class TestGetTurn:
    def test_finds_a_turn_by_id_deleted_or_not(
        self, turnstore_sync_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_sync_backend)
        live = db.create()
        deleted = db.delete(db.finish(db.create()))
        with db.store.connection() as runner:
            assert db.repo.get_turn(runner, ALLOW, live.id) == live
            assert db.repo.get_turn(runner, ALLOW, deleted.id) == deleted
            assert db.repo.get_turn(runner, ALLOW, uuid4()) is None

    def test_a_turn_outside_the_scope_is_not_found(
        self, turnstore_sync_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_sync_backend)
        turn = db.create()
        other = AccessScope.for_tenant(uuid4())
        mine = AccessScope.for_tenant(turn.tenant_id)
        with db.store.connection() as runner:
            assert db.repo.get_turn(runner, other, turn.id) is None
            assert db.repo.get_turn(runner, mine, turn.id) == turn

    def test_refuses_an_id_that_is_not_a_uuid(self, turnstore_sync_backend: BackendHarness) -> None:
        db = Backend(turnstore_sync_backend)
        not_a_uuid: Any = str(uuid4())
        with db.store.connection() as runner:
            with pytest.raises(InvalidParameterError):
                db.repo.get_turn(runner, ALLOW, not_a_uuid)


class TestListTurns:
    def test_pages_newest_first_and_the_cursor_continues_without_repeats(
        self, turnstore_sync_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_sync_backend)
        turns = db.chat_of(5)
        pages = _all_pages(db, turns[0].tenant_id, turns[0].chat_id, 2)
        assert [len(p) for p in pages] == [2, 2, 1]
        assert [t.id for p in pages for t in p] == _newest_first(turns)
        assert pages[0][0] == turns[-1]

    def test_a_full_last_page_has_no_cursor(self, turnstore_sync_backend: BackendHarness) -> None:
        db = Backend(turnstore_sync_backend)
        turns = db.chat_of(2)
        pages = _all_pages(db, turns[0].tenant_id, turns[0].chat_id, 2)
        assert [len(p) for p in pages] == [2]

    def test_an_empty_chat_has_one_empty_page(self, turnstore_sync_backend: BackendHarness) -> None:
        db = Backend(turnstore_sync_backend)
        assert _all_pages(db, uuid4(), uuid4(), 10) == [[]]

    def test_soft_deleted_turns_only_when_asked(
        self, turnstore_sync_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_sync_backend)
        turns = db.chat_of(3)
        deleted = db.delete(turns[1])
        tenant_id, chat_id = (turns[0].tenant_id, turns[0].chat_id)
        live = _all_pages(db, tenant_id, chat_id, 10)
        assert [t.id for t in live[0]] == [turns[2].id, turns[0].id]
        every = _all_pages(db, tenant_id, chat_id, 1, include_deleted=True)
        assert [t.id for p in every for t in p] == [turns[2].id, deleted.id, turns[0].id]
        assert every[1] == [deleted]

    def test_only_the_chat_of_the_tenant(self, turnstore_sync_backend: BackendHarness) -> None:
        db = Backend(turnstore_sync_backend)
        turn = db.finish(db.create())
        db.create(chat_id=turn.chat_id)
        db.create(tenant_id=turn.tenant_id)
        for include_deleted in (False, True):
            pages = _all_pages(
                db, turn.tenant_id, turn.chat_id, 10, include_deleted=include_deleted
            )
            assert pages == [[turn]]

    def test_only_turns_the_scope_permits(self, turnstore_sync_backend: BackendHarness) -> None:
        db = Backend(turnstore_sync_backend)
        first, second = db.chat_of(2)
        only_first = AccessScope.for_resource(first.id)
        with db.store.connection() as runner:
            page = db.repo.list_turns(runner, only_first, first.tenant_id, first.chat_id)
        assert page.turns == [first]
        assert second.started_at > first.started_at

    def test_ties_in_started_at_are_ordered_by_id(
        self, turnstore_sync_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_sync_backend)
        first, second = db.chat_started_at_once(larger_id_first=True)
        pages = _all_pages(db, first.tenant_id, first.chat_id, 1)
        assert [t.id for p in pages for t in p] == [first.id, second.id]
        assert first.id > second.id

    def test_a_turn_started_after_the_first_page_does_not_shift_the_next(
        self, turnstore_sync_backend: BackendHarness
    ) -> None:
        db = Backend(turnstore_sync_backend)
        turns = db.chat_of(3)
        tenant_id, chat_id = (turns[0].tenant_id, turns[0].chat_id)
        with db.store.connection() as runner:
            first = db.repo.list_turns(runner, ALLOW, tenant_id, chat_id, limit=2)
            db.repo.create_turn(runner, ALLOW, make_params(tenant_id=tenant_id, chat_id=chat_id))
            rest = db.repo.list_turns(
                runner, ALLOW, tenant_id, chat_id, limit=2, before=first.next_cursor
            )
        assert rest.turns == [turns[0]]
        assert rest.next_cursor is None

    @pytest.mark.parametrize("limit", [0, -1, MAX_PAGE_LIMIT + 1, True, 2.0])
    def test_refuses_a_limit_out_of_bounds(
        self, turnstore_sync_backend: BackendHarness, limit: Any
    ) -> None:
        db = Backend(turnstore_sync_backend)
        with db.store.connection() as runner:
            with pytest.raises(InvalidParameterError):
                db.repo.list_turns(runner, ALLOW, uuid4(), uuid4(), limit=limit)
            db.repo.list_turns(runner, ALLOW, uuid4(), uuid4(), limit=MAX_PAGE_LIMIT)

    @pytest.mark.parametrize("cursor", ["", "t1.", "t1.!!!", "not-a-cursor", "t1.YWJj"])
    def test_refuses_a_cursor_it_did_not_make(
        self, turnstore_sync_backend: BackendHarness, cursor: str
    ) -> None:
        db = Backend(turnstore_sync_backend)
        with db.store.connection() as runner:
            with pytest.raises(InvalidParameterError):
                db.repo.list_turns(runner, ALLOW, uuid4(), uuid4(), before=cursor)


class TestRequestFingerprint:
    def test_is_stored_with_the_turn(self, turnstore_sync_backend: BackendHarness) -> None:
        db = Backend(turnstore_sync_backend)
        printed = db.create(request_fingerprint="f" * 128)
        raw = db.create(request_fingerprint=bytes(range(32)))
        plain = db.create()
        assert printed.request_fingerprint == "f" * 128
        assert raw.request_fingerprint == bytes(range(32)).hex()
        assert plain.request_fingerprint is None
        assert db.reload(printed) == printed

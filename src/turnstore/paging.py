"""A chat's turns, a page at a time: ``TurnPage`` and its opaque cursor.

``list_turns`` pages newest first by ``(started_at, id)`` (keyset pagination: a page
continues strictly after the last row of the previous one, so rows inserted meanwhile never
shift or repeat a page). The cursor is an opaque string to the caller; inside it is the
``(started_at, id)`` of the last row returned.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime, timezone
from uuid import UUID

from turnstore.errors import InvalidParameterError
from turnstore.model import Turn

__all__ = [
    "DEFAULT_PAGE_LIMIT",
    "FIRST_PAGE_KEY",
    "MAX_PAGE_LIMIT",
    "PageKey",
    "TurnPage",
    "check_page_limit",
    "decode_cursor",
    "encode_cursor",
    "page_of",
]

DEFAULT_PAGE_LIMIT = 50
MAX_PAGE_LIMIT = 500

PageKey = tuple[datetime, UUID]

#: The key "before" the first page: later than any turn (``started_at`` is database time).
FIRST_PAGE_KEY: PageKey = (
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc),
    UUID(int=2**128 - 1),
)

_PREFIX = "t1."


@dataclass(frozen=True)
class TurnPage:
    """One page of a chat's turns, newest first; ``next_cursor`` continues with older
    turns, ``None`` on the last page."""

    turns: list[Turn]
    next_cursor: str | None = None


def encode_cursor(turn: Turn) -> str:
    """The cursor continuing after ``turn``."""
    raw = f"{turn.started_at.isoformat()}|{turn.id}".encode("ascii")
    return _PREFIX + base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str | None) -> PageKey:
    """The ``(started_at, id)`` a page continues after; ``FIRST_PAGE_KEY`` for ``None``.
    ``InvalidParameterError`` for anything ``encode_cursor`` did not make."""
    if cursor is None:
        return FIRST_PAGE_KEY
    if not isinstance(cursor, str) or not cursor.startswith(_PREFIX) or len(cursor) > 200:
        raise InvalidParameterError("before must be a cursor from a previous TurnPage")
    body = cursor[len(_PREFIX) :]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode("ascii")
        stamp, turn_id = raw.split("|")
        started_at = datetime.fromisoformat(stamp)
        key = (started_at, UUID(turn_id))
    except (ValueError, binascii.Error) as exc:
        raise InvalidParameterError("before must be a cursor from a previous TurnPage") from exc
    if started_at.tzinfo is None:
        raise InvalidParameterError("before must be a cursor from a previous TurnPage")
    return key


def check_page_limit(limit: object) -> int:
    """``1 <= limit <= MAX_PAGE_LIMIT``, an int (not a bool); else ``InvalidParameterError``."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_LIMIT:
        raise InvalidParameterError(f"limit must be an int in [1, {MAX_PAGE_LIMIT}], got {limit!r}")
    return limit


def page_of(rows: list[Turn], limit: int) -> TurnPage:
    """The page for ``rows`` (at most ``limit + 1`` of them, newest first): the extra row
    only says that another page follows."""
    if len(rows) > limit:
        rows = rows[:limit]
        return TurnPage(rows, encode_cursor(rows[-1]))
    return TurnPage(rows)

"""Ids the library makes itself: the request ids of retries and edits, and turn ids a host
may borrow."""

from __future__ import annotations

import os
import time
import uuid
from uuid import UUID

__all__ = ["new_uuid7"]


def new_uuid7() -> UUID:
    """A time-ordered UUID (RFC 9562 version 7): new ids land at the right edge of indexes."""
    value = (time.time_ns() // 1_000_000) << 80
    value |= int.from_bytes(os.urandom(10), "big") & ((1 << 80) - 1)
    value = (value & ~(0xF << 76)) | (0x7 << 76)
    value = (value & ~(0x3 << 62)) | (0x2 << 62)
    return uuid.UUID(int=value)

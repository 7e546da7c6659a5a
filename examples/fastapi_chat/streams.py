"""Per-turn broadcast: the generating task publishes tokens; any number of SSE responses
follow them, from the first token, for as long as they stay connected.

A subscriber leaving (the client disconnected) changes nothing for the publisher: the
generation runs in a task the application owns, and its answer is stored when it ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from uuid import UUID

__all__ = ["End", "TurnStream"]


@dataclass(frozen=True)
class End:
    """How the turn's stream ended: its final state, and the answer's id if completed."""

    state: str
    message_id: UUID | None = None
    error_code: str | None = None


class TurnStream:
    def __init__(self, turn_id: UUID) -> None:
        self.turn_id = turn_id
        self.tokens: list[str] = []
        self.end: End | None = None
        #: Set when this process cancelled the turn: the generation stops at its next token.
        self.cancel_requested = False
        self._changed = asyncio.Condition()

    async def push(self, token: str) -> None:
        async with self._changed:
            self.tokens.append(token)
            self._changed.notify_all()

    async def close(self, end: End) -> None:
        async with self._changed:
            if self.end is None:
                self.end = end
            self._changed.notify_all()

    async def follow(self) -> AsyncIterator[str | End]:
        """Every token from the first, then the ``End``."""
        sent = 0
        while True:
            async with self._changed:
                while len(self.tokens) == sent and self.end is None:
                    await self._changed.wait()
                fresh, end = self.tokens[sent:], self.end
            for token in fresh:
                yield token
            sent += len(fresh)
            if end is not None and sent == len(self.tokens):
                yield end
                return

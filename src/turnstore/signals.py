"""Finalize signals: how a running stream learns, without a write, that its turn is over.

A turn can be finalized anywhere: a user's cancel served by another instance, the
watchdog, the stream's own process. A store that implements ``FinalizeSignalSource`` hands
out one ``FinalizeSignals`` object, to which a ``KeepAlive`` registers an
``asyncio.Event`` per turn; the event is set as soon as the store learns that the turn is
no longer running (docs/lifecycle.md, *Cancel*):

- PostgreSQL: the finalizing CAS statements ``pg_notify`` the schema's channel when they
  win, delivered at commit; one listening connection per store wakes the waiters. Where
  ``LISTEN`` cannot work (a transaction pooler), the store polls the waited turns instead.
- The in-memory fake: its commit of a finalizing write wakes the waiters in process.

A signal only ever says "this turn is no longer running" (finalized, or gone); the stream
then stops generating and the outcome is read as usual.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable
from uuid import UUID

__all__ = ["FinalizeSignalSource", "FinalizeSignals", "Settable", "Waiters"]


class Settable(Protocol):
    """What a waiter hands in to be woken: ``asyncio.Event`` or, in the sync API,
    ``threading.Event``."""

    def set(self) -> None: ...


class FinalizeSignals(Protocol):
    """Where a stream registers to be told that a turn is no longer running."""

    def watch(self, turn_id: UUID, event: Settable) -> None:
        """Set ``event`` once ``turn_id`` is no longer running: at once when it already is
        not (as soon as the store has checked), else when it is finalized. Never blocks."""
        ...

    def unwatch(self, turn_id: UUID, event: Settable) -> None:
        """Forget ``event``; idempotent."""
        ...


@runtime_checkable
class FinalizeSignalSource(Protocol):
    """A ``TurnStore`` that can signal finalized turns (both built-in stores can).

    A store without it still works: its keep-alives learn of a finalize at their next
    write only.
    """

    def finalize_signals(self) -> FinalizeSignals:
        """The store's one ``FinalizeSignals`` (created on first use)."""
        ...


class Waiters:
    """The events waiting on each turn: the bookkeeping every ``FinalizeSignals`` shares."""

    __slots__ = ("_events",)

    def __init__(self) -> None:
        self._events: dict[UUID, set[Settable]] = {}

    def add(self, turn_id: UUID, event: Settable) -> None:
        """Register ``event`` for ``turn_id``."""
        self._events.setdefault(turn_id, set()).add(event)

    def discard(self, turn_id: UUID, event: Settable) -> None:
        """Forget ``event``; idempotent."""
        events = self._events.get(turn_id)
        if events is not None:
            events.discard(event)
            if not events:
                del self._events[turn_id]

    def fire(self, turn_id: UUID) -> None:
        """Set every event waiting on ``turn_id`` and forget them (a turn that stopped
        running never runs again)."""
        for event in self._events.pop(turn_id, ()):
            event.set()

    def fire_all_but(self, turn_ids: Iterable[UUID], running: set[UUID]) -> None:
        """Fire each of ``turn_ids`` that is not in ``running`` (the result of a check)."""
        for turn_id in turn_ids:
            if turn_id not in running:
                self.fire(turn_id)

    def turn_ids(self) -> set[UUID]:
        """The turns with at least one waiting event."""
        return set(self._events)

    def __contains__(self, turn_id: object) -> bool:
        return turn_id in self._events

    def __len__(self) -> int:
        return len(self._events)

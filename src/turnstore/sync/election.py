# WARNING: this file is generated from src/turnstore/election.py by tools/async_to_sync.py; do not edit.
"""Leader election for the orphan watchdog: one watchdog per database scans at a time.

``LeaderElection`` is what the watchdog needs from an election; each store builds its own
(``TurnStore.leader_election``). ``InProcessElection`` elects among the watchdogs of one
process sharing one store, which is all the in-memory store has. The PostgreSQL election
(``AdvisoryLockElection``) lives with its backend, in ``turnstore.sync.postgres``.
"""

from __future__ import annotations

import weakref
from typing import Protocol

__all__ = ["InProcessElection", "LeaderElection"]


class LeaderElection(Protocol):
    """Decides which watchdog instance may scan."""

    @property
    def is_leader(self) -> bool:
        """Whether this instance held leadership at its last check."""
        ...

    def acquire(self) -> bool:
        """Become the leader, or confirm still being it; False if another instance is."""
        ...

    def release(self) -> None:
        """Give leadership up (idempotent)."""
        ...


_IN_PROCESS_LEADERS: weakref.WeakKeyDictionary[object, InProcessElection] = (
    weakref.WeakKeyDictionary()
)


class InProcessElection:
    """Leadership among the watchdogs of one process sharing one store (the fake's)."""

    def __init__(self, store: object) -> None:
        self._store = weakref.ref(store)

    @property
    def is_leader(self) -> bool:
        store = self._store()
        return store is not None and _IN_PROCESS_LEADERS.get(store) is self

    def acquire(self) -> bool:
        store = self._store()
        if store is None:
            return False
        holder = _IN_PROCESS_LEADERS.setdefault(store, self)
        return holder is self

    def release(self) -> None:
        store = self._store()
        if store is not None and _IN_PROCESS_LEADERS.get(store) is self:
            del _IN_PROCESS_LEADERS[store]

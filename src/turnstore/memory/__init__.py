"""The in-memory backend: the same protocol, results, errors and ordering as PostgreSQL.

``InMemoryStore`` keeps turns in process memory for host test suites. It is not a toy
copy of the rules: every decision calls the pure functions of ``turnstore.rules`` and
``AccessScope.permits``, and transactions behave like PostgreSQL's READ COMMITTED:

- each call reads the latest committed rows plus its own transaction's writes;
- a row written (or locked by ``find_latest_for_update``) by an open transaction is
  locked: another transaction's write to it waits until the first ends, then re-checks its
  predicate on the committed row, as PostgreSQL's EvalPlanQual does;
- an insert that collides with another open transaction's uncommitted row waits for that
  transaction, then fails with the typed error if it committed or goes on if it rolled back;
- ``find_latest_for_update`` serializes the chat (its tenant and chat id), like the
  PostgreSQL backend's transaction-level advisory lock, and only for a chat the caller's
  scope can see;
- a transaction that raises leaves no trace;
- outside a transaction each call is a statement of its own; one that finds its rows free
  never waits, so it commits directly, without the bookkeeping a wait would need.

One difference is known: a transaction that deleted a turn (``purge_turns``,
``erase_tenant_turns``) cannot insert a turn with that id or request id before it ends
(``NotImplementedError``); PostgreSQL can. ``turnstore.retention`` deletes in autocommit.

Rows are indexed by id, by ``(tenant_id, chat_id, request_id)``, by the running turn of each
chat, by ``(started_at, id)`` per chat and by ``(last_progress_at, id)`` over running turns, so no
lookup walks all rows. Stored rows are never handed out: callers get copies.
"""

from turnstore.clock import Clock, MonotonicClock, SystemClock
from turnstore.memory.connection import InMemoryConnection
from turnstore.memory.repository import InMemoryTurnRepository
from turnstore.memory.store import InMemoryStore

__all__ = [
    "Clock",
    "InMemoryConnection",
    "InMemoryStore",
    "InMemoryTurnRepository",
    "MonotonicClock",
    "SystemClock",
]

"""Turn workloads of the fault tests: many complete turns, each failure kept for the report."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from turnstore.lifecycle import TurnLifecycle
from turnstore.model import CreateTurnParams, RequesterType
from turnstore.scope import AccessScope

__all__ = ["TurnChat", "WorkloadReport", "run_turns"]


@dataclass(frozen=True)
class TurnChat:
    """One chat of one user in one tenant."""

    tenant_id: UUID = field(default_factory=uuid.uuid4)
    chat_id: UUID = field(default_factory=uuid.uuid4)
    user_id: UUID = field(default_factory=uuid.uuid4)

    @property
    def scope(self) -> AccessScope:
        return AccessScope.for_tenant(self.tenant_id)

    def params(self) -> CreateTurnParams:
        return CreateTurnParams(
            id=uuid.uuid4(),
            tenant_id=self.tenant_id,
            chat_id=self.chat_id,
            request_id=uuid.uuid4(),
            requester_type=RequesterType.USER,
            requester_user_id=self.user_id,
        )


@dataclass
class WorkloadReport:
    completed: int = 0
    errors: list[BaseException] = field(default_factory=list)

    def summary(self) -> str:
        kinds = Counter(f"{type(e).__module__}.{type(e).__name__}: {e}" for e in self.errors)
        lines = [f"{self.completed} turns completed, {len(self.errors)} failed"]
        lines += [f"  {n} x {kind}"[:300] for kind, n in kinds.most_common(5)]
        return "\n".join(lines)


async def run_turns(
    lifecycle: TurnLifecycle[Any], turns: int, *, concurrency: int, timeout: float
) -> WorkloadReport:
    """``turns`` turns (begin, then complete), each in a chat of its own, ``concurrency`` at
    a time; the whole run bounded by ``timeout`` seconds."""
    report = WorkloadReport()
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        chat = TurnChat()
        async with gate:
            try:
                outcome = await lifecycle.begin_turn(chat.scope, chat.params())
                assert outcome.started, outcome
                assert outcome.turn is not None
                final = await lifecycle.complete_turn(chat.scope, outcome.turn, uuid.uuid4())
                assert final.won, final
            except Exception as exc:
                report.errors.append(exc)
            else:
                report.completed += 1

    await asyncio.wait_for(asyncio.gather(*(one() for _ in range(turns))), timeout=timeout)
    return report

"""The model behind the chat: anything that turns a prompt into an async stream of tokens.

``FakeModel`` is the default: deterministic (its answer is derived from the prompt), with a
configurable delay per token, so the service runs offline and tests know every answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

__all__ = ["FAIL_MARKER", "FakeModel", "Model", "ModelError"]

#: A model: prompt in, tokens out. Raising mid-stream fails the turn.
Model = Callable[[str], AsyncIterator[str]]

#: A prompt containing this makes ``FakeModel`` raise after its first token.
FAIL_MARKER = "[fail]"


class ModelError(RuntimeError):
    """The model gave up mid-stream."""


class FakeModel:
    """Answers ``"You said: <the prompt's words>"``, one word per token."""

    def __init__(self, delay_secs: float = 0.02) -> None:
        self.delay_secs = delay_secs

    @staticmethod
    def tokens(prompt: str) -> list[str]:
        return ["You said:", *(f" {word}" for word in prompt.split())]

    @classmethod
    def answer(cls, prompt: str) -> str:
        return "".join(cls.tokens(prompt))

    async def __call__(self, prompt: str) -> AsyncIterator[str]:
        for index, token in enumerate(self.tokens(prompt)):
            await asyncio.sleep(self.delay_secs)
            if index == 1 and FAIL_MARKER in prompt:
                raise ModelError("the model failed (asked to by the prompt)")
            yield token

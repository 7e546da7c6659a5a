"""The service patterns of docs/lifecycle.md (*Service patterns*) run, each block on its own
(so each is complete), against both backends."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from turnstore.testing.backends import BackendHarness

DOCS = Path(__file__).resolve().parents[2] / "docs" / "lifecycle.md"


def pattern_blocks() -> list[str]:
    text = DOCS.read_text(encoding="utf-8")
    section = text.split("\n## Service patterns\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_every_pattern_is_here() -> None:
    names = [re.search(r"async def (pattern_\w+)", block) for block in pattern_blocks()]
    assert [m.group(1) for m in names if m] == [
        "pattern_background_generation",
        "pattern_replay_on_resend",
        "pattern_cancel",
        "pattern_retry",
    ]


@pytest.mark.parametrize("index", range(4))
async def test_pattern_runs_on_its_own(turnstore_backend: BackendHarness, index: int) -> None:
    namespace: dict[str, Any] = {}
    exec(compile(pattern_blocks()[index], str(DOCS), "exec"), namespace)
    (name,) = [n for n in namespace if n.startswith("pattern_")]
    await namespace[name](turnstore_backend.store)

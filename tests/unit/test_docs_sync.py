"""The first example of docs/sync.md runs as written (on the in-memory sync store)."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "sync.md"


def test_the_first_example_runs() -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    exec(compile(blocks[0], str(DOC), "exec"), {})

"""The sync API under src/turnstore/sync is what tools/async_to_sync.py makes from the
asyncio source: a hand edit there, or an asyncio change not regenerated, fails here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "async_to_sync.py"


# ``ast.unparse`` lays code out slightly differently from one Python to the next, so the
# committed files are generated, and checked, with the project's reference Python (3.11,
# the one ``.ci/run`` runs its check section with).
@pytest.mark.skipif(
    sys.version_info[:2] != (3, 11),
    reason="the sync modules are generated with Python 3.11's ast.unparse",
)
def test_generated_sync_modules_are_current() -> None:
    result = subprocess.run(
        [sys.executable, str(TOOL), "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_every_generated_module_says_so() -> None:
    sync = ROOT / "src" / "turnstore" / "sync"
    hand_written = {sync / "__init__.py", sync / "testing" / "__init__.py"}
    for path in sync.rglob("*.py"):
        first = path.read_text(encoding="utf-8").splitlines()[0]
        if path in hand_written:
            assert not first.startswith("# WARNING"), path
            continue
        source = path.relative_to(sync).as_posix()
        assert first == (
            f"# WARNING: this file is generated from src/turnstore/{source} by "
            "tools/async_to_sync.py; do not edit."
        ), path

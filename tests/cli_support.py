"""Running the ``turnstore`` command line in tests: in this process or as a subprocess.

``main`` runs ``asyncio.run`` itself, so in-process calls go through a worker thread: the
test's own event loop keeps running meanwhile.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

from turnstore.cli import main

__all__ = ["run_cli", "run_subprocess"]


async def run_cli(*args: str) -> int:
    return await asyncio.to_thread(main, list(args))


def run_subprocess(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "turnstore", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env=env,
        timeout=300,
        check=False,
    )

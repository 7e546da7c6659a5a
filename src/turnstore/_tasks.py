"""Stopping a background task for sure, within a bound.

One ``task.cancel()`` is not always enough: an awaited library call may catch the
``CancelledError`` and carry on (psycopg-pool's wait for a free connection did so on
Python 3.11), and the task then runs on. ``cancel_until_done`` cancels, waits a little,
and cancels again until the task has finished, within an overall bound.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["CANCEL_ATTEMPT_SECS", "CANCEL_TOTAL_SECS", "cancel_until_done"]

#: How long one cancellation is given to end the task before the next one is sent.
CANCEL_ATTEMPT_SECS = 0.05
#: How long ``cancel_until_done`` keeps cancelling before it gives the task up.
CANCEL_TOTAL_SECS = 5.0


async def cancel_until_done(
    task: asyncio.Task[Any],
    *,
    attempt_secs: float = CANCEL_ATTEMPT_SECS,
    total_secs: float = CANCEL_TOTAL_SECS,
) -> bool:
    """Cancel ``task`` until it is done (cancel, wait ``attempt_secs``, repeat), for at
    most ``total_secs``; whether it is done.

    ``asyncio.wait`` rather than ``await task``: a cancellation of the caller still
    propagates (and the task is cancelled once more on the way out).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + total_secs
    try:
        while not task.done():
            task.cancel()
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            await asyncio.wait({task}, timeout=min(attempt_secs, remaining))
    except asyncio.CancelledError:
        task.cancel()
        raise
    return True

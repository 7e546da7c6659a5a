"""The concurrency primitives of the asyncio code, under names its sync twin shares.

turnstore's I/O code is written once, for asyncio; ``tools/async_to_sync.py`` generates
the sync API from it and swaps this module for ``turnstore._compat_sync``, which offers the
same names on threads. Code that starts, waits for or cancels tasks, or waits on the
in-memory store's lock table, goes through these names rather than through ``asyncio``, so
that both variants read the same.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any, TypeAlias, TypeVar

from turnstore._tasks import cancel_until_done as _cancel_until_done

__all__ = [
    "shield",
    "cancel_until_done",
    "current_owner",
    "LOOP_IS_MONITOR",
    "CancelledError",
    "Event",
    "Lock",
    "Monitor",
    "Task",
    "Waiter",
    "gather",
    "join",
    "sleep",
    "spawn",
    "wait_event",
    "wait_tasks",
    "wait_waiter",
]

T = TypeVar("T")

Lock = asyncio.Lock
Event = asyncio.Event
Task = asyncio.Task
CancelledError = asyncio.CancelledError
sleep = asyncio.sleep

#: True where code between two awaits runs alone (one event loop), so a statement of the
#: in-memory store that never waits needs no lock; False on threads.
LOOP_IS_MONITOR = True


def spawn(
    func: Callable[..., Awaitable[T]], *args: Any, name: str | None = None
) -> asyncio.Task[T]:
    """Run ``func(*args)`` concurrently (a task here, a thread in the sync twin)."""
    return asyncio.create_task(_run(func, args), name=name)


async def _run(func: Callable[..., Awaitable[T]], args: tuple[Any, ...]) -> T:
    return await func(*args)


async def wait_tasks(
    tasks: Iterable[asyncio.Task[Any]], timeout: float | None = None
) -> set[asyncio.Task[Any]]:
    """Wait until the tasks are done or ``timeout`` passes; the tasks done by then.

    A cancellation of the caller propagates; the tasks are not cancelled by it."""
    done, _ = await asyncio.wait(set(tasks), timeout=timeout)
    return done


async def join(task: asyncio.Task[T], timeout: float | None = None) -> T:
    """The task's result (or its exception), waiting at most ``timeout`` seconds
    (``TimeoutError`` then, and the task is cancelled)."""
    return await asyncio.wait_for(task, timeout)


async def gather(
    tasks: Iterable[asyncio.Task[T]], timeout: float | None = None
) -> list[T | BaseException]:
    """Every task's result or exception, in order, waiting at most ``timeout`` seconds."""
    return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout)


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait until ``event`` is set or ``timeout`` passes; whether it was set."""
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except asyncio.TimeoutError:
        return False
    return True


Waiter: TypeAlias = "asyncio.Future[None]"


class Monitor:
    """The in-memory store's exclusion: on one event loop, nothing to take (code between
    two awaits runs alone); the sync twin is a condition variable released while waiting."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def waiter(self) -> asyncio.Future[None]:
        """A new waiter, set (with a result or an exception) by whoever ends the wait."""
        return asyncio.get_running_loop().create_future()


async def wait_waiter(waiter: asyncio.Future[None], timeout: float | None = None) -> bool:
    """Wait for ``waiter`` to be set, at most ``timeout`` seconds (``None``: for ever);
    raises the exception it was set with; whether it was set in time."""
    if timeout is None:
        await waiter
        return True
    try:
        await asyncio.wait_for(asyncio.shield(waiter), timeout)
    except asyncio.TimeoutError:
        return waiter.done()
    return True


async def cancel_until_done(task: asyncio.Task[Any], *, total_secs: float) -> bool:
    """Cancel ``task`` until it is done, for at most ``total_secs``; whether it is done
    (``turnstore._tasks.cancel_until_done``)."""
    return await _cancel_until_done(task, total_secs=total_secs)


async def shield(awaitable: Awaitable[T]) -> T:
    """Finish ``awaitable`` even if the caller is cancelled meanwhile (``asyncio.shield``;
    the sync twin has nothing to shield)."""
    return await asyncio.shield(awaitable)


def current_owner() -> object:
    """Who runs this code: the current task (a connection held by it is its own)."""
    return asyncio.current_task()

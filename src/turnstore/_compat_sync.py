"""The threaded twin of ``turnstore._compat_async``: the same names on threads.

The generated sync modules import this module where their asyncio source imports
``turnstore._compat_async``. A ``Task`` is a daemon thread running one function; it is
cancelled cooperatively: ``cancel()`` makes the task's next ``sleep`` raise
``CancelledError`` (a thread cannot be interrupted anywhere else, so a call in progress,
such as a database write, finishes first).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, Generic, TypeVar

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

Lock = threading.Lock
Event = threading.Event

#: False: on threads, every statement of the in-memory store takes its monitor.
LOOP_IS_MONITOR = False

_current = threading.local()


class CancelledError(BaseException):
    """A ``Task`` was cancelled: raised by ``sleep`` inside it."""


class Task(Generic[T]):
    """One function running in a daemon thread, with a task's ``done``/``cancel``/
    ``cancelled``/``exception``/``result``."""

    def __init__(self, func: Callable[..., T], args: tuple[Any, ...], name: str | None) -> None:
        self._func = func
        self._args = args
        self._cancel_requested = threading.Event()
        self._result: T | None = None
        self._exception: BaseException | None = None
        self._cancelled = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        _current.task = self
        try:
            self._result = self._func(*self._args)
        except CancelledError:
            self._cancelled = True
        except BaseException as exc:
            self._exception = exc

    def done(self) -> bool:
        return not self._thread.is_alive()

    def cancel(self) -> bool:
        """Ask the task to stop at its next ``sleep``; False if it is already done."""
        if self.done():
            return False
        self._cancel_requested.set()
        return True

    def cancelled(self) -> bool:
        return self._cancelled

    def exception(self) -> BaseException | None:
        if self._cancelled:
            raise CancelledError
        return self._exception

    def result(self) -> T:
        if self._cancelled:
            raise CancelledError
        if self._exception is not None:
            raise self._exception
        return self._result  # type: ignore[return-value]  # set when the function returned

    def _join(self, timeout: float | None) -> bool:
        self._thread.join(timeout)
        return self.done()


def spawn(func: Callable[..., T], *args: Any, name: str | None = None) -> Task[T]:
    """Run ``func(*args)`` in a new daemon thread."""
    return Task(func, args, name)


def sleep(seconds: float) -> None:
    """``time.sleep``, or, inside a ``Task``, a wait that its ``cancel()`` interrupts."""
    task: Task[Any] | None = getattr(_current, "task", None)
    if task is None:
        time.sleep(seconds)
    elif task._cancel_requested.wait(seconds):
        raise CancelledError


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def wait_tasks(tasks: Iterable[Task[Any]], timeout: float | None = None) -> set[Task[Any]]:
    """Wait until the tasks are done or ``timeout`` passes; the tasks done by then."""
    deadline = None if timeout is None else time.monotonic() + timeout
    tasks = list(tasks)
    for task in tasks:
        task._join(_remaining(deadline))
    return {task for task in tasks if task.done()}


def join(task: Task[T], timeout: float | None = None) -> T:
    """The task's result (or its exception), waiting at most ``timeout`` seconds
    (``TimeoutError`` then; the thread is asked to stop)."""
    if not task._join(timeout):
        task.cancel()
        raise TimeoutError(f"task {task._thread.name} still running after {timeout} s")
    return task.result()


def gather(tasks: Iterable[Task[T]], timeout: float | None = None) -> list[T | BaseException]:
    """Every task's result or exception, in order, waiting at most ``timeout`` seconds."""
    tasks = list(tasks)
    if len(wait_tasks(tasks, timeout)) < len(tasks):
        raise TimeoutError(f"tasks still running after {timeout} s")
    results: list[T | BaseException] = []
    for task in tasks:
        error = task._exception if not task._cancelled else CancelledError()
        results.append(task.result() if error is None else error)
    return results


def wait_event(event: threading.Event, timeout: float | None) -> bool:
    """Wait until ``event`` is set or ``timeout`` passes; whether it was set."""
    return event.wait(timeout)


class Waiter:
    """Set once, with a result or an exception, by a thread holding its ``Monitor``."""

    __slots__ = ("_condition", "_done", "_exception")

    def __init__(self, condition: threading.Condition) -> None:
        self._condition = condition
        self._done = False
        self._exception: BaseException | None = None

    def done(self) -> bool:
        return self._done

    def set_result(self, result: None) -> None:
        self._done = True
        self._condition.notify_all()

    def set_exception(self, exception: BaseException) -> None:
        self._exception = exception
        self.set_result(None)


class Monitor:
    """The in-memory store's exclusion: a re-entrant condition variable, held by every
    statement and released only while a statement waits for another transaction."""

    __slots__ = ("_condition",)

    def __init__(self) -> None:
        self._condition = threading.Condition(threading.RLock())

    def __enter__(self) -> None:
        self._condition.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._condition.release()

    def waiter(self) -> Waiter:
        """A new waiter (call with the monitor held)."""
        return Waiter(self._condition)


def wait_waiter(waiter: Waiter, timeout: float | None = None) -> bool:
    """Wait, releasing the monitor meanwhile, until ``waiter`` is set, at most ``timeout``
    seconds (``None``: for ever); raises the exception it was set with; whether it was set
    in time."""
    done = waiter._condition.wait_for(waiter.done, timeout)
    if waiter._exception is not None:
        raise waiter._exception
    return bool(done)


def cancel_until_done(task: Task[Any], *, total_secs: float) -> bool:
    """Ask ``task`` to stop (it stops at its next ``sleep``) and wait for it, at most
    ``total_secs``; whether it is done."""
    task.cancel()
    wait_tasks([task], total_secs)
    return task.done()


def shield(value: T) -> T:
    """The sync twin of the async ``shield``: a thread is not cancelled mid-call."""
    return value


def current_owner() -> object:
    """Who runs this code: the current thread (a connection held by it is its own)."""
    return threading.get_ident()

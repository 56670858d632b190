"""Per-thread deadlines and the lock that honours them, as plain classes.

Every publish enters a deadline block and takes a lock; as
``contextlib.contextmanager`` generators they cost a generator, its frames
and a handful of calls each time. :class:`Deadline` and :class:`Holding`
do the same with one ``__enter__`` and one ``__exit__``;
:class:`ThreadState` holds the thread's deadline with class
defaults, so reading them needs no ``getattr(..., None)``.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Optional

from tavrida import exceptions


class ThreadState(threading.local):
    """What the adapter keeps per thread: its deadline."""

    #: ``time.monotonic()`` by which this thread's blocking operations give up, if any.
    deadline: Optional[float] = None


class Deadline:
    """The block of ``transport.deadline(timeout)``: the earliest deadline wins, then restored."""

    __slots__ = ("_state", "_timeout", "_previous")

    def __init__(self, state: ThreadState, timeout: Optional[float]) -> None:
        self._state = state
        self._timeout = timeout
        self._previous: Optional[float] = None

    def __enter__(self) -> None:
        timeout = self._timeout
        if timeout is None:
            return
        state = self._state
        previous = self._previous = state.deadline
        # Not max(): a call per publish (bench.profiling "cast, tavrida: client").
        mine = time.monotonic() + (timeout if timeout > 0.0 else 0.0)
        state.deadline = mine if previous is None else min(mine, previous)

    def __exit__(self, *exc_info: Any) -> None:
        if self._timeout is not None:
            self._state.deadline = self._previous


#: Makes the ConnectionFailed a lock taken too late raises (the transport's ``_failed``).
Failed = Callable[[Optional[BaseException], str], exceptions.ConnectionFailed]

#: Why :func:`take` gave up.
TOO_LATE = "timed out: another thread holds the connection (reconnecting)"


def take(state: ThreadState, lock: Any, failed: Failed) -> None:
    """Acquire ``lock`` before this thread's deadline, or raise ``failed(None, TOO_LATE)``."""
    deadline = state.deadline
    if deadline is None:
        lock.acquire()
    # A free lock is taken without reading the clock: bench.profiling "cast, tavrida: client".
    elif not (lock.acquire(blocking=False)
              or lock.acquire(timeout=max(deadline - time.monotonic(), 0.0))):
        raise failed(None, TOO_LATE)


class Holding:
    """A lock held for a block, taken before this thread's deadline (see :func:`take`)."""

    __slots__ = ("_state", "_lock", "_failed")

    def __init__(self, state: ThreadState, lock: Any, failed: Failed) -> None:
        self._state = state
        self._lock = lock
        self._failed = failed

    def __enter__(self) -> None:
        take(self._state, self._lock, self._failed)

    def __exit__(self, *exc_info: Any) -> None:
        self._lock.release()

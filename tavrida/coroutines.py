"""Coroutines in the blocking core: ``async def`` handlers and middlewares.

The core calls handlers and middlewares as functions, on a server's own
threads. An ``async def`` one returns a coroutine: :func:`resolve` runs it
to its end on an event loop and returns its result (or raises what it
raised) to the calling thread, which waits as it waits for a sync handler.
The loop is the controller's when one was given
(:class:`tavrida.aio.server.Server` gives its own: handlers share the
application's loop), else one loop of the process on a thread of its own
(:func:`process_loop`: a blocking server, ``tavrida run``,
:func:`tavrida.testing.call_handler`).

A server's handlers run as :class:`HandlerTasks`: when its stop gives up on
them (the grace period is over), their tasks are cancelled, and the threads
waiting for them get :class:`~tavrida.shutdown.StopNow` (their messages go
back to the broker unacked).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import inspect
import logging
import threading
import weakref
from typing import Any, Awaitable, Coroutine, List, Optional, Set, Tuple, TypeVar

from tavrida import exceptions
from tavrida.shutdown import StopNow

T = TypeVar("T")

LOG = logging.getLogger(__name__)

#: Seconds a stop waits for the handler tasks it cancelled to end.
CANCEL_WAIT = 5.0

_lock = threading.Lock()
_loop: Optional[asyncio.AbstractEventLoop] = None


#: A coroutine sent to a loop, its sender's context (as run_coroutine_threadsafe keeps
#: it: a trace's span, say) and the future its sender waits on.
_Waiting = Tuple[Coroutine[Any, Any, Any], contextvars.Context, "concurrent.futures.Future[Any]"]


class _Inbox:
    """Coroutines sent to one loop from other threads: those sent together start in one turn.

    ``asyncio.run_coroutine_threadsafe`` wakes the loop once per coroutine;
    here the first of a batch wakes it and the loop starts every coroutine
    waiting then (bench scenario 8: wake-ups of the loop per call).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._waiting: List[_Waiting] = []

    def submit(self, coro: Coroutine[Any, Any, T]) -> "concurrent.futures.Future[T]":
        """Run ``coro`` on the loop; its future has the outcome (as run_coroutine_threadsafe)."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._lock:
            first = not self._waiting
            self._waiting.append((coro, contextvars.copy_context(), future))
        if first:
            try:
                self._loop.call_soon_threadsafe(self._start)
            except RuntimeError as exc:  # the loop is closed: nothing will start them
                for waiting, _, its_future in self._take():
                    waiting.close()
                    its_future.set_exception(exc)
        return future

    def _take(self) -> List[_Waiting]:
        with self._lock:
            taken, self._waiting = self._waiting, []
        return taken

    def _start(self) -> None:
        """Start the coroutines waiting (on the loop)."""
        for coro, context, future in self._take():
            try:
                task = context.run(self._loop.create_task, coro)  # runs in a copy of it
            except BaseException as exc:  # noqa: BLE001 - told to the waiting thread
                coro.close()
                if future.set_running_or_notify_cancel():
                    future.set_exception(exc)
                continue
            task.add_done_callback(functools.partial(_copy_outcome, future))


def _copy_outcome(future: "concurrent.futures.Future[Any]", task: "asyncio.Task[Any]") -> None:
    if task.cancelled():
        future.cancel()
        return
    if not future.set_running_or_notify_cancel():
        return
    exc = task.exception()
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(task.result())


_inboxes: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Inbox]" = (
    weakref.WeakKeyDictionary())


def _inbox(loop: asyncio.AbstractEventLoop) -> _Inbox:
    inbox = _inboxes.get(loop)
    if inbox is None:
        with _lock:
            inbox = _inboxes.get(loop)
            if inbox is None:
                inbox = _inboxes[loop] = _Inbox(loop)
    return inbox


def process_loop() -> asyncio.AbstractEventLoop:
    """The event loop of this process for coroutines without one (started on first use)."""
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="tavrida-coroutines",
                             daemon=True).start()
            _loop = loop
        return _loop


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable


class HandlerTasks:
    """The tasks of one server's ``async def`` handlers and middlewares running now.

    :meth:`abandon` (a stop whose grace period is over, once the messages in
    hand went back to the broker) cancels them and waits for them to end; a
    thread waiting for one gets :class:`~tavrida.shutdown.StopNow`.
    """

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._tasks: Set[Tuple["asyncio.Task[Any]", asyncio.AbstractEventLoop]] = set()
        self._abandoned = False

    @property
    def abandoned(self) -> bool:
        return self._abandoned

    def reopen(self) -> None:
        """A new run of the server: what it starts runs to its end again."""
        with self._lock:
            self._abandoned = False

    async def run(self, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable`` as one of these tasks (on its loop)."""
        task = asyncio.current_task()
        assert task is not None
        entry = (task, asyncio.get_running_loop())
        with self._lock:
            if self._abandoned:
                if inspect.iscoroutine(awaitable):
                    awaitable.close()
                raise asyncio.CancelledError()
            self._tasks.add(entry)
        try:
            return await awaitable
        finally:
            with self._lock:
                self._tasks.discard(entry)
                self._lock.notify_all()

    def abandon(self, timeout: float = CANCEL_WAIT) -> int:
        """Cancel the tasks running; wait up to ``timeout`` s for them to end; how many."""
        with self._lock:
            self._abandoned = True
            running = list(self._tasks)
        for task, loop in running:
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:  # its loop is closed: the task will never run again
                with self._lock:
                    self._tasks.discard((task, loop))
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        with self._lock:
            # (Not on a loop of theirs: they could not end while it waits.)
            if not any(loop is current for _, loop in self._tasks):
                self._lock.wait_for(lambda: not self._tasks, timeout)
            left = len(self._tasks)
        if left:
            LOG.warning("%d handler task(s) still running %g s after being cancelled", left,
                        timeout)
        return len(running)


def resolve(value: Any, loop: Optional[asyncio.AbstractEventLoop] = None,
            tasks: Optional[HandlerTasks] = None) -> Any:
    """``value``, or what it gives once awaited on ``loop`` when it is awaitable.

    Called from a thread other than the loop's (a server's thread or
    worker); on the loop's own thread it would wait for itself, so it raises
    :class:`~tavrida.exceptions.TavridaError` instead. Awaited as one of
    ``tasks``: raises :class:`~tavrida.shutdown.StopNow` when they were abandoned.
    """
    if not inspect.isawaitable(value):
        return value
    target = loop if loop is not None else process_loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is target:
        if inspect.iscoroutine(value):
            value.close()
        raise exceptions.TavridaError(
            "an async handler cannot be run from its own event loop's thread: run the "
            "server's handlers on worker threads (aio.Server does)")
    coro = _awaited(value) if tasks is None else tasks.run(value)
    try:
        return _inbox(target).submit(coro).result()
    except concurrent.futures.CancelledError:
        if tasks is not None and tasks.abandoned:
            raise StopNow() from None
        raise

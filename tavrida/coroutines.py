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
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from typing import Any, Awaitable, Optional, TypeVar

from tavrida import exceptions

T = TypeVar("T")

_lock = threading.Lock()
_loop: Optional[asyncio.AbstractEventLoop] = None


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


def resolve(value: Any, loop: Optional[asyncio.AbstractEventLoop] = None) -> Any:
    """``value``, or what it gives once awaited on ``loop`` when it is awaitable.

    Called from a thread other than the loop's (a server's thread or
    worker); on the loop's own thread it would wait for itself, so it raises
    :class:`~tavrida.exceptions.TavridaError` instead.
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
    return asyncio.run_coroutine_threadsafe(_awaited(value), target).result()

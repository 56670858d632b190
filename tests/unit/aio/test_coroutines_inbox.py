"""coroutines.resolve from many threads: each coroutine's outcome, in its sender's context."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest

from tavrida import coroutines

pytestmark = pytest.mark.anyio

WHO: contextvars.ContextVar[str] = contextvars.ContextVar("tvt_who", default="")


async def _echo(n: int) -> tuple:
    await asyncio.sleep(0)
    if n == 13:
        raise ValueError("thirteen")
    return n, WHO.get()


async def test_coroutines_from_many_threads_each_get_their_outcome_and_context() -> None:
    loop = asyncio.get_running_loop()
    outcomes: dict = {}

    def sender(n: int) -> None:
        WHO.set(f"thread-{n}")
        try:
            outcomes[n] = coroutines.resolve(_echo(n), loop)
        except ValueError as exc:
            outcomes[n] = str(exc)

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(40)]
    for thread in threads:
        thread.start()
    await loop.run_in_executor(None, lambda: [thread.join(30) for thread in threads])
    assert outcomes == {n: "thirteen" if n == 13 else (n, f"thread-{n}") for n in range(40)}


def test_a_coroutine_sent_to_a_closed_loop_raises_at_once() -> None:
    loop = asyncio.new_event_loop()
    loop.close()
    coro = _echo(1)
    try:
        with pytest.raises(RuntimeError):
            coroutines.resolve(coro, loop)
        with pytest.raises(RuntimeError):  # and again: nothing is left waiting
            coroutines.resolve(coro, loop)
    finally:
        coro.close()

"""The stop tests' parts: a server of one kind started and stopped from async tests, and a
handler that holds its message until cancelled.

``kind``: ``"aio"`` (:class:`tavrida.aio.Server`), ``"blocking"`` (workers=0)
or ``"blocking-workers"`` (workers=2), serving ``cls`` on ``queue``.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Dict, List

from tavrida import aio, server

#: The server kinds the stop tests run.
KINDS = ("blocking", "blocking-workers", "aio")


class Holds:
    """What :meth:`hold` saw: runs started, the first one entered, its cancellation."""

    def __init__(self) -> None:
        self.started: List[int] = []
        self.entered = threading.Event()
        self.cancelled = threading.Event()

    async def hold(self, n: int, holds: bool) -> Dict[str, Any]:
        """A ``hold(n)`` handler's body: waits for ever (cancellation noted) if ``holds``,
        else answers."""
        self.started.append(n)
        if not holds:
            return {"n": n, "by": "the next server"}
        self.entered.set()
        try:
            await asyncio.Event().wait()  # never set
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return {"n": n, "by": "the server that stopped"}


class Served:
    """A server of ``kind`` serving ``cls``; :meth:`stop` returns once it stopped."""

    def __init__(self, kind: str, config: Any, queue: str, exchange: str, cls: type,
                 stop_timeout: float) -> None:
        self.kind = kind
        if kind == "aio":
            self.aio = aio.Server(config, queue, exchange, [cls], stop_timeout=stop_timeout)
        else:
            self.server = server.Server(config, queue, exchange, [cls],
                                        stop_timeout=stop_timeout,
                                        workers=2 if kind == "blocking-workers" else 0)

    async def start(self) -> None:
        if self.kind == "aio":
            self.serving = asyncio.ensure_future(self.aio.serve())
            await self.aio.wait_started()
        else:
            self.server.start()
            self.thread = threading.Thread(target=self.server.run, daemon=True)
            self.thread.start()

    async def stop(self, timeout: float = 60.0) -> None:
        """Return once the server stopped (``timeout``: the test's bound, not a verdict)."""
        if self.kind == "aio":
            await self.aio.stop()
            await asyncio.wait_for(self.serving, timeout)
        else:
            self.server.stop()
            await asyncio.get_running_loop().run_in_executor(None, self.thread.join, timeout)
            assert not self.thread.is_alive()

"""A deployment of the asyncio broker tests: an async front and a blocking back service."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any, AsyncIterator

from tavrida import aio, discovery, server


@contextlib.asynccontextmanager
async def front_and_back(url: str, unique: Any, front: str, back: str, front_cls: Any,
                         back_cls: Any, max_concurrency: int
                         ) -> AsyncIterator[discovery.LocalDiscovery]:
    """``front_cls`` served by aio.Server, ``back_cls`` by a blocking Server in a thread,
    each on a queue and exchange of its own; yields the discovery that finds both."""
    disc = discovery.LocalDiscovery()
    names = {svc: (unique(f"{svc}-ex"), unique(f"{svc}-q")) for svc in (front, back)}
    for svc, (exchange, _) in names.items():
        disc.register_remote_service(svc, exchange)
    front_cls.set_discovery(disc)
    back_cls.set_discovery(disc)
    blocking = server.Server(url, names[back][1], names[back][0], [back_cls])
    blocking.start()
    thread = threading.Thread(target=blocking.run, daemon=True)
    thread.start()
    srv = aio.Server(url, names[front][1], names[front][0], [front_cls],
                     max_concurrency=max_concurrency)
    serving = asyncio.ensure_future(srv.serve())
    try:
        await srv.wait_started()
        yield disc
    finally:
        await srv.stop()
        await asyncio.wait_for(serving, 60)
        blocking.stop()
        await asyncio.get_running_loop().run_in_executor(None, thread.join, 30)
    assert not thread.is_alive()

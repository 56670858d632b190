"""A stop that gives up on ``async def`` handlers, on RabbitMQ (and Redis).

As on memory:// (tests/unit/aio/test_async_handlers_stop.py): once the
server says it stopped, the handler still running has been cancelled, and
its message, unacked, is handled by the next server (whose answer the
caller gets).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Dict, List

import pytest

from tavrida import aio, discovery, dispatcher, server, service

pytestmark = pytest.mark.anyio


class Runs:
    """What the handlers saw: runs started, the first one entered, its cancellation."""

    def __init__(self) -> None:
        self.started: List[int] = []
        self.entered = threading.Event()
        self.cancelled = threading.Event()


def holding_service(name: str, runs: Runs, holds: bool) -> type:
    """``<name>.hold(n)``: waits for ever (cancellation noted) if ``holds``, else answers."""

    @dispatcher.rpc_service(name)
    class Holding(service.ServiceController):
        @dispatcher.rpc_method(service=name, method="hold")
        async def hold(self, request, proxy, n):
            runs.started.append(n)
            if not holds:
                return {"n": n, "by": "the next server"}
            runs.entered.set()
            try:
                await asyncio.Event().wait()  # never set
            except asyncio.CancelledError:
                runs.cancelled.set()
                raise
            return {"n": n, "by": "the server that stopped"}

    return Holding


class Served:
    """A server of ``kind`` (aio, or blocking with ``workers``) serving ``cls``."""

    def __init__(self, kind: str, url: str, queue: str, exchange: str, cls: type,
                 stop_timeout: float) -> None:
        self.kind = kind
        if kind == "aio":
            self.aio = aio.Server(url, queue, exchange, [cls], stop_timeout=stop_timeout)
        else:
            self.server = server.Server(url, queue, exchange, [cls], stop_timeout=stop_timeout,
                                        workers=2 if kind == "blocking-workers" else 0)

    async def start(self) -> None:
        if self.kind == "aio":
            self.serving = asyncio.ensure_future(self.aio.serve())
            await self.aio.wait_started()
        else:
            self.server.start()
            self.thread = threading.Thread(target=self.server.run, daemon=True)
            self.thread.start()

    async def stop(self) -> None:
        """Return once the server stopped."""
        if self.kind == "aio":
            await self.aio.stop()
            await asyncio.wait_for(self.serving, 60)
        else:
            self.server.stop()
            await asyncio.get_running_loop().run_in_executor(None, self.thread.join, 60)
            assert not self.thread.is_alive()


#: Each server kind on RabbitMQ; on Redis the asyncio one (its redelivery takes 2-3 s).
CASES = [("amqp", "blocking"), ("amqp", "blocking-workers"), ("amqp", "aio"), ("redis", "aio")]


@pytest.fixture(params=CASES, ids="-".join)
def case(request: pytest.FixtureRequest) -> Any:
    return request.param


@pytest.fixture
def url(case: Any, request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{case[0]}_url"))


async def test_a_stop_that_gives_up_cancels_the_handler_and_gives_its_message_back(
        case: Any, url: str, unique: Any) -> None:
    kind = case[1]
    name = unique("holding").replace(".", "-")
    queue, exchange = unique("holding-q"), unique("holding-ex")
    disc = discovery.LocalDiscovery()
    disc.register_remote_service(name, exchange)
    runs = Runs()
    first = Served(kind, url, queue, exchange, holding_service(name, runs, True), 0.2)
    await first.start()
    second = None
    try:
        async with aio.RPCClient(url, disc, source=unique("caller").replace(".", "-")) as cli:
            call = asyncio.ensure_future(getattr(cli, name).hold(n=1).call(timeout=60))
            loop = asyncio.get_running_loop()
            assert await loop.run_in_executor(None, runs.entered.wait, 30)
            await first.stop()
            assert runs.cancelled.is_set()  # cancelled before the server said it stopped
            assert not call.done()
            second = Served(kind, url, queue, exchange, holding_service(name, runs, False), 30)
            await second.start()
            answer: Dict[str, Any] = await call
    finally:
        if second is not None:
            await second.stop()
    assert answer == {"n": 1, "by": "the next server"}
    assert runs.started == [1, 1]

"""A stop that gives up on ``async def`` handlers, on RabbitMQ (and Redis).

As on memory:// (tests/unit/aio/test_async_handlers_stop.py): once the
server says it stopped, the handler still running has been cancelled, and
its message, unacked, is handled by the next server (whose answer the
caller gets).
"""

from __future__ import annotations

import asyncio
from typing import Any, Dict

import pytest
from served import Holds, Served

from tavrida import aio, discovery, dispatcher, service

pytestmark = pytest.mark.anyio


def holding_service(name: str, runs: Holds, holds: bool) -> type:
    """``<name>.hold(n)``: waits for ever (cancellation noted) if ``holds``, else answers."""

    @dispatcher.rpc_service(name)
    class Holding(service.ServiceController):
        @dispatcher.rpc_method(service=name, method="hold")
        async def hold(self, request, proxy, n):
            return await runs.hold(n, holds)

    return Holding


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
    runs = Holds()
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

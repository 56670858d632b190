"""``async def`` handlers on both servers (memory://): awaitable proxies, and a stop that gives up.

The blocking :class:`tavrida.server.Server` and :class:`tavrida.aio.Server`
alike hand an ``async def`` handler a proxy whose calls are awaited; when a
stop's grace period runs out with such handlers still running, their tasks
are cancelled (nothing of theirs runs on after the server stopped) and their
messages go back to the broker unacked, to be handled by the next server.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, AsyncIterator, Callable, Dict, List

import pytest
from aio_services import hello_service
from served import KINDS, Holds, Served

from tavrida import aio, discovery, dispatcher, service
from tavrida.server import Server

pytestmark = pytest.mark.anyio



class Runs(Holds):
    """What the handlers of one test saw: runs started, cancellations, answers."""

    def __init__(self) -> None:
        super().__init__()
        self.answered: List[Any] = []
        self.answer_came = threading.Event()


def relay_service(runs: Runs, holds: bool) -> type:
    """``relay``: ``ask`` awaits a call to ``test_hello``; ``hold`` waits for ever if ``holds``."""

    @dispatcher.rpc_service("relay")
    class Relay(service.ServiceController):
        @dispatcher.rpc_method(service="relay", method="ask")
        async def ask(self, request, proxy, n):
            answer = await proxy.test_hello.hello(param=n).call(timeout=10)
            cast = await proxy.test_hello.hello(param=n + 1).cast()
            await proxy.test_hello.hello(param=n + 2).call()  # 1.0's: answered below
            return {"relayed": answer["echo"], "proxy": type(proxy).__name__,
                    "cast_to": cast.destination.to_routing_key()}

        @dispatcher.rpc_response_method(service="test_hello", method="hello")
        async def answered(self, response, proxy, echo, correlation_id, context, headers):
            runs.answered.append((echo, context))
            runs.answer_came.set()

        @dispatcher.rpc_method(service="relay", method="hold")
        async def hold(self, request, proxy, n):
            return await runs.hold(n, holds)

    disc = discovery.LocalDiscovery()
    disc.register_remote_service("test_hello", "test_exchange")
    Relay.set_discovery(disc)
    return Relay


@pytest.fixture
async def hello(cluster: Any, running: Any) -> List[Any]:
    """``test_hello`` on a blocking server: what its ``hello`` got."""
    got: List[Any] = []
    running.start(Server(cluster.config, "test_service", "test_exchange", [hello_service(got)]))
    return got


@pytest.fixture
def client_disc() -> discovery.LocalDiscovery:
    disc = discovery.LocalDiscovery()
    disc.register_remote_service("relay", "relay_exchange")
    return disc


@pytest.fixture
async def served(cluster: Any) -> AsyncIterator[Callable[..., Any]]:
    """``served(kind, cls, stop_timeout)``: a started server; the ones still running stop after."""
    made: List[Served] = []

    async def serve(kind: str, cls: type, stop_timeout: float = 30.0) -> Served:
        one = Served(kind, cluster.config, "relay_queue", "relay_exchange", cls, stop_timeout)
        await one.start()
        made.append(one)
        return one

    yield serve
    for one in made:
        await one.stop()


@pytest.mark.parametrize("kind", KINDS)
async def test_an_async_handlers_proxy_awaits_calls_on_either_server(
        kind: str, cluster: Any, hello: List[Any], served: Any,
        client_disc: discovery.LocalDiscovery) -> None:
    runs = Runs()
    await served(kind, relay_service(runs, holds=False))
    async with aio.RPCClient(cluster.config, client_disc, source="client_app") as cli:
        answer = await cli.relay.ask(n=4).call(timeout=20)
    assert answer == {"relayed": 4, "proxy": "AsyncProxy", "cast_to": "test_hello.hello"}
    assert await asyncio.get_running_loop().run_in_executor(None, runs.answer_came.wait, 20)
    assert runs.answered == [(6, {"n": 4, "param": 6})]  # the 1.0 call's answer came back


@pytest.mark.parametrize("kind", KINDS)
async def test_a_stop_that_gives_up_cancels_the_handler_and_gives_its_message_back(
        kind: str, cluster: Any, served: Any, client_disc: discovery.LocalDiscovery,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="tavrida.server")
    runs = Runs()
    first = await served(kind, relay_service(runs, holds=True), stop_timeout=0.2)
    async with aio.RPCClient(cluster.config, client_disc, source="client_app") as cli:
        call = asyncio.ensure_future(cli.relay.hold(n=1).call(timeout=60))
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, runs.entered.wait, 20)
        await first.stop()
        # Once the server says it stopped, the handler has seen its cancellation...
        assert runs.cancelled.is_set()
        assert not call.done()
        assert cluster.broker.messages("relay_queue") != []  # ...and its message is back
        assert "stop_timeout of 0.2 s is over" in caplog.text
        assert "to relay.hold is still being handled: not acked" in caplog.text
        await served(kind, relay_service(runs, holds=False))
        answer: Dict[str, Any] = await call
    assert answer == {"n": 1, "by": "the next server"}
    assert runs.started == [1, 1]

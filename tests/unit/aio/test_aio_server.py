"""aio.Server on memory://: async and sync handlers, middlewares, awaited calls, stop."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tavrida import aio, client, discovery, dispatcher, messages, middleware, service
from tavrida.server import Server

pytestmark = pytest.mark.anyio


class Tag(middleware.Middleware):
    """An async middleware: tags every incoming request's context."""

    async def process(self, message):
        await asyncio.sleep(0)
        if isinstance(message, messages.IncomingRequest):
            message.context["tagged"] = True
        return message


def mixed_service(seen):
    @dispatcher.rpc_service("mixed")
    class Mixed(service.ServiceController):
        def __init__(self, postprocessor):
            super().__init__(postprocessor)
            self.add_incoming_middleware(Tag())

        @dispatcher.rpc_method(service="mixed", method="aecho")
        async def aecho(self, request, proxy, n):
            seen.append(("async", threading.current_thread().name))
            await asyncio.sleep(0)
            return {"n": n, "tagged": request.context.get("tagged", False)}

        @dispatcher.rpc_method(service="mixed", method="secho")
        def secho(self, request, proxy, n):
            seen.append(("sync", threading.current_thread().name))
            return {"n": n}

        @dispatcher.rpc_method(service="mixed", method="afail")
        async def afail(self, request, proxy):
            raise LookupError("not here")

        @dispatcher.rpc_method(service="mixed", method="relay")
        async def relay(self, request, proxy, n):
            answer = await proxy.test_hello.hello(param=n).call(timeout=10)
            return {"relayed": answer["echo"]}

        @dispatcher.rpc_method(service="mixed", method="wait")
        async def wait(self, request, proxy, event_name):
            if event_name + "-in" in EVENTS:
                EVENTS[event_name + "-in"].set()
            await EVENTS[event_name].wait()
            return {"waited": event_name}

    disc = discovery.LocalDiscovery()
    disc.register_remote_service("client_app", "client_exchange")
    disc.register_remote_service("test_hello", "test_exchange")
    Mixed.set_discovery(disc)
    return Mixed


EVENTS: dict = {}


@pytest.fixture
def client_disc():
    disc = discovery.LocalDiscovery()
    disc.register_remote_service("mixed", "mixed_exchange")
    disc.register_remote_service("client_app", "client_exchange")
    return disc


@pytest.fixture
async def serving(cluster):
    seen = []
    srv = aio.Server(cluster.config, "mixed_queue", "mixed_exchange", [mixed_service(seen)],
                     max_concurrency=8)
    task = asyncio.ensure_future(srv.serve())
    await srv.wait_started()
    yield srv, seen
    await srv.stop()
    await asyncio.wait_for(task, 30)


async def test_async_and_sync_handlers_answer_an_async_client(cluster, serving, client_disc):
    srv, seen = serving
    async with aio.RPCClient(cluster.config, client_disc, source="client_app") as cli:
        first = await cli.mixed.aecho(n=1).call(timeout=10)
        second = await cli.mixed.secho(n=2).call(timeout=10)
    assert first == {"n": 1, "tagged": True}
    assert second == {"n": 2}
    # Neither ran on the loop's thread: the sync one on a worker, the async one on the loop.
    assert [kind for kind, _ in seen] == ["async", "sync"]
    assert seen[1][1] != threading.current_thread().name
    assert seen[0][1] == threading.current_thread().name


async def test_an_async_handler_answers_a_blocking_client(cluster, serving, client_disc):
    def blocking_call():
        with client.RPCClient(cluster.config, client_disc, source="client_app") as cli:
            return cli.mixed.aecho(n=5).call(timeout=10)

    answer = await asyncio.get_running_loop().run_in_executor(None, blocking_call)
    assert answer == {"n": 5, "tagged": True}


async def test_an_async_handler_raising_answers_with_an_error(cluster, serving, client_disc):
    from tavrida import exceptions
    async with aio.RPCClient(cluster.config, client_disc, source="client_app") as cli:
        with pytest.raises(exceptions.RemoteError) as raised:
            await cli.mixed.afail().call(timeout=10)
    assert raised.value.remote_name == "LookupError"


async def test_an_async_handler_awaits_a_call_to_another_service(cluster, running, serving,
                                                                 client_disc):
    from aio_services import hello_service
    running.start(Server(cluster.config, "test_service", "test_exchange", [hello_service([])]))
    async with aio.RPCClient(cluster.config, client_disc, source="client_app") as cli:
        answer = await cli.mixed.relay(n=9).call(timeout=10)
    assert answer == {"relayed": 9}


async def test_handlers_run_concurrently_up_to_max_concurrency(cluster, serving, client_disc):
    EVENTS.clear()
    EVENTS.update({name: asyncio.Event() for name in ("a", "b", "c")})
    async with aio.RPCClient(cluster.config, client_disc, source="client_app") as cli:
        calls = [asyncio.ensure_future(cli.mixed.wait(event_name=name).call(timeout=20))
                 for name in ("a", "b", "c")]
        # All three are in their handlers at once: releasing them in reverse order works.
        for name in ("c", "b", "a"):
            EVENTS[name].set()
        answers = await asyncio.gather(*calls)
    assert [answer["waited"] for answer in answers] == ["a", "b", "c"]


async def test_stop_finishes_the_handlers_in_hand(cluster, client_disc):
    EVENTS.clear()
    EVENTS["held"] = asyncio.Event()
    EVENTS["held-in"] = asyncio.Event()
    srv = aio.Server(cluster.config, "mixed_queue", "mixed_exchange", [mixed_service([])])
    serving = asyncio.ensure_future(srv.serve())
    await srv.wait_started()
    async with aio.RPCClient(cluster.config, client_disc, source="client_app") as cli:
        call = asyncio.ensure_future(cli.mixed.wait(event_name="held").call(timeout=20))
        await EVENTS["held-in"].wait()
        await srv.stop()
        assert not serving.done()
        EVENTS["held"].set()
        assert (await call) == {"waited": "held"}
    await asyncio.wait_for(serving, 20)


async def test_cancelling_serve_stops_the_server(cluster):
    srv = aio.Server(cluster.config, "mixed_queue", "mixed_exchange", [mixed_service([])])
    serving = asyncio.ensure_future(srv.serve())
    await asyncio.sleep(0)  # serve() is starting the server
    serving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await serving
    assert srv.server.transport is not None and srv.server.transport.closed


async def test_the_queue_keeps_its_messages_for_the_next_server(cluster, client_disc):
    """A cancelled serve() took nothing: a server started later answers the call."""
    srv = aio.Server(cluster.config, "mixed_queue", "mixed_exchange", [mixed_service([])])
    serving = asyncio.ensure_future(srv.serve())
    await srv.wait_started()
    async with aio.RPCClient(cluster.config, client_disc, source="client_app") as cli:
        assert (await cli.mixed.secho(n=1).call(timeout=10)) == {"n": 1}
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving
        call = asyncio.ensure_future(cli.mixed.secho(n=2).call(timeout=10))
        again = aio.Server(cluster.config, "mixed_queue", "mixed_exchange", [mixed_service([])])
        serving = asyncio.ensure_future(again.serve())
        assert (await call) == {"n": 2}
        await again.stop()
        await serving

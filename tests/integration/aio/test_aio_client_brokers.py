"""aio.RPCClient against RabbitMQ and Redis, with a blocking server: the same wire."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tavrida import aio, discovery, dispatcher, exceptions, server, service

pytestmark = pytest.mark.anyio


def echo_service(name: str) -> type:
    @dispatcher.rpc_service(name)
    class Echo(service.ServiceController):
        @dispatcher.rpc_method(service=name, method="echo")
        def echo(self, request, proxy, n):
            return {"n": n, "request_id": request.request_id}

        @dispatcher.rpc_method(service=name, method="fail")
        def fail(self, request, proxy):
            raise KeyError("missing")

    return Echo


@pytest.fixture
def blocking_server(url, unique):
    """A blocking server of service ``<prefix>-echo`` in a thread; yields the client's discovery."""
    name = unique("echo").replace(".", "-")
    exchange, queue = unique("echo-ex"), unique("echo-q")
    cls = echo_service(name)
    disc = discovery.LocalDiscovery()
    disc.register_remote_service(name, exchange)
    cls.set_discovery(disc)
    srv = server.Server(url, queue, exchange, [cls])
    srv.start()
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    try:
        yield name, disc
    finally:
        srv.stop()
        thread.join(30)
    assert not thread.is_alive()


async def test_calls_casts_and_errors(url, unique, blocking_server):
    name, disc = blocking_server
    source = unique("caller").replace(".", "-")
    async with aio.RPCClient(url, disc, source=source) as cli:
        svc = getattr(cli, name)
        answer = await svc.echo(n=1).call(timeout=30)
        assert answer["n"] == 1
        with pytest.raises(exceptions.RemoteError) as raised:
            await svc.fail().call(timeout=30)
        assert raised.value.remote_name == "KeyError"
        request = await svc.echo(n=2).cast()
        assert request.reply_to.to_routing_key() == ""


@pytest.mark.slow
async def test_many_concurrent_calls_each_get_their_own_answer(url, unique, blocking_server):
    name, disc = blocking_server
    async with aio.RPCClient(url, disc, source=unique("caller").replace(".", "-")) as cli:
        svc = getattr(cli, name)
        calls = [svc.echo(n=n).call(timeout=120) for n in range(2000)]
        answers = await asyncio.gather(*calls)
    assert [answer["n"] for answer in answers] == list(range(2000))
    assert len({answer["request_id"] for answer in answers}) == 2000


async def test_a_call_no_queue_takes_raises_unroutable(url, unique, blocking_server):
    name, disc = blocking_server
    disc.register_remote_service("nobody", disc.get_remote(name))  # bound to no queue there
    async with aio.RPCClient(url, disc, source=unique("caller").replace(".", "-")) as cli:
        with pytest.raises(exceptions.Unroutable):
            await cli.nobody.method(x=1).call(timeout=30)
        with pytest.raises(exceptions.Unroutable):
            await cli.nobody.method(x=1).cast()

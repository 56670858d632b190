"""A cut of the broker connections during many concurrent awaited calls.

Client and server both reach the broker through a TCP proxy that resets
every connection once the calls are under way. The promise: each call gets
its own answer or an error (:class:`~tavrida.exceptions.CallTimeout` when its
answer went down with the client's reply queue), never nothing and never
another call's answer; calls made after the cut are answered.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from soak.proxy import TcpProxy
from tavrida import aio, discovery, dispatcher, exceptions, server, service

pytestmark = pytest.mark.anyio

CALLS = 3000


def echo_service(name: str) -> type:
    @dispatcher.rpc_service(name)
    class Echo(service.ServiceController):
        @dispatcher.rpc_method(service=name, method="echo")
        async def echo(self, request, proxy, n):
            return {"n": n}

    return Echo


@pytest.mark.slow
async def test_a_cut_during_many_calls_loses_none_and_pairs_none_wrong(url, unique):
    name = unique("echo").replace(".", "-")
    exchange, queue = unique("echo-ex"), unique("echo-q")
    cls = echo_service(name)
    disc = discovery.LocalDiscovery()
    disc.register_remote_service(name, exchange)
    cls.set_discovery(disc)
    with TcpProxy.for_url(url) as proxy:
        via = proxy.url(url)
        # A blocking server with the async handler (the process loop runs it).
        srv = server.Server(via, queue, exchange, [cls], workers=8)
        srv.start()
        thread = threading.Thread(target=srv.run, daemon=True)
        thread.start()
        try:
            async with aio.RPCClient(via, disc, source=unique("caller").replace(".", "-")) as cli:
                echo = getattr(cli, name).echo
                answered = asyncio.Event()
                done = 0

                def one_more(_):
                    nonlocal done
                    done += 1
                    if done == CALLS // 10:
                        answered.set()

                calls = []
                for n in range(CALLS):
                    call = asyncio.ensure_future(echo(n=n).call(timeout=60))
                    call.add_done_callback(one_more)
                    calls.append(call)
                await answered.wait()
                assert proxy.cut() >= 2  # the client's and the server's connections
                outcomes = await asyncio.gather(*calls, return_exceptions=True)
                after = await echo(n=-1).call(timeout=60)
        finally:
            srv.stop()
            await asyncio.get_running_loop().run_in_executor(None, thread.join, 60)
    wrong = [(n, o) for n, o in enumerate(outcomes) if isinstance(o, dict) and o["n"] != n]
    assert not wrong, f"answers paired with the wrong call: {wrong[:5]}"
    errors = [o for o in outcomes if not isinstance(o, dict)]
    assert all(isinstance(o, (exceptions.CallTimeout, exceptions.PublishFailed,
                              exceptions.ConnectionFailed)) for o in errors), errors[:5]
    assert len(errors) < CALLS
    assert after == {"n": -1}

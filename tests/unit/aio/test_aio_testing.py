"""The test kit from async tests: call_handler and MemoryCluster with async def handlers."""

from __future__ import annotations

import asyncio

import pytest

from tavrida import discovery, dispatcher, service, testing


def async_service(seen):
    @dispatcher.rpc_service("asvc")
    class ASvc(service.ServiceController):
        @dispatcher.rpc_method(service="asvc", method="square")
        async def square(self, request, proxy, n):
            await asyncio.sleep(0)
            return {"n": n * n}

        @dispatcher.rpc_method(service="asvc", method="note")
        async def note(self, request, proxy, text):
            seen.append((text, asyncio.get_running_loop()))
            await proxy.publish(text=text)

    disc = discovery.LocalDiscovery()
    disc.register_local_publisher("asvc", "asvc_notifications")
    disc.register_remote_service("tester", "tester_exchange")
    ASvc.set_discovery(disc)
    return ASvc


def test_call_handler_runs_an_async_handler():
    result = testing.call_handler(async_service([]), "square", n=4)
    assert result.response == {"n": 16}


@pytest.mark.anyio
async def test_acall_handler_runs_it_on_the_tests_loop():
    seen = []
    result = await testing.acall_handler(async_service(seen), "note", text="hi", cast=True)
    assert seen == [("hi", asyncio.get_running_loop())]
    assert result.exception is None


@pytest.mark.anyio
async def test_a_cluster_serves_awaited_calls_and_adeliver(cluster):
    seen = []
    cluster.add_server([async_service(seen)], queue_name="asvc_q", exchange_name="asvc_ex")
    disc = discovery.LocalDiscovery()
    disc.register_remote_service("asvc", "asvc_ex")
    disc.register_remote_service("tester", "tester_exchange")  # where answers come back
    async with cluster.aio_client(disc, source="tester") as cli:
        assert await cli.asvc.square(n=3).call(timeout=5) == {"n": 9}
        await cli.asvc.note(text="later").cast()
    await cluster.adeliver()  # until idle (the client's I/O thread may have run it already)
    assert [text for text, _ in seen] == ["later"]
    assert cluster.sent_by("tester").requests[-1].payload == {"text": "later"}

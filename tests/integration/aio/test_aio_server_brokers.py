"""aio.Server on RabbitMQ and Redis: blocking and asyncio callers, async handlers calling on."""

from __future__ import annotations

import asyncio

import pytest

from tavrida import aio, client, dispatcher, exceptions, service
from tests.integration.aio.deployment import front_and_back

pytestmark = pytest.mark.anyio


def services(prefix: str):
    """An async service ``<prefix>-front`` calling a blocking one, ``<prefix>-back``."""
    front, back = f"{prefix}-front", f"{prefix}-back"

    @dispatcher.rpc_service(back)
    class Back(service.ServiceController):
        @dispatcher.rpc_method(service=back, method="double")
        def double(self, request, proxy, n):
            return {"n": n * 2}

    @dispatcher.rpc_service(front)
    class Front(service.ServiceController):
        @dispatcher.rpc_method(service=front, method="echo")
        async def echo(self, request, proxy, n):
            await asyncio.sleep(0)
            return {"n": n, "request_id": request.request_id}

        @dispatcher.rpc_method(service=front, method="via_back")
        async def via_back(self, request, proxy, n):
            answer = await getattr(proxy, back).double(n=n).call(timeout=30)
            return {"n": answer["n"]}

        @dispatcher.rpc_method(service=front, method="fail")
        async def fail(self, request, proxy):
            raise PermissionError("no")

    return front, back, Front, Back


@pytest.fixture
async def deployed(url, unique):
    """The async front served by aio.Server, the blocking back by Server (threads)."""
    prefix = unique.prefix.replace(".", "-")
    front, back, Front, Back = services(prefix)
    async with front_and_back(url, unique, front, back, Front, Back, 20) as disc:
        yield front, disc


async def test_an_async_service_answers_a_blocking_client(url, unique, deployed):
    front, disc = deployed

    def call():
        with client.RPCClient(url, disc, source=unique("blocking").replace(".", "-")) as cli:
            answer = getattr(cli, front).echo(n=3).call(timeout=30)
            with pytest.raises(exceptions.RemoteError) as raised:
                getattr(cli, front).fail().call(timeout=30)
            return answer, raised.value.remote_name

    answer, error = await asyncio.get_running_loop().run_in_executor(None, call)
    assert answer["n"] == 3
    assert error == "PermissionError"


async def test_an_async_handler_awaits_a_blocking_service(url, unique, deployed):
    front, disc = deployed
    async with aio.RPCClient(url, disc, source=unique("caller").replace(".", "-")) as cli:
        answers = await asyncio.gather(
            *(getattr(cli, front).via_back(n=n).call(timeout=60) for n in range(50)))
    assert [answer["n"] for answer in answers] == [n * 2 for n in range(50)]


@pytest.mark.slow
async def test_many_concurrent_calls_to_an_async_service(url, unique, deployed):
    front, disc = deployed
    async with aio.RPCClient(url, disc, source=unique("caller").replace(".", "-")) as cli:
        answers = await asyncio.gather(
            *(getattr(cli, front).echo(n=n).call(timeout=120) for n in range(2000)))
    assert [answer["n"] for answer in answers] == list(range(2000))
    assert len({answer["request_id"] for answer in answers}) == 2000

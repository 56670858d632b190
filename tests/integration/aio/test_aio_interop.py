"""Blocking and asyncio code interoperate both ways, on memory://, RabbitMQ and Redis.

An async service (:class:`tavrida.aio.Server`) and a blocking one
(:class:`tavrida.server.Server`, in a thread) call each other from their
handlers, and both kinds of client call both kinds of service: one wire,
whichever side is asyncio.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, AsyncIterator, Dict, List, Tuple

import pytest

from tavrida import aio, client, discovery, dispatcher, exceptions, service
from tests.integration.aio.deployment import front_and_back

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["memory", "amqp", "redis"])
def url(request: pytest.FixtureRequest, unique: Any) -> str:
    """tavrida's in-memory transport (private to the test), RabbitMQ, Redis."""
    if request.param == "memory":
        return f"memory://{unique.prefix}"
    return str(request.getfixturevalue(f"{request.param}_url"))


class Seen:
    """What the blocking service's response handler received, with a way to await it."""

    def __init__(self) -> None:
        self.items: List[Tuple[str, Any]] = []
        self.event = threading.Event()

    def add(self, item: Tuple[str, Any]) -> None:
        self.items.append(item)
        self.event.set()


def services(prefix: str, seen: Seen) -> Tuple[str, str, type, type]:
    """``<prefix>-front`` (async handlers) and ``<prefix>-back`` (blocking ones)."""
    front, back = f"{prefix}-front", f"{prefix}-back"

    @dispatcher.rpc_service(front)
    class Front(service.ServiceController):
        @dispatcher.rpc_method(service=front, method="echo")
        async def echo(self, request, proxy, n):
            await asyncio.sleep(0)
            return {"n": n, "by": "async"}

        @dispatcher.rpc_method(service=front, method="fail")
        async def fail(self, request, proxy):
            raise PermissionError("no")

        @dispatcher.rpc_method(service=front, method="ask_back")
        async def ask_back(self, request, proxy, n):
            # An awaited call from an async handler to the blocking service.
            answer = await getattr(proxy, back).double(n=n).call(timeout=30)
            return {"n": answer["n"], "by": answer["by"]}

    @dispatcher.rpc_service(back)
    class Back(service.ServiceController):
        @dispatcher.rpc_method(service=back, method="double")
        def double(self, request, proxy, n):
            return {"n": n * 2, "by": "blocking"}

        @dispatcher.rpc_method(service=back, method="fail")
        def fail(self, request, proxy):
            raise KeyError("missing")

        @dispatcher.rpc_method(service=back, method="ask_front")
        def ask_front(self, request, proxy, n):
            # A blocking handler calls the async service the 1.0 way: its answer
            # comes to the response handler below.
            getattr(proxy, front).echo(n=n).call()

        @dispatcher.rpc_response_method(service=front, method="echo")
        def front_answered(self, response, proxy, n, by):
            seen.add((by, n))

    return front, back, Front, Back


@pytest.fixture
async def deployed(url: str, unique: Any) -> AsyncIterator[Tuple[str, str, discovery.LocalDiscovery,
                                                                Seen]]:
    """The front served by aio.Server, the back by a blocking Server in a thread."""
    prefix = unique.prefix.replace(".", "-")
    seen = Seen()
    front, back, Front, Back = services(prefix, seen)
    async with front_and_back(url, unique, front, back, Front, Back, 10) as disc:
        yield front, back, disc, seen


async def test_both_clients_call_both_kinds_of_service(url, unique, deployed):
    front, back, disc, _ = deployed
    source = unique("caller").replace(".", "-")

    def blocking_calls() -> Dict[str, Any]:
        with client.RPCClient(url, disc, source=source + "-blocking") as cli:
            with pytest.raises(exceptions.RemoteError) as to_async:
                getattr(cli, front).fail().call(timeout=30)
            with pytest.raises(exceptions.RemoteError) as to_blocking:
                getattr(cli, back).fail().call(timeout=30)
            return {"async": getattr(cli, front).echo(n=1).call(timeout=30),
                    "blocking": getattr(cli, back).double(n=1).call(timeout=30),
                    "errors": (to_async.value.remote_name, to_blocking.value.remote_name)}

    blocking = await asyncio.get_running_loop().run_in_executor(None, blocking_calls)
    async with aio.RPCClient(url, disc, source=source + "-async") as cli:
        awaited = {"async": await getattr(cli, front).echo(n=2).call(timeout=30),
                   "blocking": await getattr(cli, back).double(n=2).call(timeout=30)}
        with pytest.raises(exceptions.RemoteError) as to_async:
            await getattr(cli, front).fail().call(timeout=30)
        with pytest.raises(exceptions.RemoteError) as to_blocking:
            await getattr(cli, back).fail().call(timeout=30)
    assert blocking == {"async": {"n": 1, "by": "async"}, "blocking": {"n": 2, "by": "blocking"},
                        "errors": ("PermissionError", "KeyError")}
    assert awaited == {"async": {"n": 2, "by": "async"}, "blocking": {"n": 4, "by": "blocking"}}
    assert (to_async.value.remote_name, to_blocking.value.remote_name) == (
        "PermissionError", "KeyError")


async def test_async_and_blocking_services_call_each_other(url, unique, deployed):
    front, back, disc, seen = deployed
    async with aio.RPCClient(url, disc, source=unique("caller").replace(".", "-")) as cli:
        # async handler -> blocking service, awaited.
        answers = await asyncio.gather(
            *(getattr(cli, front).ask_back(n=n).call(timeout=60) for n in range(20)))
        # blocking handler -> async service, its answer to the blocking response handler.
        await getattr(cli, back).ask_front(n=7).cast()
        assert await asyncio.get_running_loop().run_in_executor(None, seen.event.wait, 30)
    assert answers == [{"n": n * 2, "by": "blocking"} for n in range(20)]
    assert seen.items == [("async", 7)]

"""asyncio user code as docs/asyncio.rst spells it, checked by ``mypy --strict``.

tests/unit/test_typing.py runs the check. Not a test and never run.
"""

from __future__ import annotations

import asyncio
from typing import Any, Dict, List

from tavrida import aio, discovery, dispatcher, exceptions, messages, middleware, service, testing


class AsyncMiddleware(middleware.Middleware):
    async def process(self, message: Any) -> Any:
        await asyncio.sleep(0)
        return message


@dispatcher.rpc_service("orders")
class Orders(service.ServiceController):

    def __init__(self, postprocessor: Any) -> None:
        super().__init__(postprocessor)
        self.add_incoming_middleware(AsyncMiddleware())

    @dispatcher.rpc_method(service="orders", method="place")
    async def place(self, request: messages.IncomingRequest, proxy: aio.AsyncProxy,
                    item: str) -> Dict[str, Any]:
        stock: Dict[str, Any] = await proxy.stock.reserve(item=item).call(timeout=2)
        sent: messages.Request = await proxy.stock.reserve(item=item).call()
        await proxy.stock.reserve(item=item).cast()
        await proxy.publish_event("placed", item=item)
        return {"left": stock["left"], "request_id": sent.request_id}

    @dispatcher.rpc_response_method(service="stock", method="reserve")
    async def reserved(self, response: messages.IncomingResponse, proxy: aio.AsyncProxy,
                       left: int) -> None:
        print(left)


def make_discovery() -> discovery.LocalDiscovery:
    disc = discovery.LocalDiscovery()
    disc.register_remote_service("orders", "orders_exchange")
    disc.register_remote_service("client_app", "client_app_exchange")
    return disc


async def call_from_an_asyncio_program() -> None:
    async with aio.RPCClient("amqp://guest:guest@127.0.0.1:5672//", make_discovery(),
                             source="client_app", headers={"tenant": "acme"}) as cli:
        answer: Dict[str, Any] = await cli.orders.place(item="book").call(timeout=5)
        print(answer["left"])
        request: messages.Request = await cli.orders.place(item="book").cast()
        print(request.request_id)
        answers: List[Dict[str, Any]] = await asyncio.gather(
            *(cli.orders.place(item=str(n)).call(timeout=5) for n in range(10)))
        print(len(answers))
        try:
            await cli.orders.place(item="none").call(timeout=1)
        except (exceptions.RemoteError, exceptions.CallTimeout) as exc:
            print(exc)
        notification: messages.Notification = await cli.publish(value="event")
        print(notification.correlation_id)
    one = aio.RPCClient("memory://", make_discovery(), source="client_app", service="orders")
    print((await one.place(item="x").call(timeout=5))["left"])
    await one.close()


async def serve() -> None:
    Orders.set_discovery(make_discovery())
    srv = aio.Server("amqp://guest:guest@127.0.0.1:5672//", "orders_queue", "orders_exchange",
                     [Orders], max_concurrency=50)
    task = asyncio.ensure_future(srv.serve())
    await srv.wait_started()
    await srv.stop()
    await task
    aio.Server("memory://", "orders_queue", "orders_exchange", [Orders]).run()


async def test_with_the_kit() -> None:
    result = await testing.acall_handler(Orders, "place", item="book")
    print(result.response)
    with testing.MemoryCluster() as cluster:
        cluster.add_server([Orders])
        async with cluster.aio_client(make_discovery(), source="client_app") as cli:
            print(await cli.orders.place(item="x").call(timeout=5))
        print(await cluster.adeliver())


async def misuse_is_caught() -> None:
    """What mypy must reject (each ``type: ignore`` is an error if the line type-checks)."""
    cli = aio.RPCClient("memory://", make_discovery(), source="client_app")
    answer: Dict[str, Any] = cli.orders.place(item="x").call(timeout=5)  # type: ignore[assignment]
    sent: messages.Request = await cli.orders.place(  # type: ignore[assignment]
        item="x").call(timeout=5)
    print(answer, sent)

"""From async tests: async def handlers with the test kit (docs/testing.rst, docs/asyncio.rst)."""

import asyncio

import pytest

from tavrida import discovery, dispatcher, service, testing


@dispatcher.rpc_service("stock")
class StockController(service.ServiceController):

    @dispatcher.rpc_method(service="stock", method="reserve")
    async def reserve(self, request, proxy, item):
        await asyncio.sleep(0)  # whatever the handler awaits (a database, an HTTP API)
        await proxy.publish_event("reserved", item=item)
        return {"item": item, "left": 41}


disc = discovery.LocalDiscovery()
disc.register_local_publisher("stock", "stock_events")
disc.register_remote_service("stock", "stock_exchange")
disc.register_remote_service("client", "client_exchange")  # where answers to `client` go
StockController.set_discovery(disc)


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def cluster():
    with testing.MemoryCluster() as memory_cluster:
        memory_cluster.add_server([StockController], queue_name="stock_queue",
                                  exchange_name="stock_exchange")
        yield memory_cluster


def test_one_async_handler():
    result = testing.call_handler(StockController, "reserve", item="book")
    assert result.response == {"item": "book", "left": 41}
    assert result.sent.notifications[0].payload == {"item": "book"}


@pytest.mark.anyio
async def test_an_awaited_call_through_the_cluster(cluster):
    async with cluster.aio_client(disc, source="client") as cli:
        answer = await cli.stock.reserve(item="pen").call(timeout=5)
        await cli.stock.reserve(item="ink").cast()
    assert answer == {"item": "pen", "left": 41}
    await cluster.adeliver()  # until idle: the cast was handled
    assert [n.payload["item"] for n in cluster.sent_by("stock").notifications] == ["pen", "ink"]

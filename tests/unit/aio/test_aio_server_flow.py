"""aio.Server on memory://: async response and subscription handlers, retries, the access log."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aio_services import hello_service

from tavrida import aio, discovery, dispatcher, exceptions, service
from tavrida.observability.access import AccessLog
from tavrida.server import Server

pytestmark = pytest.mark.anyio


class NotYet(exceptions.BaseNackableException):
    message_template = "not yet"


def flow_service(events, done):
    @dispatcher.rpc_service("flow")
    class Flow(service.ServiceController):
        @dispatcher.rpc_method(service="flow", method="start")
        async def start(self, request, proxy, n):
            await proxy.test_hello.hello(param=n).call()  # 1.0's asynchronous call
            await proxy.publish_event("started", n=n)

        @dispatcher.rpc_response_method(service="test_hello", method="hello")
        async def hello_answered(self, response, proxy, echo, **rest):
            events.append(("answered", echo))
            if len(events) == 2:
                done.set()

        @dispatcher.subscription_method(service="flow", method="started")
        async def on_started(self, notification, proxy, n):
            events.append(("started", n))
            if len(events) == 2:
                done.set()

        @dispatcher.rpc_method(service="flow", method="flaky")
        async def flaky(self, request, proxy):
            attempts = request.headers.get("x-tavrida-attempts")
            if attempts is None:
                raise NotYet()
            return {"attempts": attempts}

    disc = discovery.LocalDiscovery()
    disc.register_remote_service("test_hello", "test_exchange")
    disc.register_remote_service("client_app", "client_exchange")
    disc.register_local_publisher("flow", "flow_events")
    disc.register_remote_publisher("flow", "flow_events")
    Flow.set_discovery(disc)
    return Flow


@pytest.fixture
def client_disc():
    disc = discovery.LocalDiscovery()
    disc.register_remote_service("flow", "flow_exchange")
    disc.register_remote_service("client_app", "client_exchange")
    return disc


async def test_async_response_and_subscription_handlers_run(cluster, running, client_disc):
    hello = hello_service([])
    hello.get_discovery().register_remote_service("flow", "flow_exchange")
    running.start(Server(cluster.config, "test_service", "test_exchange", [hello]))
    events, done = [], asyncio.Event()
    srv = aio.Server(cluster.config, "flow_queue", "flow_exchange",
                     [flow_service(events, done)])
    serving = asyncio.ensure_future(srv.serve())
    await srv.wait_started()
    async with aio.RPCClient(cluster.config, client_disc, source="client_app") as cli:
        await cli.flow.start(n=7).cast()
        await done.wait()
    await srv.stop()
    await serving
    assert sorted(events) == [("answered", 7), ("started", 7)]


async def test_a_retried_async_handler_runs_again_and_answers(cluster, client_disc, caplog):
    caplog.set_level(logging.INFO, logger="tavrida.access")
    srv = aio.Server(cluster.config, "flow_queue", "flow_exchange",
                     [flow_service([], asyncio.Event())], retry_backoff=0.01,
                     hooks=[AccessLog()])
    serving = asyncio.ensure_future(srv.serve())
    await srv.wait_started()
    async with aio.RPCClient(cluster.config, client_disc, source="client_app") as cli:
        answer = await cli.flow.flaky().call(timeout=30)
    await srv.stop()
    await serving
    assert answer == {"attempts": 1}  # its second run, after one failed attempt
    assert any("flow.flaky" in record.getMessage() for record in caplog.records
               if record.name.startswith("tavrida.access"))

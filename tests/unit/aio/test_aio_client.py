"""aio.RPCClient on memory://: awaited calls, casts, publishes, deadlines, cancellation."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest
from aio_services import hello_service

from tavrida import aio, discovery, exceptions
from tavrida.server import Server
from tavrida.transports import create_transport
from tavrida.transports.base import Confirmation

pytestmark = pytest.mark.anyio


@pytest.fixture
def hello(cluster, running):
    got = []
    running.start(Server(cluster.config, "test_service", "test_exchange", [hello_service(got)]))
    return got


async def test_call_returns_the_answer(cluster, hello, disc):
    async with aio.RPCClient(cluster.config, disc, source="client_app") as cli:
        answer = await cli.test_hello.hello(param=7).call(timeout=5)
    assert answer["echo"] == 7
    assert hello == [7]


async def test_one_service_form_and_a_url(cluster, hello, disc):
    async with aio.RPCClient(f"memory://{cluster.name}", disc, source="client_app",
                             service="test_hello") as cli:
        answer = await cli.hello(param="by url").call(timeout=5)
    assert answer["echo"] == "by url"


async def test_headers_context_and_correlation_id_reach_the_handler(cluster, hello, disc):
    async with aio.RPCClient(cluster.config, disc, source="client_app",
                             context={"user": "ann"}, headers={"x-tenant": "t1"}) as cli:
        answer = await cli.test_hello.hello(param=1).call(correlation_id="c-1", timeout=5)
    assert answer["correlation_id"] == "c-1"
    assert answer["context"]["user"] == "ann"
    assert answer["headers"]["x-tenant"] == "t1"


async def test_an_error_answer_raises_remote_error(cluster, hello, disc):
    async with aio.RPCClient(cluster.config, disc, source="client_app") as cli:
        with pytest.raises(exceptions.RemoteError) as raised:
            await cli.test_hello.fail(why="no").call(timeout=5)
    assert raised.value.remote_name == "ValueError"
    assert "boom: no" in raised.value.remote_message


async def test_many_calls_in_flight_each_get_their_own_answer(cluster, hello, disc):
    async with aio.RPCClient(cluster.config, disc, source="client_app") as cli:
        answers = await asyncio.gather(
            *(cli.test_hello.hello(param=n).call(timeout=30) for n in range(500)))
    assert [answer["echo"] for answer in answers] == list(range(500))
    assert sorted(hello) == list(range(500))


async def test_a_call_nobody_answers_times_out(cluster, broker, disc):
    disc.register_remote_service("nobody", "nobody_exchange")
    broker.spy("nobody_exchange")  # takes the request, never answers
    async with aio.RPCClient(cluster.config, disc, source="client_app") as cli:
        with pytest.raises(exceptions.CallTimeout):
            await cli.nobody.method(x=1).call(timeout=0.2)
        assert cli.in_flight == 0


async def test_an_unroutable_call_raises_unroutable(disc):
    from tavrida.testing import MemoryCluster
    with MemoryCluster(strict_routing=True) as strict:
        transport = strict.client(disc).transport
        from tavrida.transports.base import Topology
        transport.declare(Topology.build(exchanges=["test_exchange"]))
        async with aio.RPCClient(strict.config, disc, source="client_app") as cli:
            with pytest.raises(exceptions.Unroutable):
                await cli.test_hello.hello(param=1).call(timeout=5)
            with pytest.raises(exceptions.Unroutable):
                await cli.test_hello.hello(param=1).cast()


async def test_an_unknown_service_raises_as_the_blocking_client(cluster, disc):
    async with aio.RPCClient(cluster.config, disc, source="client_app") as cli:
        with pytest.raises(exceptions.UnableToDiscover):
            await cli.unknown.method(x=1).call(timeout=5)


async def test_a_cancelled_call_is_forgotten_and_its_late_answer_dropped(
        cluster, running, disc, caplog):
    release = threading.Event()
    got = []
    running.start(Server(cluster.config, "test_service", "test_exchange",
                         [hello_service(got, gate=lambda: release.wait(10))]))
    caplog.set_level(logging.DEBUG, logger="tavrida.aio.calls")
    async with aio.RPCClient(cluster.config, disc, source="client_app") as cli:
        task = asyncio.ensure_future(cli.test_hello.slow(param=1).call(timeout=30))
        while cli.in_flight == 0:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert cli.in_flight == 0
        release.set()
        # The next call's answer comes after the late one: by then it was dropped.
        assert (await cli.test_hello.slow(param=2).call(timeout=10))["echo"] == 2
    assert any("nobody waits for" in record.getMessage() for record in caplog.records)


async def test_cast_reaches_the_handler(cluster, hello, disc):
    async with aio.RPCClient(cluster.config, disc, source="client_app") as cli:
        request = await cli.test_hello.hello(param=3).cast()
        # A call after it, on the same queue, is answered after the cast was handled.
        await cli.test_hello.hello(param=4).call(timeout=5)
    assert request.reply_to.to_routing_key() == ""
    assert hello == [3, 4]


async def test_publish_goes_to_the_sources_publisher_exchange(cluster, broker):
    disc = discovery.LocalDiscovery()
    disc.register_local_publisher("client_app", "client_notifications")
    spy = broker.spy("client_notifications")
    async with aio.RPCClient(cluster.config, disc, source="client_app") as cli:
        notification = await cli.publish(what="happened")
        event = await cli.publish_event("done", n=1)
    bodies = [delivery.headers["request_id"] for delivery in spy.collect()]
    assert bodies == [notification.request_id, event.request_id]


async def test_a_call_without_source_is_refused(cluster, disc):
    async with aio.RPCClient(cluster.config, disc) as cli:
        with pytest.raises(exceptions.TavridaError):
            await cli.test_hello.hello(param=1).call(timeout=1)


async def test_closing_fails_the_calls_in_flight(cluster, running, disc):
    release = threading.Event()
    running.start(Server(cluster.config, "test_service", "test_exchange",
                         [hello_service([], gate=lambda: release.wait(10))]))
    cli = aio.RPCClient(cluster.config, disc, source="client_app")
    await cli.open()
    task = asyncio.ensure_future(cli.test_hello.slow(param=1).call(timeout=30))
    while cli.in_flight == 0:
        await asyncio.sleep(0)
    await cli.close()
    release.set()
    with pytest.raises(exceptions.TavridaError):
        await task


async def test_a_call_with_a_shorter_deadline_than_those_in_flight_times_out_at_its_own(
        cluster, broker, disc):
    disc.register_remote_service("nobody", "nobody_exchange")
    broker.spy("nobody_exchange")  # takes the requests, never answers
    async with aio.RPCClient(cluster.config, disc, source="client_app") as cli:
        patient = asyncio.ensure_future(cli.nobody.method(x=1).call(timeout=60))
        while cli.in_flight == 0:
            await asyncio.sleep(0)
        with pytest.raises(exceptions.CallTimeout):
            await asyncio.wait_for(cli.nobody.method(x=2).call(timeout=0.2), 30)
        assert not patient.done()  # its own deadline is far
        outcomes = await asyncio.gather(
            *(cli.nobody.method(x=n).call(timeout=0.1) for n in range(50)),
            return_exceptions=True)
        assert all(isinstance(outcome, exceptions.CallTimeout) for outcome in outcomes)
        assert cli.in_flight == 1
        patient.cancel()
        with pytest.raises(asyncio.CancelledError):
            await patient
        assert cli.in_flight == 0


async def test_a_refused_call_is_told_without_waiting_for_the_next_answer(cluster, disc):
    """kombu's refusals (Unroutable) of a publish are read by the client's I/O thread's
    drain, which may be waiting for an answer: the first call after a quiet spell wakes it."""
    transport = create_transport(cluster.config)
    transport.publish_never_blocks = False  # as kombu's: published on the outbox's thread
    refused = []
    woken = threading.Event()
    publish, stop = transport.publish, transport.stop

    def refused_later(envelope):  # the broker's verdict comes with a drain, as kombu's does
        if envelope.routing_key != "test_hello.hello":
            return publish(envelope)
        confirmation = Confirmation(envelope)
        refused.append(confirmation)
        return confirmation

    def wake():
        stop()
        if refused:
            woken.set()

    def drain():  # the drain waiting for an answer: it reads the refusal once woken
        if woken.wait(30):
            refused[0].set_failed(exceptions.Unroutable(exchange="test_exchange",
                                                        routing_key="test_hello.hello"))

    transport.publish, transport.stop = refused_later, wake  # type: ignore[method-assign]
    draining = threading.Thread(target=drain, daemon=True)
    draining.start()
    try:
        async with aio.RPCClient(cluster.config, disc, source="client_app",
                                 transport=transport) as cli:
            with pytest.raises(exceptions.Unroutable):
                await asyncio.wait_for(cli.test_hello.hello(param=1).call(timeout=30), 10)
    finally:
        woken.set()

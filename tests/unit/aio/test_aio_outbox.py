"""The outbox on a transport whose publish may block: one thread publishes the queue in turn."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tavrida import exceptions, wire
from tavrida.aio.outbox import Outbox
from tavrida.proxies import RPCProxy
from tavrida.sender import Sender
from tavrida.transports import create_transport
from tavrida.transports.base import Confirmation, OutgoingEnvelope

pytestmark = pytest.mark.anyio


async def test_a_message_queued_behind_a_blocked_publish_fails_at_its_deadline_unsent(
        cluster, broker, disc):
    spy = broker.spy("test_exchange")
    transport = create_transport(cluster.config)
    transport.publish_never_blocks = False  # as kombu's: published on the outbox's thread
    sender = Sender(transport, disc, False, source="client_app")
    entered, release = threading.Event(), threading.Event()
    published = []
    publish = sender.publish

    def blocking_publish(message):
        if not published:
            entered.set()
            release.wait(30)  # the first publish holds the publishing thread
        published.append(message.payload["param"])
        return publish(message)

    sender.publish = blocking_publish  # type: ignore[method-assign]
    outbox = Outbox(sender, asyncio.get_running_loop(), "tvt-outbox")
    proxy = RPCProxy(sender, "client_app", {}, "", {})
    try:
        first = asyncio.ensure_future(
            outbox.publish(proxy.test_hello.hello(param=1).cast_request(), 30))
        assert await asyncio.get_running_loop().run_in_executor(None, entered.wait, 30)
        with pytest.raises(exceptions.PublishConnectionFailed):
            await outbox.publish(proxy.test_hello.hello(param=2).cast_request(), 0.2)
        release.set()
        await asyncio.wait_for(first, 30)
        await asyncio.wait_for(
            outbox.publish(proxy.test_hello.hello(param=3).cast_request(), 30), 30)
    finally:
        release.set()
        outbox.close()
        transport.close()
    assert published == [1, 3]  # the late one never went
    got = [wire.decode(d.body, d.headers, d.properties) for d in spy.collect()]
    assert sorted(message.payload["param"] for message in got) == [1, 3]


async def test_an_awaited_cast_wakes_the_drain_that_reads_its_confirm(cluster, disc):
    """kombu's confirms are read by the transport's drain (the I/O thread's, the server's),
    which may be waiting for a delivery: the outbox wakes it, or the cast waits for that."""
    transport = create_transport(cluster.config)
    transport.publish_never_blocks = False
    sender = Sender(transport, disc, False, source="client_app")
    pending = []
    woken = threading.Event()

    def publish(message):  # its verdict comes with a drain, as kombu's does
        confirmation = Confirmation(OutgoingEnvelope("test_exchange", "test_hello.hello", b"{}",
                                                     {}))
        pending.append(confirmation)
        return confirmation

    def drain():  # waits for a delivery until woken, then reads the confirms
        if woken.wait(30):
            for confirmation in pending:
                confirmation.set_confirmed()

    sender.publish = publish  # type: ignore[method-assign]
    transport.stop = woken.set  # type: ignore[method-assign]
    draining = threading.Thread(target=drain, daemon=True)
    draining.start()
    outbox = Outbox(sender, asyncio.get_running_loop(), "tvt-outbox")
    proxy = RPCProxy(sender, "client_app", {}, "", {})
    try:
        await asyncio.wait_for(
            outbox.publish(proxy.test_hello.hello(param=1).cast_request(), 30), 10)
    finally:
        woken.set()
        outbox.close()
        transport.close()
    assert len(pending) == 1

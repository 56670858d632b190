"""KombuTransport against real brokers: RabbitMQ, Redis and kombu's memory transport.

No mocks. Waits are bounded loops around ``drain`` that end as soon as the
awaited messages are in; the few fixed waits assert that something does
*not* happen (a prefetch bound holds).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import urllib.parse
import zlib
from typing import Callable, Iterator, List

import amqp
import pytest
import redis

from tavrida import exceptions
from tavrida.config import ConnectionConfig, Credentials
from tavrida.transports.base import Binding, Delivery, OutgoingEnvelope, Topology
from tavrida.transports.kombu import KombuTransport

ALL_BYTES = bytes(range(256))
WAIT = 15.0

MakeTransport = Callable[..., KombuTransport]


class Inbox:
    """An on_message callback that keeps what it gets (and acks it, unless told not to)."""

    def __init__(self, ack: bool = True) -> None:
        self.ack = ack
        self.deliveries: List[Delivery] = []

    def __call__(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)
        if self.ack:
            delivery.ack()

    @property
    def bodies(self) -> List[bytes]:
        return [d.body for d in self.deliveries]

    def __len__(self) -> int:
        return len(self.deliveries)


def drain_until(condition: Callable[[], bool], *transports: KombuTransport,
                timeout: float = WAIT) -> None:
    """Drain the transports until ``condition()`` holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for messages"
        for transport in transports:
            transport.drain(0.05)


def drain_for(seconds: float, *transports: KombuTransport) -> None:
    """Keep draining for a while (to show that nothing more arrives)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for transport in transports:
            transport.drain(0.05)


def envelope(exchange: str, routing_key: str, body: bytes = b"{}", **headers: object
             ) -> OutgoingEnvelope:
    return OutgoingEnvelope(exchange, routing_key, body, dict(headers))


@pytest.fixture
def make_transport(unique: object) -> Iterator[MakeTransport]:
    """``make(url, **config)`` opens a KombuTransport; all are closed after the test.

    Depends on ``unique`` so that transports close before names are cleaned up.
    """
    made: List[KombuTransport] = []

    def make(url: str, **config: object) -> KombuTransport:
        config.setdefault("retry_delay", 0.2)
        transport = KombuTransport(ConnectionConfig.from_url(url, **config))
        made.append(transport)
        return transport

    yield make
    for transport in made:
        transport.close()


def amqp_channel(url: str) -> amqp.Channel:
    """A raw py-amqp channel, to act as another client (tavrida 1.0, a foreign producer)."""
    parts = urllib.parse.urlsplit(url)
    conn = amqp.Connection(f"{parts.hostname}:{parts.port or 5672}",
                           userid=urllib.parse.unquote(parts.username or "guest"),
                           password=urllib.parse.unquote(parts.password or "guest"),
                           virtual_host=urllib.parse.unquote(parts.path[1:]) or "/")
    conn.connect()
    return conn.channel()


def service_topology(unique: Callable[[str], str], pattern: str = "svc.#") -> tuple:
    exchange, queue = unique("x"), unique("q")
    return exchange, queue, Topology.build([exchange], [queue], [Binding(queue, exchange, pattern)])


# --- every broker -------------------------------------------------------------------------------

def test_round_trip_keeps_bytes_and_headers(broker_url: str, unique, make_transport) -> None:
    transport = make_transport(broker_url)
    exchange, queue, topology = service_topology(unique)
    transport.declare(topology)
    inbox = Inbox()
    transport.consume(queue, inbox, 10)
    headers = {"message_type": "request", "empty": "", "n": 42, "big": 2 ** 40, "yes": True,
               "pi": 3.5, "none": None, "raw": b"\x00\xff\xfe", "nested": {"a": [1, "b"]},
               "unicode": "h\u00e9llo \u2603"}
    transport.publish(OutgoingEnvelope(exchange, "svc.method", ALL_BYTES, headers))
    transport.publish(OutgoingEnvelope(exchange, "svc", b"", {}, content_type=None,
                                       content_encoding=None, persistent=False))
    # A header kombu's Message acts on (it would decompress) and a pickle content type:
    # the body still arrives as the very bytes sent.
    squeezed = zlib.compress(b'{"payload": {}}')
    transport.publish(OutgoingEnvelope(exchange, "svc.x", squeezed,
                                       {"compression": "application/x-gzip"},
                                       content_type="application/x-python-serialize"))
    drain_until(lambda: len(inbox) == 3, transport)

    first, second, third = inbox.deliveries
    assert first.body == ALL_BYTES
    assert dict(first.headers) == headers
    assert first.properties["content_type"] == "application/json"
    assert first.properties["content_encoding"] == "utf-8"
    assert first.properties["delivery_mode"] == 2
    assert (first.exchange, first.routing_key, first.queue) == (exchange, "svc.method", queue)
    assert first.redelivered is False
    assert second.body == b""
    assert dict(second.headers) == {}
    assert "content_type" not in second.properties
    assert second.properties["delivery_mode"] == 1
    assert second.routing_key == "svc"
    assert type(third.body) is bytes and third.body == squeezed
    assert third.headers == {"compression": "application/x-gzip"}


def test_topic_routing_is_rabbitmq_routing(broker_url: str, unique, make_transport) -> None:
    """``*`` is one word, ``#`` zero or more, on every broker (kombu alone differs on ``a.#``)."""
    transport = make_transport(broker_url)
    exchange = unique("x")
    patterns = {"a.*": unique("star"), "a.#": unique("hash"), "#": unique("all"),
                "a.*.c": unique("mid"), "a.#.c": unique("hashmid")}
    transport.declare(Topology.build(
        [exchange], patterns.values(),
        [Binding(queue, exchange, pattern) for pattern, queue in patterns.items()]))
    inboxes = {queue: Inbox() for queue in patterns.values()}
    for queue, inbox in inboxes.items():
        transport.consume(queue, inbox, 50)
    keys = ["a", "a.b", "a.c", "a.b.c", "a.b.b.c", "b", "ab.c"]
    transport.publish_many([envelope(exchange, key, key.encode()) for key in keys])
    # Queues are FIFO: once the sentinel is in, everything routed before it is too.
    transport.publish_many([envelope("", queue, b"sentinel") for queue in inboxes])
    drain_until(lambda: all(inbox.bodies[-1:] == [b"sentinel"] for inbox in inboxes.values()),
                transport)

    routed = {pattern: sorted(b.decode() for b in inboxes[queue].bodies[:-1])
              for pattern, queue in patterns.items()}
    assert routed == {
        "a.*": ["a.b", "a.c"],
        "a.#": ["a", "a.b", "a.b.b.c", "a.b.c", "a.c"],
        "#": sorted(keys),
        "a.*.c": ["a.b.c"],
        "a.#.c": ["a.b.b.c", "a.b.c", "a.c"],
    }


def test_competing_consumers_share_a_queue(broker_url: str, unique, make_transport) -> None:
    exchange, queue, topology = service_topology(unique)
    first, second = make_transport(broker_url), make_transport(broker_url)
    first.declare(topology)
    second.declare(topology)
    inbox_1, inbox_2 = Inbox(), Inbox()
    first.consume(queue, inbox_1, 1)
    second.consume(queue, inbox_2, 1)
    bodies = [str(i).encode() for i in range(20)]
    first.publish_many([envelope(exchange, "svc.work", body) for body in bodies])
    drain_until(lambda: len(inbox_1) + len(inbox_2) >= len(bodies), first, second)

    assert sorted(inbox_1.bodies + inbox_2.bodies) == sorted(bodies)
    assert inbox_1.deliveries and inbox_2.deliveries


def test_prefetch_bounds_unacked_deliveries(broker_url: str, unique, make_transport) -> None:
    transport = make_transport(broker_url)
    exchange, queue, topology = service_topology(unique)
    transport.declare(topology)
    inbox = Inbox(ack=False)
    transport.consume(queue, inbox, 3)
    transport.publish_many([envelope(exchange, "svc.m", str(i).encode()) for i in range(5)])
    drain_until(lambda: len(inbox) == 3, transport)

    drain_for(0.4, transport)
    assert len(inbox) == 3, "a 4th message came while 3 were un-acked"
    inbox.deliveries[0].ack()
    drain_until(lambda: len(inbox) == 4, transport)
    drain_for(0.2, transport)
    assert len(inbox) == 4
    for delivery in inbox.deliveries[1:]:
        delivery.ack()
    drain_until(lambda: len(inbox) == 5, transport)
    inbox.deliveries[4].ack()
    assert sorted(inbox.bodies) == [b"0", b"1", b"2", b"3", b"4"]


def test_reject_with_requeue_redelivers(broker_url: str, unique, make_transport) -> None:
    transport = make_transport(broker_url)
    exchange, queue, topology = service_topology(unique)
    transport.declare(topology)
    inbox = Inbox(ack=False)
    transport.consume(queue, inbox, 5)
    transport.publish(envelope(exchange, "svc.m", b"again", trace="1"))
    drain_until(lambda: len(inbox) == 1, transport)
    inbox.deliveries[0].reject(requeue=True)
    drain_until(lambda: len(inbox) == 2, transport)

    again = inbox.deliveries[1]
    assert again.body == b"again"
    assert again.redelivered is True
    assert dict(again.headers) == {"trace": "1"}
    assert (again.exchange, again.routing_key) == (exchange, "svc.m")
    again.reject(requeue=False)
    drain_for(0.2, transport)
    assert len(inbox) == 2
    assert transport.queue_size(queue) == 0


def test_requeue_returns_to_its_own_queue_only(broker_url: str, unique, make_transport) -> None:
    """Unpatched kombu virtual transports re-route a requeued message to every bound
    queue, and on Redis the other queue's ack made the requeued copy vanish."""
    transport = make_transport(broker_url)
    exchange, rejecting, other = unique("x"), unique("rejecting"), unique("other")
    transport.declare(Topology.build([exchange], [rejecting, other],
                                     [Binding(rejecting, exchange, "event.#"),
                                      Binding(other, exchange, "event.#")]))
    rejected, kept = Inbox(ack=False), Inbox()
    transport.consume(rejecting, rejected, 5)
    transport.consume(other, kept, 5)
    transport.publish(envelope(exchange, "event.happened", b"once"))
    drain_until(lambda: len(rejected) == 1 and len(kept) == 1, transport)
    rejected.deliveries[0].reject(requeue=True)
    drain_until(lambda: len(rejected) == 2, transport)
    rejected.deliveries[1].ack()
    transport.publish(envelope("", other, b"sentinel"))
    drain_until(lambda: kept.bodies[-1:] == [b"sentinel"], transport)

    assert kept.bodies == [b"once", b"sentinel"]
    assert (rejected.deliveries[1].exchange, rejected.deliveries[1].routing_key) == (
        exchange, "event.happened")


def test_ack_from_another_thread_is_performed(broker_url: str, unique, make_transport) -> None:
    transport = make_transport(broker_url)
    exchange, queue, topology = service_topology(unique)
    transport.declare(topology)
    workers: List[threading.Thread] = []

    def on_message(delivery: Delivery) -> None:
        worker = threading.Thread(target=delivery.ack)
        workers.append(worker)
        worker.start()

    transport.consume(queue, on_message, 1)
    transport.publish_many([envelope(exchange, "svc.m", b"1"), envelope(exchange, "svc.m", b"2")])
    # With prefetch 1 the second message only comes once the worker's ack reached the broker.
    drain_until(lambda: len(workers) == 2, transport)
    for worker in workers:
        worker.join()
    drain_for(0.2, transport)  # lets a queued ack go out
    transport.close()

    again = make_transport(broker_url)
    again.declare(topology)
    inbox = Inbox()
    again.consume(queue, inbox, 10)
    drain_for(0.3, again)
    assert inbox.bodies == []
    assert again.queue_size(queue) == 0


def test_stop_wakes_a_waiting_drain(broker_url: str, unique, make_transport) -> None:
    transport = make_transport(broker_url)
    _, queue, topology = service_topology(unique)
    transport.declare(topology)
    transport.consume(queue, Inbox(), 1)
    timer = threading.Timer(0.2, transport.stop)
    timer.start()
    started = time.monotonic()
    assert transport.drain(30.0) is False
    assert time.monotonic() - started < 5.0
    timer.join()


@pytest.mark.slow
def test_ten_megabyte_body(broker_url: str, unique, make_transport) -> None:
    transport = make_transport(broker_url)
    exchange, queue, topology = service_topology(unique)
    transport.declare(topology)
    inbox = Inbox()
    transport.consume(queue, inbox, 1)
    body = ALL_BYTES * (10 * 1024 * 1024 // len(ALL_BYTES))
    transport.publish(envelope(exchange, "svc.big", body, size=len(body)))
    drain_until(lambda: len(inbox) == 1, transport)
    assert inbox.deliveries[0].body == body
    assert inbox.deliveries[0].headers["size"] == len(body)


def test_publish_from_many_threads(broker_url: str, unique, make_transport) -> None:
    transport = make_transport(broker_url)
    exchange, queue, topology = service_topology(unique)
    transport.declare(topology)
    inbox = Inbox()
    transport.consume(queue, inbox, 100)

    def publish(thread: int) -> None:
        for i in range(25):
            transport.publish(envelope(exchange, "svc.m", f"{thread}-{i}".encode()))

    threads = [threading.Thread(target=publish, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    drain_until(lambda: len(inbox) >= 200, transport)
    assert sorted(inbox.bodies) == sorted(f"{t}-{i}".encode() for t in range(8) for i in range(25))


def test_unencodable_message_fails_alone(server_url: str, unique, make_transport) -> None:
    """(kombu's memory transport does not encode messages: anything goes there.)"""
    transport = make_transport(server_url)
    exchange, queue, topology = service_topology(unique)
    transport.declare(topology)
    inbox = Inbox()
    transport.consume(queue, inbox, 10)
    batch = [envelope(exchange, "svc.m", b"1"), envelope(exchange, "svc.m", b"2", bad=object()),
             envelope(exchange, "svc.m", b"3")]
    with pytest.raises(exceptions.PublishFailed) as raised:
        transport.publish_many(batch)
    assert list(raised.value.failed) == [1]
    assert "cannot encode" in str(raised.value)
    drain_until(lambda: len(inbox) == 2, transport)
    assert inbox.bodies == [b"1", b"3"]


def test_cancel_stops_deliveries_and_still_takes_acks(broker_url: str, unique,
                                                       make_transport) -> None:
    transport = make_transport(broker_url)
    exchange, queue, topology = service_topology(unique)
    transport.declare(topology)
    inbox = Inbox(ack=False)
    transport.consume(queue, inbox, 5)
    transport.publish_many([envelope(exchange, "svc.m", str(i).encode()) for i in range(3)])
    drain_until(lambda: len(inbox) >= 1, transport)
    transport.cancel()
    handed_out = len(inbox)
    transport.publish(envelope(exchange, "svc.m", b"3"))
    drain_for(0.3, transport)
    assert len(inbox) == handed_out
    for delivery in inbox.deliveries:
        delivery.ack()
    drain_for(0.1, transport)
    transport.close()

    again = make_transport(broker_url)
    rest = Inbox()
    again.consume(queue, rest, 10)
    drain_until(lambda: len(rest) >= 4 - handed_out, again)
    drain_for(0.2, again)
    assert sorted(inbox.bodies + rest.bodies) == [b"0", b"1", b"2", b"3"]


# --- RabbitMQ -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_reconnects_after_the_broker_drops_connections(
        amqp_url: str, unique, make_transport, close_amqp_connections) -> None:
    """Broker-side close: re-declare (exclusive reply queue too), consume again, lose nothing."""
    consumer = make_transport(amqp_url, transport_options={
        "client_properties": {"connection_name": unique("consumer")}})
    publisher = make_transport(amqp_url, transport_options={
        "client_properties": {"connection_name": unique("publisher")}})
    exchange, queue, topology = service_topology(unique)
    reply = unique("reply")
    consumer.declare(topology)
    consumer.declare_reply_queue(reply, [])
    inbox, held, replies = Inbox(), Inbox(ack=False), Inbox()
    consumer.consume(queue, lambda d: (held if d.body == b"held" else inbox)(d), 50)
    consumer.consume(reply, replies, 10)

    publisher.publish(envelope(exchange, "svc.m", b"held"))
    publisher.publish_many([envelope(exchange, "svc.m", str(i).encode()) for i in range(20)])
    drain_until(lambda: len(held) == 1 and len(inbox) >= 5, consumer)

    assert close_amqp_connections(unique("consumer")) == 1
    publisher.publish_many([envelope(exchange, "svc.m", str(i).encode()) for i in range(20, 40)])
    assert close_amqp_connections(unique("publisher")) == 1
    publisher.publish(envelope(exchange, "svc.m", b"40"))  # reconnects, then publishes
    drain_until(lambda: {str(i).encode() for i in range(41)} <= set(inbox.bodies), consumer)

    # The held delivery's connection is gone: its ack is dropped, the broker redelivers it.
    held.deliveries[0].ack()
    drain_until(lambda: len(held) == 2, consumer)
    assert held.deliveries[1].redelivered is True
    held.deliveries[1].ack()

    # The exclusive reply queue died with the connection and was declared again.
    def reply_arrived() -> bool:
        publisher.publish(envelope("", reply, b"probe"))
        consumer.drain(0.1)
        return len(replies) > 0

    drain_until(reply_arrived, consumer)


def test_missing_exchange_raises_publish_failed_and_transport_recovers(
        amqp_url: str, unique, make_transport) -> None:
    transport = make_transport(amqp_url)
    exchange, queue, topology = service_topology(unique)
    missing = unique("missing")
    transport.declare(topology)
    inbox = Inbox()
    transport.consume(queue, inbox, 10)

    with pytest.raises(exceptions.PublishFailed) as raised:
        transport.publish(envelope(missing, "svc.m", b"lost"))
    assert missing in str(raised.value)
    assert "404" in str(raised.value)

    transport.publish(envelope(exchange, "svc.m", b"after"))
    batch = [envelope(exchange, "svc.m", b"a"), envelope(missing, "svc.m", b"b"),
             envelope(exchange, "svc.m", b"c")]
    with pytest.raises(exceptions.PublishFailed) as raised:
        transport.publish_many(batch)
    assert list(raised.value.failed) == [1]
    assert raised.value.envelopes == [batch[1]]
    # "a" went out before the channel closed, unconfirmed: it is sent again (at-least-once).
    drain_until(lambda: {b"a", b"after", b"c"} <= set(inbox.bodies), transport)
    drain_for(0.2, transport)
    assert set(inbox.bodies) == {b"a", b"after", b"c"}


def test_invalid_utf8_from_other_clients_is_delivered(amqp_url: str, unique,
                                                      make_transport) -> None:
    """Invalid UTF-8 in a header, in short-string properties and in the routing key.

    py-amqp writes bytes as raw AMQP strings, so this is what a non-Python or
    buggy client can put on the broker. Each message must reach on_message in
    order, undecodable text kept recoverable.
    """
    exchange, queue, topology = service_topology(unique, pattern="#")
    transport = make_transport(amqp_url)
    transport.declare(topology)
    inbox = Inbox()
    transport.consume(queue, inbox, 1)
    channel = amqp_channel(amqp_url)
    try:
        channel.basic_publish(amqp.Message(b"1", application_headers={"bad": b"\xff\xfe"}),
                              exchange=exchange, routing_key="k")
        channel.basic_publish(amqp.Message(b"2", content_type=b"\xff\xfe",
                                           correlation_id=b"id-\xc3"), exchange=exchange,
                              routing_key="k")
        channel.basic_publish(amqp.Message(b"3"), exchange=exchange, routing_key=b"\xff.k")
        channel.basic_publish(amqp.Message(b"4", application_headers={"ok": "yes"}),
                              exchange=exchange, routing_key="k")
    finally:
        channel.connection.close()
    drain_until(lambda: len(inbox) == 4, transport)

    first, second, third, fourth = inbox.deliveries
    assert inbox.bodies == [b"1", b"2", b"3", b"4"]
    assert first.headers == {"bad": b"\xff\xfe"}
    assert second.properties["content_type"].encode("utf-8", "surrogateescape") == b"\xff\xfe"
    assert second.properties["correlation_id"].encode("utf-8", "surrogateescape") == b"id-\xc3"
    assert third.routing_key.encode("utf-8", "surrogateescape") == b"\xff.k"
    assert fourth.headers == {"ok": "yes"}
    assert transport.queue_size(queue) == 0


def test_plain_py_amqp_fails_on_invalid_utf8_properties(amqp_url: str, unique) -> None:
    """Why the tolerant frame handler exists (if this fails, py-amqp got fixed upstream)."""
    queue = unique("q")
    channel = amqp_channel(amqp_url)
    try:
        channel.queue_declare(queue, durable=False, auto_delete=False)
        channel.basic_publish(amqp.Message(b"x", content_type=b"\xff"), exchange="",
                              routing_key=queue)
        with pytest.raises(UnicodeDecodeError):
            channel.basic_get(queue, no_ack=True)
    finally:
        channel.connection.collect()


def test_publish_many_confirms_every_message(amqp_url: str, unique, make_transport) -> None:
    transport = make_transport(amqp_url)
    exchange, queue, topology = service_topology(unique)
    transport.declare(topology)
    bodies = [str(i).encode() for i in range(500)]
    transport.publish_many([envelope(exchange, "svc.bulk", body) for body in bodies])
    assert transport.queue_size(queue) == len(bodies)
    inbox = Inbox()
    transport.consume(queue, inbox, 100)
    drain_until(lambda: len(inbox) == len(bodies), transport)
    assert inbox.bodies == bodies


def test_declare_over_tavrida_1_0_objects(amqp_url: str, unique, make_transport) -> None:
    """Objects first declared as tavrida 1.0 does (durable, no arguments): no 406."""
    exchange, queue, topology = service_topology(unique)
    channel = amqp_channel(amqp_url)
    try:
        channel.exchange_declare(exchange, "topic", durable=True, auto_delete=False)
        channel.queue_declare(queue, durable=True, exclusive=False, auto_delete=False)
        channel.queue_bind(queue, exchange, "svc.#")
    finally:
        channel.connection.close()
    transport = make_transport(amqp_url)
    transport.declare(topology)
    inbox = Inbox()
    transport.consume(queue, inbox, 1)
    transport.publish(envelope(exchange, "svc.m", b"shared"))
    drain_until(lambda: len(inbox) == 1, transport)


@pytest.mark.slow
def test_heartbeat_keeps_an_idle_consumer_alive(amqp_url: str, unique, make_transport,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """A long handler that calls heartbeat() from a worker keeps the connection."""
    transport = make_transport(amqp_url, heartbeat_interval=1)
    exchange, queue, topology = service_topology(unique)
    transport.declare(topology)
    inbox = Inbox()
    transport.consume(queue, inbox, 1)
    done = threading.Event()

    def worker() -> None:
        while not done.wait(0.2):
            transport.heartbeat()

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        done.wait(3.0)  # the "long handler": 3 heartbeat intervals without draining
    finally:
        done.set()
        thread.join()
    transport.publish(envelope(exchange, "svc.m", b"alive"))
    drain_until(lambda: len(inbox) == 1, transport)
    assert not [r for r in caplog.records if "lost" in r.getMessage()]


def test_delete_removes_queues_and_exchanges(amqp_url: str, unique, make_transport) -> None:
    transport = make_transport(amqp_url)
    exchange, queue, topology = service_topology(unique)
    transport.declare(topology)
    assert transport.queue_size(queue) == 0
    transport.delete(exchanges=[exchange], queues=[queue])
    assert transport.queue_size(queue) is None
    with pytest.raises(exceptions.PublishFailed):
        transport.publish(envelope(exchange, "svc.m"))


def test_nacked_messages_are_reported(amqp_url: str, unique, make_transport) -> None:
    """A queue that refuses overflow makes RabbitMQ nack: those messages are named."""
    exchange, queue = unique("x"), unique("full")
    channel = amqp_channel(amqp_url)
    try:
        channel.exchange_declare(exchange, "topic", durable=True, auto_delete=False)
        channel.queue_declare(queue, durable=True, auto_delete=False, arguments={
            "x-max-length": 1, "x-overflow": "reject-publish"})
        channel.queue_bind(queue, exchange, "#")
    finally:
        channel.connection.close()
    transport = make_transport(amqp_url)
    with pytest.raises(exceptions.PublishFailed) as raised:
        transport.publish_many([envelope(exchange, "k", str(i).encode()) for i in range(3)])
    assert list(raised.value.failed) == [1, 2]
    assert "nacked" in str(raised.value)
    assert transport.queue_size(queue) == 1


def test_unreachable_broker_fails_after_the_configured_attempts(
        caplog: pytest.LogCaptureFixture) -> None:
    """No broker at all: bounded retries, ConnectionFailed, and no password in the logs."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    config = ConnectionConfig("127.0.0.1", Credentials("guest", "s3cret-pw"), port=port,
                              connection_attempts=2, retry_delay=0.01, reconnect_attempts=2)
    transport = KombuTransport(config)
    caplog.set_level(logging.DEBUG)
    try:
        with pytest.raises(exceptions.PublishConnectionFailed) as raised:
            transport.publish(envelope("x", "k"))
        assert isinstance(raised.value, exceptions.PublishFailed)
        assert raised.value.safe_url == config.safe_url
        assert "s3cret-pw" not in str(raised.value)
        with pytest.raises(exceptions.ConnectionFailed) as failed:  # attempts exhausted
            transport.declare(Topology.build(["x"]))
        assert isinstance(failed.value.cause, OSError)
        assert "s3cret-pw" not in str(failed.value)
        assert transport.drain(0.01) is False  # nothing consumed yet: no connection needed
    finally:
        transport.close()
    assert "retrying" in caplog.text
    assert "s3cret-pw" not in caplog.text


# --- RabbitMQ and Redis -------------------------------------------------------------------------

@pytest.fixture(params=["amqp", "redis"])
def server_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue(f"{request.param}_url")


def test_reply_queue_goes_away_on_close(server_url: str, unique, make_transport) -> None:
    exchange, reply = unique("x"), unique("reply")
    transport = make_transport(server_url)
    transport.declare(Topology.build([exchange]))
    transport.declare_reply_queue(reply, [Binding(reply, exchange, "caller")])
    inbox = Inbox()
    transport.consume(reply, inbox, 10)
    transport.publish(envelope(exchange, "caller", b"answer"))
    drain_until(lambda: len(inbox) == 1, transport)
    assert reply_queue_exists(server_url, exchange, reply)
    transport.close()
    assert not reply_queue_exists(server_url, exchange, reply)


def reply_queue_exists(url: str, exchange: str, queue: str) -> bool:
    if url.startswith("redis"):
        client = redis.Redis.from_url(url)
        try:
            members = client.smembers(f"_kombu.binding.{exchange}")
        finally:
            client.close()
        return any(queue.encode() in member for member in members)
    channel = amqp_channel(url)
    try:
        channel.queue_declare(queue, passive=True)
        return True
    except amqp.ResourceLocked:
        return True  # exclusive to another connection, but there
    except amqp.NotFound:
        return False
    finally:
        channel.connection.collect()


def test_close_gives_unacked_messages_back(server_url: str, unique, make_transport) -> None:
    exchange, queue, topology = service_topology(unique)
    first = make_transport(server_url)
    first.declare(topology)
    held = Inbox(ack=False)
    first.consume(queue, held, 10)
    first.publish_many([envelope(exchange, "svc.m", b"1"), envelope(exchange, "svc.m", b"2")])
    drain_until(lambda: len(held) == 2, first)
    held.deliveries[0].ack()
    first.close()
    held.deliveries[1].ack()  # after close: dropped, without raising

    second = make_transport(server_url)
    inbox = Inbox()
    second.consume(queue, inbox, 10)
    drain_until(lambda: len(inbox) == 1, second)
    assert inbox.bodies == [b"2"]
    assert inbox.deliveries[0].redelivered is True


@pytest.mark.slow
def test_redis_reconnects_after_connections_are_killed(redis_url: str, unique, make_transport,
                                                       close_redis_connections) -> None:
    consumer = make_transport(redis_url, transport_options={"client_name": unique("consumer")})
    publisher = make_transport(redis_url, transport_options={"client_name": unique("publisher")})
    exchange, queue, topology = service_topology(unique)
    consumer.declare(topology)
    inbox = Inbox()
    consumer.consume(queue, inbox, 10)
    publisher.publish_many([envelope(exchange, "svc.m", str(i).encode()) for i in range(10)])
    drain_until(lambda: len(inbox) >= 10, consumer)

    assert close_redis_connections(unique("consumer")) > 0
    assert close_redis_connections(unique("publisher")) > 0
    publisher.publish_many([envelope(exchange, "svc.m", str(i).encode()) for i in range(10, 20)])
    drain_until(lambda: {str(i).encode() for i in range(20)} <= set(inbox.bodies), consumer)

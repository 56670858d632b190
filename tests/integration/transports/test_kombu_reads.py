"""RabbitMQ over plain TCP: frames read ahead (compat.pyamqp_read), and none forgotten.

Most tests first wait until the frames they are about are all queued in
the socket (peeked, never read), so that one ``recv`` takes them together:
what the broker sends is then the same on every run. After them the broker
sends nothing more, so a frame waiting in the read-ahead buffer that a poll
of the socket does not show would never be read: the verdict the test waits
for would not come (or a timeout later than the test's deadline).
"""

from __future__ import annotations

import select
import socket
import struct
import time
import types
import urllib.parse
from typing import Any, Callable, List, Tuple

import amqp
import pytest
from amqp import spec
from transport_contract import WAIT, Inbox, amqp_channel, drain_until, envelope

from tavrida import exceptions
from tavrida.transports.base import Binding, Topology
from tavrida.transports.kombu import KombuTransport
from tavrida.transports.kombu.compat.pyamqp import AMQPConnection
from tavrida.transports.kombu.polling import frame_waits

Frame = Tuple[int, int, bytes]


def queued(sock: socket.socket) -> List[Frame]:
    """The whole frames waiting in ``sock`` (peeked: they stay there)."""
    try:
        data = sock.recv(1 << 20, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return []
    frames: List[Frame] = []
    offset = 0
    while len(data) - offset >= 8:
        kind, channel, size = struct.unpack_from(">BHI", data, offset)
        if offset + size + 8 > len(data):
            break
        frames.append((kind, channel, data[offset + 7:offset + 7 + size]))
        offset += size + 8
    return frames


def wait_until_queued(sock: socket.socket, enough: Callable[[List[Frame]], bool]) -> None:
    """Until the frames waiting in ``sock`` are ``enough`` (the rest on its way)."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    deadline = time.monotonic() + WAIT
    while not enough(queued(sock)):
        assert time.monotonic() < deadline, f"never came: {queued(sock)}"
        if poller.poll(10):
            time.sleep(0.001)  # some came, the rest is on its way: no event tells when


def acked(tag: int) -> Callable[[List[Frame]], bool]:
    """Frames that hold a basic.ack of delivery tag ``tag`` (alone or with ``multiple``)."""
    def enough(frames: List[Frame]) -> bool:
        return any(kind == 1 and payload[:4] == ACK and struct.unpack_from(">Q", payload, 4)[0]
                   == tag for kind, _, payload in frames)
    return enough


ACK = struct.pack(">HH", *spec.Basic.Ack)
RETURN = struct.pack(">HH", *spec.Basic.Return)


class CountingSocket:
    """``sock`` whose ``recv`` calls are counted (the rest passed through)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.recvs = 0

    def recv(self, *args: Any) -> bytes:
        self.recvs += 1
        return self.sock.recv(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


def publish(url: str, queue: str, count: int) -> None:
    """``count`` messages (bodies ``0``, ``1``, ...) in ``queue``, from another client."""
    channel = amqp_channel(url)
    try:
        channel.confirm_select()
        for number in range(count):
            channel.basic_publish_confirm(amqp.Message(str(number).encode()), exchange="",
                                          routing_key=queue)
    finally:
        channel.connection.close()


def connection(url: str) -> Any:
    """tavrida's py-amqp connection (the one its kombu transport uses), connected."""
    parts = urllib.parse.urlsplit(url)
    conn = AMQPConnection(host=f"{parts.hostname}:{parts.port or 5672}",
                          userid=urllib.parse.unquote(parts.username or "guest"),
                          password=urllib.parse.unquote(parts.password or "guest"),
                          virtual_host=urllib.parse.unquote(parts.path[1:]) or "/")
    conn.connect()
    return conn


def test_a_burst_of_deliveries_is_read_in_one_recv(amqp_url: str, unique) -> None:
    """Five deliveries (fifteen frames) waiting together: one recv (py-amqp: 45).

    drain_events returns after each message, as py-amqp's: the other four
    wait in the buffer while the socket has nothing more to read, and
    ``frame_waits`` (which the adapter asks before it polls) says so.
    """
    queue = unique("q")
    conn = connection(amqp_url)
    sock = conn.transport.sock
    try:
        channel = conn.channel()
        channel.queue_declare(queue, durable=False, auto_delete=False)
        received: List[amqp.Message] = []
        channel.basic_consume(queue, callback=received.append, no_ack=True)
        publish(amqp_url, queue, 5)
        wait_until_queued(sock, lambda frames: len(frames) >= 15)
        conn.transport.sock = counting = CountingSocket(sock)
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        for number in range(5):
            conn.drain_events(timeout=0)
            assert len(received) == number + 1
            assert poller.poll(0) == []  # the socket says nothing more ...
            assert frame_waits(conn.transport) is (number < 4)  # ... the buffer does
        assert [message.body for message in received] == [b"0", b"1", b"2", b"3", b"4"]
        assert counting.recvs == 1
    finally:
        conn.transport.sock = sock
        conn.collect()


def test_deliveries_read_with_consume_ok_reach_the_consumer(amqp_url: str, unique) -> None:
    """basic_consume takes its callback once consume-ok is read: the deliveries read
    with it (already queued) wait for the next drain_events, as with py-amqp's reads."""
    queue = unique("q")
    conn = connection(amqp_url)
    try:
        channel = conn.channel()
        channel.queue_declare(queue, durable=False, auto_delete=False)
        publish(amqp_url, queue, 3)
        received: List[amqp.Message] = []
        channel.basic_consume(queue, callback=received.append, no_ack=True)
        for _ in range(3):
            conn.drain_events(timeout=WAIT)  # one message each
        assert [message.body for message in received] == [b"0", b"1", b"2"]
    finally:
        conn.collect()


@pytest.fixture
def service(unique) -> tuple:
    exchange, queue = unique("x"), unique("q")
    return exchange, queue, Topology.build([exchange], [queue], [Binding(queue, exchange, "svc.#")])


def publishing_socket(transport: KombuTransport) -> socket.socket:
    sock: socket.socket = transport._publisher.raw.transport.sock
    return sock


def unroutable_then_routed(transport: KombuTransport, exchange: str,
                           monkeypatch: pytest.MonkeyPatch) -> Tuple[Any, Any]:
    """Publish an unroutable message, then a routed one; return once the first one's
    basic.return (three frames) and then the second one's basic.ack wait in the socket.

    The publisher reads its socket before a write when it has input (for a
    ``connection.blocked``): turned off here, else the return could be read
    before the second write, and the frames come apart.
    """
    monkeypatch.setattr(transport._publisher, "_has_input",
                        types.SimpleNamespace(input_waits=lambda transport, sock: False))
    returned = transport.publish(envelope(exchange, "nobody.listens"))
    routed = transport.publish(envelope(exchange, "svc.a"))
    sock = publishing_socket(transport)
    wait_until_queued(sock, acked(2))
    assert queued(sock)[0][2][:4] == RETURN
    return returned, routed


def test_a_verdict_read_with_the_frames_before_it_reaches_a_waiting_publisher(
        amqp_url: str, unique, make_transport, service, monkeypatch) -> None:
    """An unroutable publish, then a routed one: the first's basic.return (three
    frames) and the second's basic.ack come in one recv.

    With a reply queue the waiter polls the publishing socket and the reply
    queue's together: the ack, read with the return, is handled by the same
    read, for the socket has nothing more to say.
    """
    exchange, _, topology = service
    transport = make_transport(amqp_url, heartbeat_interval=0)
    transport.declare(topology)
    reply = unique("reply")
    transport.declare_reply_queue(reply, [Binding(reply, exchange, "caller")])
    returned, routed = unroutable_then_routed(transport, exchange, monkeypatch)
    routed.wait(WAIT)
    with pytest.raises(exceptions.Unroutable):
        returned.wait(0)


def test_a_verdict_read_with_the_frames_before_it_reaches_a_draining_callback(
        amqp_url: str, unique, make_transport, service, monkeypatch) -> None:
    """The same verdicts, nobody waiting: the transport's drain reads them, runs the
    callbacks."""
    exchange, queue, topology = service
    transport = make_transport(amqp_url, heartbeat_interval=0)
    transport.declare(topology)
    inbox = Inbox()
    transport.consume(queue, inbox, 10)
    returned, routed = unroutable_then_routed(transport, exchange, monkeypatch)
    settled: List[Any] = []
    returned.add_done_callback(settled.append)
    routed.add_done_callback(settled.append)
    drain_until(lambda: len(settled) == 2 and len(inbox) == 1, transport)
    assert settled == [returned, routed]
    assert isinstance(returned.exception(0), exceptions.Unroutable)
    assert routed.exception(0) is None

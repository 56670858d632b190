"""compat.pyamqp_read on a socket pair: frames read ahead, kept across timeouts, told.

No broker: the peer end of a socket pair plays RabbitMQ (what it sends is in
the socket before each read, so nothing here depends on timing). The same
on a real RabbitMQ: tests/integration/transports/test_kombu_reads.py.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
from typing import Any, Iterator, List, Tuple

import amqp
import pytest
from amqp import spec
from amqp.transport import SSLTransport, TCPTransport
from frame_wire import Frame, RecordingSocket, wire

from tavrida.transports.kombu.compat.pyamqp import AMQPConnection
from tavrida.transports.kombu.compat.pyamqp_read import READ_SIZE, ReadAheadTransport
from tavrida.transports.kombu.polling import frame_waits


def method(name: Tuple[int, int]) -> Frame:
    """A method frame without arguments (the handler in these tests does not read them)."""
    return (1, 1, struct.pack(">HH", *name))


def next_frame(transport: ReadAheadTransport, timeout: Any) -> Frame:
    """The next frame as drain_events reads it: from the buffer, else from the socket."""
    frame: Frame = transport.frame() or transport.receive(timeout)
    return frame


@pytest.fixture
def pair() -> Iterator[Tuple[ReadAheadTransport, RecordingSocket, socket.socket]]:
    """(transport, its recording socket, the peer's end)."""
    ours, peer = socket.socketpair()
    transport = ReadAheadTransport("127.0.0.1:5672")
    transport.sock = recording = RecordingSocket(ours)
    transport.connected = True
    yield transport, recording, peer
    ours.close()
    peer.close()


def test_frames_sent_together_are_read_in_one_recv(pair) -> None:
    transport, recording, peer = pair
    frames = [method(spec.Basic.Deliver), (2, 1, b"header"), (3, 1, b"body"), (8, 0, b"")]
    peer.sendall(wire(*frames))
    assert [next_frame(transport, 0) for _ in frames] == frames
    assert recording.asked == [READ_SIZE]


def test_a_frame_cut_short_times_out_and_its_bytes_are_kept(pair) -> None:
    transport, recording, peer = pair
    whole = wire((3, 1, b"x" * 100))
    peer.sendall(whole[:50])
    with pytest.raises(socket.timeout):
        next_frame(transport, 0)
    with pytest.raises(socket.timeout):
        next_frame(transport, 0)  # nothing more came: still a timeout, nothing lost
    assert transport.frame() is None and transport.connected
    peer.sendall(whole[50:])
    assert next_frame(transport, 0) == (3, 1, b"x" * 100)
    # The rest of a frame begun is asked for whole, at least READ_SIZE bytes.
    assert recording.asked == [READ_SIZE] * 4


def test_a_frame_larger_than_a_read_is_asked_for_whole(pair) -> None:
    transport, recording, peer = pair
    body = bytes(range(256)) * (3 * READ_SIZE // 256)
    data = wire((3, 1, body))
    peer.sendall(data[:7])
    with pytest.raises(socket.timeout):
        next_frame(transport, 0)  # the header only: the payload is asked for next
    received: List[Frame] = []
    writer = threading.Thread(target=peer.sendall, args=(data[7:],))
    writer.start()
    try:
        received.append(next_frame(transport, None))
    finally:
        writer.join()
    assert received == [(3, 1, body)]
    assert recording.asked[1] == len(body) + 1  # the payload and the frame-end octet


def test_end_of_file_fails_the_read_and_marks_the_transport(pair) -> None:
    transport, _, peer = pair
    peer.sendall(wire((8, 0, b""))[:3])
    peer.close()
    with pytest.raises(OSError, match="closed"):
        next_frame(transport, 0)
    assert not transport.connected


def test_a_wrong_frame_end_is_refused_as_py_amqp_does(pair) -> None:
    transport, _, peer = pair
    peer.sendall(wire((8, 0, b""))[:-1] + b"\x00")
    with pytest.raises(amqp.exceptions.UnexpectedFrame):
        next_frame(transport, 0)


def connection(transport: ReadAheadTransport, handled: List[Frame]) -> Any:
    """An AMQPConnection on ``transport`` whose frame handler records the frames and says,
    as py-amqp's, whether a method is complete: a method frame other than basic.deliver,
    a body frame (of one octet, here); not a delivery's first frames, nor a heartbeat."""
    conn = AMQPConnection(host="127.0.0.1:5672")
    conn.transport = transport

    def handle(frame: Frame) -> bool:
        handled.append(frame)
        if frame[0] == 1:
            return frame[2] != method(spec.Basic.Deliver)[2]
        return frame[0] == 3 and frame[2] == b"."

    conn.on_inbound_frame = handle
    return conn


def test_drain_events_stops_at_a_method_the_frames_after_it_wait_and_say_so(pair) -> None:
    """As py-amqp's: one method per call (a synchronous method's caller acts on its reply
    before the frames behind it). Those frames wait in the buffer, the socket has nothing
    to read: frame_waits (which the adapter asks before it polls) says there is input."""
    transport, recording, peer = pair
    handled: List[Frame] = []
    conn = connection(transport, handled)
    first = [method(spec.Basic.ConsumeOk), (8, 0, b"")]
    second = [method(spec.Basic.Deliver), (2, 1, b"h"), (3, 1, b".")]
    cut = wire(method(spec.Basic.Deliver), (2, 1, b"h"))
    peer.sendall(wire(*first, *second) + cut[:-3])
    conn.drain_events(timeout=0)
    assert handled == first[:1]
    assert frame_waits(transport) and not select.select([peer], [], [], 0)[0]
    conn.drain_events(timeout=0)
    assert handled == first + second and recording.asked == [READ_SIZE]
    handled.clear()
    with pytest.raises(socket.timeout):
        conn.drain_events(timeout=0)  # a delivery whose header is cut: the rest is late
    assert handled == [method(spec.Basic.Deliver)] and not frame_waits(transport)
    peer.sendall(cut[-3:] + wire((3, 1, b".")))
    conn.drain_events(timeout=0)
    assert handled == [method(spec.Basic.Deliver), (2, 1, b"h"), (3, 1, b".")]


def test_only_a_whole_frame_read_ahead_waits(pair) -> None:
    transport, _, peer = pair
    assert not frame_waits(None) and not frame_waits(TCPTransport("127.0.0.1:5672"))
    data = wire((8, 0, b""), (3, 1, b"body"))
    peer.sendall(data[:-1])
    assert next_frame(transport, 0) == (8, 0, b"")
    assert not frame_waits(transport)  # the body frame lacks its last octet
    peer.sendall(data[-1:] + wire((8, 0, b"")))
    assert not frame_waits(transport)  # the rest is in the socket: a poll shows it
    assert next_frame(transport, 0) == (3, 1, b"body")
    assert frame_waits(transport)  # the heartbeat came with it


def test_amqps_keeps_py_amqps_transport() -> None:
    conn = AMQPConnection(host="127.0.0.1:5671")
    assert isinstance(conn.Transport("127.0.0.1:5671", None, ssl=True), SSLTransport)
    assert type(conn.Transport("127.0.0.1:5672", None, ssl=False)) is ReadAheadTransport

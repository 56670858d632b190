"""compat.pyamqp_read on a socket pair: frames read ahead, kept across timeouts, all handled.

No broker: the peer end of a socket pair plays RabbitMQ (what it sends is in
the socket before each read, so nothing here depends on timing). The same
on a real RabbitMQ: tests/integration/transports/test_kombu_reads.py.
"""

from __future__ import annotations

import socket
import struct
import threading
from typing import Any, Iterator, List, Tuple

import amqp
import pytest
from amqp import spec
from amqp.transport import SSLTransport

from tavrida.transports.kombu.compat.pyamqp import AMQPConnection
from tavrida.transports.kombu.compat.pyamqp_read import READ_SIZE, ReadAheadTransport

Frame = Tuple[int, int, bytes]


def wire(*frames: Frame) -> bytes:
    return b"".join(struct.pack(">BHI", kind, channel, len(payload)) + payload + b"\xce"
                    for kind, channel, payload in frames)


def method(name: Tuple[int, int]) -> Frame:
    """A method frame without arguments (the handler in these tests does not read them)."""
    return (1, 1, struct.pack(">HH", *name))


class Recv:
    """The socket's recv, each size asked recorded (and fileno, for the poll)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.asked: List[int] = []

    def recv(self, size: int, *flags: int) -> bytes:
        self.asked.append(size)
        return self.sock.recv(size, *flags)

    def fileno(self) -> int:
        return self.sock.fileno()


@pytest.fixture
def pair() -> Iterator[Tuple[ReadAheadTransport, Recv, socket.socket]]:
    """(transport, its recording socket, the peer's end)."""
    ours, peer = socket.socketpair()
    transport = ReadAheadTransport("127.0.0.1:5672")
    transport.sock = recording = Recv(ours)
    transport.connected = True
    yield transport, recording, peer
    ours.close()
    peer.close()


def test_frames_sent_together_are_read_in_one_recv(pair) -> None:
    transport, recording, peer = pair
    frames = [method(spec.Basic.Deliver), (2, 1, b"header"), (3, 1, b"body"), (8, 0, b"")]
    peer.sendall(wire(*frames))
    assert [transport.next_frame(0) for _ in frames] == frames
    assert recording.asked == [READ_SIZE]


def test_a_frame_cut_short_times_out_and_its_bytes_are_kept(pair) -> None:
    transport, recording, peer = pair
    whole = wire((3, 1, b"x" * 100))
    peer.sendall(whole[:50])
    with pytest.raises(socket.timeout):
        transport.next_frame(0)
    with pytest.raises(socket.timeout):
        transport.next_frame(0)  # nothing more came: still a timeout, nothing lost
    assert transport.frame() is None and transport.connected
    peer.sendall(whole[50:])
    assert transport.next_frame(0) == (3, 1, b"x" * 100)
    # The rest of a frame begun is asked for whole, at least READ_SIZE bytes.
    assert recording.asked == [READ_SIZE] * 4


def test_a_frame_larger_than_a_read_is_asked_for_whole(pair) -> None:
    transport, recording, peer = pair
    body = bytes(range(256)) * (3 * READ_SIZE // 256)
    data = wire((3, 1, body))
    peer.sendall(data[:7])
    with pytest.raises(socket.timeout):
        transport.next_frame(0)  # the header only: the payload is asked for next
    received: List[Frame] = []
    writer = threading.Thread(target=peer.sendall, args=(data[7:],))
    writer.start()
    try:
        received.append(transport.next_frame(None))
    finally:
        writer.join()
    assert received == [(3, 1, body)]
    assert recording.asked[1] == len(body) + 1  # the payload and the frame-end octet


def test_end_of_file_fails_the_read_and_marks_the_transport(pair) -> None:
    transport, _, peer = pair
    peer.sendall(wire((8, 0, b""))[:3])
    peer.close()
    with pytest.raises(OSError, match="closed"):
        transport.next_frame(0)
    assert not transport.connected


def test_a_wrong_frame_end_is_refused_as_py_amqp_does(pair) -> None:
    transport, _, peer = pair
    peer.sendall(wire((8, 0, b""))[:-1] + b"\x00")
    with pytest.raises(amqp.exceptions.UnexpectedFrame):
        transport.next_frame(0)


def connection(transport: ReadAheadTransport, handled: List[Frame]) -> Any:
    """An AMQPConnection on ``transport`` whose frame handler records the frames: a
    method frame completes a method, content frames do not (body frames of one octet do)."""
    conn = AMQPConnection(host="127.0.0.1:5672")
    conn.transport = transport

    def handle(frame: Frame) -> bool:
        handled.append(frame)
        return frame[0] == 8 or (frame[0] == 3 and frame[2] == b".")

    conn.on_inbound_frame = handle
    return conn


def test_drain_events_handles_every_whole_frame_it_read(pair) -> None:
    """A socket with nothing to read holds no whole frame read ahead: the polls of the
    adapter (which ask the socket) are still right."""
    transport, recording, peer = pair
    handled: List[Frame] = []
    conn = connection(transport, handled)
    first = [method(spec.Basic.Deliver), (2, 1, b"h"), (3, 1, b".")]
    second = [method(spec.Basic.Deliver), (2, 1, b"h"), (3, 1, b".")]
    cut = wire(method(spec.Basic.Deliver), (2, 1, b"h"))
    peer.sendall(wire(*first, *second) + cut[:-3])
    conn.drain_events(timeout=0)
    assert handled == first + second + [method(spec.Basic.Deliver)]
    assert transport.frame() is None and recording.asked == [READ_SIZE]
    handled.clear()
    peer.sendall(cut[-3:] + wire((3, 1, b".")))
    conn.drain_events(timeout=0)
    assert handled == [(2, 1, b"h"), (3, 1, b".")]


def test_amqps_keeps_py_amqps_transport() -> None:
    conn = AMQPConnection(host="127.0.0.1:5671")
    assert isinstance(conn.Transport("127.0.0.1:5671", None, ssl=True), SSLTransport)
    assert type(conn.Transport("127.0.0.1:5672", None, ssl=False)) is ReadAheadTransport

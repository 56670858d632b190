"""py-amqp's frame reads over plain TCP in fewer system calls: :class:`ReadAheadConnection`.

py-amqp's ``TCPTransport.read_frame`` reads a frame in three ``recv`` calls
of exactly the bytes it needs (header, payload, frame-end octet), and
``Connection.blocking_read`` wraps each frame in ``having_timeout`` (two
``settimeout`` when a timeout is given): a delivery of three frames and a
confirm cost twelve ``recv`` and eight ``settimeout``. Here:

* :class:`ReadAheadTransport` asks the socket for up to :data:`READ_SIZE`
  bytes at once and frames what came from its buffer: a frame already whole
  in it costs no system call, a burst of frames one ``recv``;
* it never changes the socket's timeout (py-amqp leaves the socket blocking):
  a read within a timeout ``poll`` s the socket for that long, then reads
  without waiting (``MSG_DONTWAIT``; with a timeout of 0, at once);
* :meth:`ReadAheadConnection.drain_events` reads, as py-amqp's, until one
  method is complete: the frames after it wait in the buffer for the next
  call (py-amqp's synchronous methods rely on it: ``basic_consume`` takes
  its callback after ``consume-ok``, and the deliveries behind it must wait).

So a frame may wait in the buffer while the socket has nothing to read: a
poll of the socket no longer says whether there is input.
:func:`frame_waits` does, and every place of the adapter that asks asks it
first (through :mod:`..polling`).

amqps stays on py-amqp's own transport (:meth:`ReadAheadConnection.Transport`).
The undocumented py-amqp names relied on: ``Connection.Transport`` (the
transport factory), ``Connection.drain_events`` (frames until a method
completes, each read by ``blocking_read`` within ``having_timeout``),
``TCPTransport.read_frame`` (one frame, the socket as it is); the canary in
``tests/unit/transports/test_kombu_compat.py`` checks py-amqp still reads as
described above (when it buffers itself, this module can go) and that both
transports read the same frames.
"""

from __future__ import annotations

import errno
import select
import socket
import struct
from typing import Any, Optional

import amqp
from amqp.exceptions import UnexpectedFrame
from amqp.transport import TCPTransport

from tavrida.transports.kombu.compat.fast_properties import Frame

#: Most bytes asked of the socket per ``recv``: a burst of frames in one call
#: (bench.profiling "call, tavrida: client": 12 -> 2 recv, 8 -> 0 settimeout per call).
READ_SIZE = 65536
#: The octet ending every frame.
FRAME_END = 206
#: Errors py-amqp takes for "try again", not for a dead connection.
_TRANSIENT = frozenset((errno.EAGAIN, errno.EINTR, errno.ENOENT, errno.EWOULDBLOCK))
_unpack_header = struct.Struct(">BHI").unpack_from
_unpack_size = struct.Struct(">I").unpack_from


class ReadAheadTransport(TCPTransport):  # type: ignore[misc]  # py-amqp has no types
    """py-amqp's TCP transport reading ahead: up to :data:`READ_SIZE` bytes per ``recv``.

    Read by one thread at a time (the connection's owner holds its lock);
    :func:`frame_waits` may be asked from any.
    """

    def __init__(self, host: str, connect_timeout: Optional[float] = None,
                 **kwargs: Any) -> None:
        super().__init__(host, connect_timeout, **kwargs)
        #: Bytes read, and where in them the next frame starts.
        self.ahead = b""
        self.at = 0
        self._poller: Any = None

    def frame(self) -> Optional[Frame]:
        """The next frame if it is whole in the buffer (no system call), else None."""
        ahead = self.ahead
        at = self.at
        if len(ahead) - at < 8:
            return None
        frame_type, channel, size = _unpack_header(ahead, at)
        end = at + size + 8
        if end > len(ahead):
            return None
        if ahead[end - 1] != FRAME_END:
            raise UnexpectedFrame(
                f"Received frame_end {ahead[end - 1]:#04x} while expecting 0xce")
        if end == len(ahead):
            self.ahead = b""
            self.at = 0
        else:
            self.at = end
        return frame_type, channel, ahead[at + 7:end - 1]

    def read_frame(self, unpack: Any = None) -> Frame:
        """The next frame, the socket read as it is (blocking) if need be."""
        return self.frame() or self.receive(None)

    def receive(self, timeout: Optional[float]) -> Frame:
        """Read the socket until the next frame is whole (the buffer holds none), each
        ``recv`` waiting up to ``timeout`` s (None: as the socket does); that frame.

        socket.timeout when nothing came in time, the bytes read kept.
        """
        while True:
            sock = self.sock
            if sock is None:
                raise OSError(errno.ENOTCONN, "the connection is closed")
            ahead, at = self.ahead, self.at
            held = len(ahead) - at
            size = READ_SIZE
            if held >= 7:  # at least the rest of the frame begun
                size = max(size, _unpack_size(ahead, at + 3)[0] + 8 - held)
            try:
                if timeout is None:
                    chunk = sock.recv(size)
                elif timeout <= 0 or (self._poller or self._new_poller(sock)).poll(
                        timeout * 1000):
                    chunk = sock.recv(size, socket.MSG_DONTWAIT)
                else:
                    raise socket.timeout()
            except BlockingIOError:
                # py-amqp retries at once within a frame (a busy loop): the bytes are kept.
                raise socket.timeout() from None
            except socket.timeout:
                raise
            except OSError as exc:
                if exc.errno not in _TRANSIENT:
                    self.connected = False
                raise
            if not chunk:
                self.connected = False
                raise OSError("Server unexpectedly closed connection")
            self.ahead = ahead[at:] + chunk if held else chunk
            self.at = 0
            frame = self.frame()
            if frame is not None:
                return frame

    def _new_poller(self, sock: socket.socket) -> Any:
        """The poll object of ``sock``, made at the first read that waits."""
        self._poller = select.poll()
        self._poller.register(sock, select.POLLIN)
        return self._poller


def frame_waits(transport: Any) -> bool:
    """A whole frame waits read ahead in ``transport`` (a py-amqp connection's, or None):
    input a poll of its socket does not show. Never with py-amqp's own transports.

    Any thread may ask: ``ahead`` and ``at`` read a moment apart are a hint,
    as a poll is (the caller reads, or asks again, within its poll interval).
    """
    if type(transport) is not ReadAheadTransport:
        return False
    ahead, at = transport.ahead, transport.at
    held = len(ahead) - at
    return held >= 8 and held >= _unpack_size(ahead, at + 3)[0] + 8


class ReadAheadConnection(amqp.Connection):  # type: ignore[misc]  # py-amqp has no types
    """A py-amqp connection on :class:`ReadAheadTransport` over plain TCP (see the module)."""

    def Transport(self, host: str, connect_timeout: Optional[float], ssl: Any = False,
                  read_timeout: Optional[float] = None, write_timeout: Optional[float] = None,
                  socket_settings: Any = None, **kwargs: Any) -> Any:
        """py-amqp's transport over TLS, else :class:`ReadAheadTransport`."""
        if ssl:
            return super().Transport(host, connect_timeout, ssl, read_timeout, write_timeout,
                                     socket_settings=socket_settings, **kwargs)
        return ReadAheadTransport(host, connect_timeout, read_timeout=read_timeout,
                                  write_timeout=write_timeout,
                                  socket_settings=socket_settings, **kwargs)

    def drain_events(self, timeout: Optional[float] = None) -> None:
        """Read and handle frames until a method is complete, each read of the socket
        waiting up to ``timeout`` s (the frames after it stay in the buffer)."""
        transport = self.transport
        if type(transport) is not ReadAheadTransport:
            super().drain_events(timeout)
            return
        handle = self.on_inbound_frame
        buffered, receive = transport.frame, transport.receive
        while not handle(buffered() or receive(timeout)):
            pass

"""Polling a socket for input with one ``select.poll`` object kept per socket.

The adapter asks "is there something to read?" several times per message
(may acks wait, is the consuming connection alive, has a confirm come);
a new poll object and its registration each time cost more than the
question. A :class:`Readable` keeps the poll object of the last socket it
was asked about. A socket closed meanwhile shows as readable (``POLLNVAL``):
the read that follows fails, and the caller handles a lost connection as
ever.

Over plain TCP py-amqp's frames are read ahead (:mod:`.compat.pyamqp_read`):
a whole frame may wait in the transport's buffer while its socket has
nothing to read. Whoever asks whether a py-amqp connection has input asks
:func:`frame_waits` (:func:`.compat.pyamqp_read.frame_waits`, here for them)
first, then polls the socket (both at once: :meth:`Readable.input_waits`).
"""

from __future__ import annotations

import select
from typing import Any, Tuple

from tavrida.transports.kombu.compat.pyamqp_read import frame_waits

__all__ = ["CAN_POLL", "Readable", "fileno", "frame_waits"]

#: ``select.poll`` exists here (not on Windows): what the shared and deferred confirms,
#: and the checks of the consuming socket, need (tested once, not per publish).
CAN_POLL = hasattr(select, "poll")


def fileno(raw: Any) -> int:
    """The file descriptor of a py-amqp connection's socket; -1 without one (or closed)."""
    transport = raw.transport if raw is not None else None
    sock = transport.sock if transport is not None else None
    try:
        return sock.fileno() if sock is not None else -1
    except OSError:
        return -1


def _poller(fds: Tuple[Any, ...]) -> Any:
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return poller


class Readable:
    """Whether a socket (or one of a few) has input, its poll object kept between calls.

    Safe from any thread: a poll object being polled by another thread
    (``select.poll`` refuses concurrent polls) is replaced by a fresh one for
    that call.
    """

    __slots__ = ("_entry",)

    def __init__(self) -> None:
        self._entry: Tuple[Tuple[Any, ...], Any] = ((), None)

    def poll(self, *fds: Any, timeout: float = 0.0) -> Any:
        """The ``(fd, events)`` of ``fds`` (sockets or descriptors) ready within ``timeout`` s."""
        entry = self._entry
        if entry[0] != fds:
            entry = self._entry = (fds, _poller(fds))
        try:
            return entry[1].poll(timeout * 1000)
        except RuntimeError:  # polled by another thread right now
            return _poller(fds).poll(timeout * 1000)

    def __call__(self, sock: Any) -> bool:
        """True when ``sock`` has input (or end-of-file, or an error) now, without waiting."""
        entry = self._entry
        if entry[0] != (sock,):
            entry = self._entry = ((sock,), _poller((sock,)))
        try:
            return bool(entry[1].poll(0))
        except RuntimeError:  # polled by another thread right now
            return bool(_poller((sock,)).poll(0))

    def input_waits(self, transport: Any, sock: Any) -> bool:
        """True when a py-amqp connection has input now, without waiting: a frame read
        ahead in its ``transport`` (:func:`frame_waits`), or its ``sock`` (socket or
        descriptor) readable."""
        return frame_waits(transport) or self(sock)

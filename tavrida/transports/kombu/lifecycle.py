"""Whether a :class:`~tavrida.transports.kombu.KombuTransport` may still work."""

from __future__ import annotations

import threading
from typing import Callable, Optional

from tavrida import exceptions

#: Makes the ConnectionFailed a stopped transport raises (:meth:`Connector.failed`).
Failed = Callable[[Optional[BaseException], str], exceptions.ConnectionFailed]


class Lifecycle:
    """The transport's closed and interrupted flags and the events that wake its waits.

    Flags only (no lock): :meth:`interrupt` may run in a signal handler, and
    every reader tolerates seeing a flag a moment late.
    """

    def __init__(self) -> None:
        self.closed = False
        self.interrupted = False
        #: Set by close() and interrupt(): cuts retry sleeps short.
        self.wake = threading.Event()
        #: Set by close(): ends the heartbeat thread.
        self.closing = threading.Event()

    def interrupt(self) -> None:
        """Stop reconnecting for good: retries give up at once."""
        self.interrupted = True
        self.wake.set()

    def close(self) -> None:
        """Closed for good: everything waiting wakes up and gives up."""
        self.closed = True
        self.closing.set()
        self.wake.set()

    def check(self, failed: Failed) -> None:
        """Raise ``failed(None, why)`` if closed or interrupted."""
        if self.closed:
            raise failed(None, "the transport is closed")
        if self.interrupted:
            raise failed(None, "stopped while the broker was unreachable")

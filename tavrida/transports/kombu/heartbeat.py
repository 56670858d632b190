"""AMQP heartbeats on the consuming connection, kept going while a handler runs.

kombu's ``Connection.heartbeat_check`` is pumped by the draining thread
(see :mod:`~tavrida.transports.kombu.draining`); this part sends
heartbeats from any thread, and from a small thread of its own whenever
nobody has drained for half an interval (:class:`Heartbeat`).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Optional

from tavrida.transports.kombu.connections import KombuConnections

LOG = logging.getLogger(__name__)


class KombuHeartbeats(KombuConnections):
    """The heartbeats part of :class:`~tavrida.transports.kombu.KombuTransport`."""

    def heartbeat(self) -> None:
        """Send an AMQP heartbeat on the consuming connection now, from any thread.

        If :meth:`drain` holds the connection at this moment it is pumping
        heartbeats itself, so nothing needs sending.
        """
        if not self._is_amqp or not self._lock.acquire(blocking=False):
            return
        try:
            raw = self._raw_connection()
            if raw is not None and not self._broken:
                raw.send_heartbeat()
                self._heartbeat.last = time.monotonic()
        except self._connection_errors as exc:
            LOG.warning("heartbeat failed (%s: %s)", type(exc).__name__, exc)
            self._broken = True
        finally:
            self._lock.release()


class Heartbeat:
    """When the consuming connection last beat, and the thread keeping it beating.

    :meth:`KombuHeartbeats.heartbeat` pumps heartbeats, but a handler run on
    the draining thread (a server with ``workers=0``) stops the drain:
    RabbitMQ then closes the connection after two missed intervals, the
    handler's ack is lost and the message is redelivered -- to run as long
    again, for ever. The thread calls ``send`` (which only writes heartbeat
    frames, when the connection is free; it never reads) whenever nobody has
    beaten for half an interval. ``last`` is written under the consuming
    connection's lock.
    """

    def __init__(self, interval: float, closing: threading.Event,
                 send: Callable[[], None]) -> None:
        self.interval = interval
        self.closing = closing
        self.send = send
        #: ``time.monotonic()`` of the last heartbeat sent or checked.
        self.last = 0.0
        self.thread: Optional[threading.Thread] = None

    def start(self, name: str) -> None:
        """Start the thread (once; later connections reuse it)."""
        if self.thread is None:
            self.last = time.monotonic()
            self.thread = threading.Thread(target=self._keep, daemon=True, name=name)
            self.thread.start()

    def join(self, timeout: float) -> None:
        """Wait for the thread to end (after ``closing`` is set), unless it is this one."""
        thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _keep(self) -> None:
        interval = self.interval
        while not self.closing.wait(max(interval / 4, 0.05)):
            if time.monotonic() - self.last >= interval / 2:
                self.send()

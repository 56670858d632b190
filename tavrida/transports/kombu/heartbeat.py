"""AMQP heartbeats on the consuming connection, kept going while a handler runs.

kombu's ``Transport.heartbeat_check`` is pumped after reads by the
draining thread (:meth:`Heartbeat.check`, at most every ``check_interval``);
:meth:`Heartbeat.beat` sends a heartbeat from any thread, and a small
thread of its own does whenever nobody has drained for half an interval.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Optional

from tavrida.transports.kombu.context import KombuContext
from tavrida.transports.kombu.link import Link

# It logs as the connections always have (operators filter on that name).
LOG = logging.getLogger("tavrida.transports.kombu.connections")


class Heartbeat:
    """When the consuming connection last beat, and the thread keeping it beating.

    :meth:`check` pumps heartbeats while draining, but a handler run on
    the draining thread (a server with ``workers=0``) stops the drain:
    RabbitMQ then closes the connection after two missed intervals, the
    handler's ack is lost and the message is redelivered -- to run as long
    again, for ever. The thread calls :meth:`beat` (which only writes
    heartbeat frames, when the connection is free; it never reads) whenever
    nobody has beaten for half an interval. :attr:`last` is written under
    the consuming connection's ``lock``.
    """

    #: Seconds between heartbeat checks while messages keep coming (each read
    #: counts as a sign of life; heartbeats are sent every half interval, which
    #: is seconds): a check per message would cost more than the message.
    check_interval = 0.02

    def __init__(self, context: KombuContext, lock: threading.RLock, link: Link) -> None:
        self._context = context
        self._lock = lock
        self._link = link
        self.interval = float(context.config.heartbeat_interval or 0)
        self.closing = context.lifecycle.closing
        #: ``time.monotonic()`` of the last heartbeat sent or checked.
        self.last = 0.0
        self.thread: Optional[threading.Thread] = None

    def beat(self) -> None:
        """Send an AMQP heartbeat now, from any thread.

        If the draining thread holds the connection at this moment it is
        pumping heartbeats itself, so nothing needs sending.
        """
        context = self._context
        if not context.is_amqp or not self._lock.acquire(blocking=False):
            return
        try:
            raw = self._link.raw()
            if raw is not None and not self._link.broken:
                raw.send_heartbeat()
                self.last = time.monotonic()
        except context.connection_errors as exc:
            LOG.warning("heartbeat failed (%s: %s)", type(exc).__name__, exc)
            self._link.broken = True
        finally:
            self._lock.release()

    def check(self, conn: Any, now: float) -> None:
        """After a read (lock held): kombu's heartbeat check, ``now`` (``time.monotonic()``).

        The caller checks first that :attr:`check_interval` has passed since
        :attr:`last` (a call per read saved). Frames just read count as signs
        of life. Raises the connection's errors when the broker has gone silent.
        """
        conn.transport.heartbeat_check(self._link.raw(), rate=2)
        self.last = now

    def start(self) -> None:
        """Start the thread, with AMQP heartbeats on (once; later connections reuse it)."""
        context = self._context
        if self.thread is None and context.is_amqp and self.interval:
            self.last = time.monotonic()
            self.thread = threading.Thread(
                target=self._keep, daemon=True,
                name=f"tavrida-heartbeat-{context.connector.connection_name}")
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
                self.beat()

"""AMQP heartbeats on the consuming connection, kept going while a handler runs.

kombu's ``Connection.heartbeat_check`` is pumped by the draining thread
(see :mod:`~tavrida.transports.kombu.draining`); this part sends
heartbeats from any thread, and from a small thread of its own whenever
nobody has drained for half an interval.
"""

from __future__ import annotations

import logging
import time

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
                self._last_beat = time.monotonic()
        except self._connection_errors as exc:
            LOG.warning("heartbeat failed (%s: %s)", type(exc).__name__, exc)
            self._broken = True
        finally:
            self._lock.release()

    def _keep_heartbeats(self) -> None:
        """Send heartbeats whenever nobody has drained for half an interval.

        :meth:`drain` pumps heartbeats, but a handler run on the draining
        thread (a server with ``workers=0``) stops it: RabbitMQ then closes
        the connection after two missed intervals, the handler's ack is lost
        and the message is redelivered -- to run as long again, for ever.
        This thread only writes heartbeat frames, through :meth:`heartbeat`,
        when the connection is free; it never reads.
        """
        interval = float(self._config.heartbeat_interval or 0)
        while not self._lifecycle.closing.wait(max(interval / 4, 0.05)):
            if time.monotonic() - self._last_beat >= interval / 2:
                self.heartbeat()

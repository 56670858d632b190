"""Deadlines for the steps of a stop: cancel and close cannot hang on a stalled connection.

py-amqp's synchronous methods (``basic_cancel``, ``channel.close``,
``connection.close``) wait for the broker's reply with a blocking read that
has no deadline: behind a network partition that accepts and never
forwards (nor resets) they would wait for ever. :class:`SeverAt` bounds
such a block from outside: when its deadline passes before the block ends,
a timer thread shuts the connections' sockets down (:func:`sever`); the
blocked read then ends with a connection error, which the block handles as
a lost connection (RabbitMQ gives back what the connection held once the
connection is gone; Redis's un-acked messages are given back by the
transport as after any lost connection).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any, Callable, Optional

LOG = logging.getLogger(__name__)


def sever(conn: Any, raw_of: Callable[[Any], Any]) -> None:
    """Shut the sockets of kombu connection ``conn`` down, from any thread (best effort).

    A read blocked on them returns end-of-file at once. AMQP: the
    connection's socket; Redis: every connection of its channels' pools.
    """
    if conn is None:
        return
    raw = raw_of(conn)
    sock = getattr(getattr(raw, "transport", None), "sock", None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed
    for channel in list(getattr(raw, "channels", None) or ()):
        for name in ("_pool", "_async_pool"):
            pool = getattr(channel, name, None)
            if pool is not None and hasattr(pool, "disconnect"):
                try:
                    pool.disconnect()
                except Exception:  # noqa: BLE001 - best effort: it may be gone already
                    LOG.debug("ignoring error while severing a Redis pool", exc_info=True)


class SeverAt:
    """``with SeverAt(deadline, action, what):`` calls ``action()`` once ``deadline`` passes.

    ``deadline`` is a ``time.monotonic()`` value (None: no bound). The
    timer thread exists only while a bounded block runs; a block that ends
    in time cancels it.
    """

    __slots__ = ("_deadline", "_action", "_what", "_timer", "fired")

    def __init__(self, deadline: Optional[float], action: Callable[[], None],
                 what: str) -> None:
        self._deadline = deadline
        self._action = action
        self._what = what
        self._timer: Optional[threading.Timer] = None
        #: True once the deadline passed and the connections were severed.
        self.fired = False

    def _fire(self) -> None:
        self.fired = True
        LOG.warning("%s did not finish in time: dropping the connection", self._what)
        self._action()

    def __enter__(self) -> "SeverAt":
        if self._deadline is not None:
            timer = self._timer = threading.Timer(max(self._deadline - time.monotonic(), 0.0),
                                                  self._fire)
            timer.daemon = True
            timer.name = "tavrida-stop-deadline"
            timer.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._timer is not None:
            self._timer.cancel()

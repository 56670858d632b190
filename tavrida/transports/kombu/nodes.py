"""Cluster nodes: which node a connection tries next, and a queue whose node is down.

A cluster (:attr:`~tavrida.config.ConnectionConfig.urls`, several nodes)
is failed over as kombu's round-robin failover does: each connection
(consuming, publishing) sticks to the node it is connected to, and one
connect attempt tries every node once, starting with that one, before
:func:`.reconnect.retry_call` pauses; the order is :class:`NodeRotation`'s, the loop is in
:mod:`.connections`. A classic durable
queue whose home node is down makes RabbitMQ refuse to declare or consume
it (404 "home node ... is down or inaccessible"): :func:`queue_unavailable`
turns that into :class:`QueueUnavailable`, retried like a lost connection
until the node is back (or the deadline, attempts or a stop end it).
"""

from __future__ import annotations

import urllib.parse
from typing import List, Optional, Tuple

import amqp


class QueueUnavailable(amqp.RecoverableConnectionError):  # type: ignore[misc]
    """A queue lives on a cluster node that is down: retried like a lost connection.

    RabbitMQ answers 404 NOT_FOUND "home node ... of durable queue ... is
    down or inaccessible" to declaring or consuming a classic durable queue
    whose node is down, whichever node the client is connected to; it is
    back when that node is. A subclass of py-amqp's recoverable error, so
    the adapter's retry loop (:func:`retry_call`) retries it.
    """


def queue_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` is RabbitMQ's 404 for a queue whose home node is down."""
    return isinstance(exc, amqp.NotFound) and "home node" in str(exc)


class NodeRotation:
    """Which cluster node a connection uses: the one it has, else the next (round robin).

    ``order()`` lists the node indexes one connect attempt tries, the
    current node first; ``connected(i)`` records where it got. With one
    URL it is always ``[0]``.
    """

    def __init__(self, count: int) -> None:
        self.count = max(count, 1)
        self.current = 0

    def order(self) -> List[int]:
        """Every node once, starting with the current one."""
        return [(self.current + step) % self.count for step in range(self.count)]

    def connected(self, index: int) -> None:
        self.current = index

    def failed_round(self) -> None:
        """No node answered: the next attempt starts with the next node."""
        self.current = (self.current + 1) % self.count


def node_endpoint(url: str) -> Tuple[str, Optional[int], Optional[str], Optional[str]]:
    """Host, port, user and password of one of :attr:`ConnectionConfig.urls`."""
    parts = urllib.parse.urlsplit(url)
    user = urllib.parse.unquote(parts.username) if parts.username is not None else None
    password = urllib.parse.unquote(parts.password or "") if user is not None else None
    return parts.hostname or "localhost", parts.port, user, password

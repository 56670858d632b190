"""Declarations on the consuming connection, remembered for reconnects.

Exchanges and queues are declared with kombu's public ``Exchange.declare``
and ``Queue.declare`` (the tavrida 1.0 properties exactly); bindings with
``Channel.queue_bind``. kombu's ``maybe_declare`` is not used: it caches
what it declared per connection, and the adapter must declare again what a
broker lost under a live connection (see ``_check_topology``).
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Optional

import amqp
from kombu.entity import Exchange, Queue

from tavrida.transports.base import Binding, Topology
from tavrida.transports.kombu.heartbeats import KombuHeartbeats

LOG = logging.getLogger(__name__)


class KombuDeclarations(KombuHeartbeats):
    """The declaring part of :class:`~tavrida.transports.kombu.KombuTransport`."""

    def _declare_on(self, channel: Any, exchanges: Iterable[str], queues: Iterable[str],
                    bindings: Iterable[Binding]) -> None:
        # The tavrida 1.0 declarations exactly: no arguments, nothing exclusive or auto-deleted.
        for name in exchanges:
            Exchange(name, "topic", durable=True, auto_delete=False).declare(channel=channel)
        for name in queues:
            Queue(name, durable=True, exclusive=False, auto_delete=False,
                        no_declare=False).declare(channel=channel)
        for binding in bindings:
            channel.queue_bind(queue=binding.queue, exchange=binding.exchange,
                               routing_key=binding.routing_key)

    def _declare_reply_on(self, channel: Any, queue: str, bindings: Iterable[Binding]) -> None:
        bindings = list(bindings)
        # Binding needs the exchange; declared as everywhere else (same as the memory transport).
        self._declare_on(channel, dict.fromkeys(b.exchange for b in bindings), (), ())
        Queue(queue, durable=False, exclusive=self._is_amqp,
                    auto_delete=True).declare(channel=channel)
        for binding in bindings:
            channel.queue_bind(queue=queue, exchange=binding.exchange,
                               routing_key=binding.routing_key)

    def declare(self, topology: Topology) -> None:
        """Declare exchanges, queues, bindings (tavrida 1.0 style); again after reconnects.

        Raises the broker library's error when the broker refuses (e.g. 406
        for a same-named object declared with other properties).
        """
        def remember() -> None:
            self._exchanges.update(dict.fromkeys(topology.exchanges))
            self._queues.update(dict.fromkeys(topology.queues))
            self._bindings.update(dict.fromkeys(topology.bindings))

        self._with_connection(
            lambda channel: self._declare_on(channel, topology.exchanges, topology.queues,
                                             topology.bindings),
            remember)

    def declare_reply_queue(self, queue: str, bindings: Iterable[Binding]) -> None:
        """Declare a private queue that goes away with this transport.

        RabbitMQ: exclusive and auto-delete, so the broker deletes it when the
        connection closes, however the process ends. Redis and memory: deleted
        by :meth:`close` (a crashed process leaves it behind). Messages sent to
        it while the connection is down are lost; it is declared again on
        reconnect. The exchanges named by ``bindings`` are declared if missing;
        ``Binding.queue`` is ignored: bindings go to ``queue``.
        """
        bindings = tuple(bindings)

        def remember() -> None:
            self._reply_queues[queue] = bindings

        self._with_connection(lambda channel: self._declare_reply_on(channel, queue, bindings),
                              remember)

    def queue_size(self, queue: str) -> Optional[int]:
        """Messages ready in ``queue``; None when it does not exist (RabbitMQ)."""
        def action(channel: Any) -> Optional[int]:
            if not self._is_amqp:
                # Redis has no empty-queue object: a passive declare would say 404.
                count: int = channel.queue_declare(queue=queue, passive=False,
                                                   auto_delete=False).message_count
                return count
            try:
                count = channel.queue_declare(queue=queue, passive=True).message_count
                return count
            except amqp.NotFound:
                return None  # py-amqp has already reopened the channel

        return self._with_connection(action, lambda: None)

"""What the consuming connection declared, remembered for reconnects: :class:`Declarations`."""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Tuple

import amqp
from kombu.entity import Exchange, Queue

from tavrida.transports.base import Binding
from tavrida.transports.kombu.compat import redis_delays
from tavrida.transports.kombu.compat.virtual import binding_rows
from tavrida.transports.kombu.nodes import QueueUnavailable, queue_unavailable


class Declarations:
    """Exchanges, queues (with their arguments), bindings and reply queues declared so far.

    Declared again, all of them, on every new consuming connection
    (:meth:`declare_all`) and when a virtual broker lost bindings under a
    live connection (:meth:`missing`). Guarded by the consuming
    connection's lock.
    """

    def __init__(self, is_amqp: bool) -> None:
        self.is_amqp = is_amqp
        self.exchanges: Dict[str, None] = {}
        self.queues: Dict[str, None] = {}
        #: Declare arguments of the queues that have some (quorum and delay queues), by name.
        self.queue_arguments: Dict[str, Dict[str, Any]] = {}
        self.bindings: Dict[Binding, None] = {}
        self.reply_queues: Dict[str, Tuple[Binding, ...]] = {}
        #: ``time.monotonic()`` of the next check that a virtual broker still has the bindings.
        self.next_check = 0.0

    def declare_on(self, channel: Any, exchanges: Iterable[str], queues: Iterable[str],
                   bindings: Iterable[Binding]) -> None:
        """Declare these on ``channel``, tavrida 1.0's way (see :mod:`.declarer`)."""
        # The tavrida 1.0 declarations exactly: no arguments, nothing exclusive or auto-deleted
        # (quorum queues and delay queues: the arguments queue_arguments remembers).
        for name in exchanges:
            Exchange(name, "topic", durable=True, auto_delete=False).declare(channel=channel)
        for name in queues:
            arguments = self.queue_arguments.get(name) or {}
            if not self.is_amqp and "x-message-ttl" in arguments:
                # A delay queue on Redis: a set and a sorted set, no list (see .redis_delays).
                redis_delays.declare(channel, arguments["x-dead-letter-routing-key"],
                                     arguments["x-message-ttl"])
                continue
            try:
                Queue(name, durable=True, exclusive=False, auto_delete=False,
                      no_declare=False, queue_arguments=arguments or None,
                      ).declare(channel=channel)
            except amqp.NotFound as exc:
                if queue_unavailable(exc):
                    raise QueueUnavailable(str(exc)) from exc
                raise
        for binding in bindings:
            channel.queue_bind(queue=binding.queue, exchange=binding.exchange,
                               routing_key=binding.routing_key)

    def declare_reply_on(self, channel: Any, queue: str, bindings: Iterable[Binding]) -> None:
        """Declare a reply queue (exclusive on RabbitMQ) with its bindings and exchanges."""
        bindings = list(bindings)
        # Binding needs the exchange; declared as everywhere else (same as the memory transport).
        self.declare_on(channel, dict.fromkeys(b.exchange for b in bindings), (), ())
        Queue(queue, durable=False, exclusive=self.is_amqp,
              auto_delete=True).declare(channel=channel)
        for binding in bindings:
            channel.queue_bind(queue=queue, exchange=binding.exchange,
                               routing_key=binding.routing_key)

    def declare_all(self, channel: Any) -> None:
        """Declare every remembered exchange, queue and binding (not the reply queues)."""
        self.declare_on(channel, list(self.exchanges), list(self.queues), list(self.bindings))

    def forget(self, queues: Iterable[str], exchanges: Iterable[str]) -> None:
        """Deleted: no longer declared again, nor their bindings."""
        queues, exchanges = set(queues), set(exchanges)
        for name in queues:
            self.queues.pop(name, None)
            self.reply_queues.pop(name, None)
        for name in exchanges:
            self.exchanges.pop(name, None)
        self.bindings = {b: None for b in self.bindings
                         if b.queue not in queues and b.exchange not in exchanges}

    def rename_reply_queue(self, old: str, new: str) -> None:
        """A reply queue declared again under a fresh name (after a reconnect)."""
        self.reply_queues = {new if name == old else name: held
                             for name, held in self.reply_queues.items()}

    def missing(self, channel: Any) -> List[Binding]:
        """Bindings declared here that a virtual broker's tables (``channel``'s) no longer have."""
        wanted: Dict[str, List[Binding]] = {}
        for binding in self.bindings:
            wanted.setdefault(binding.exchange, []).append(binding)
        for queue, bindings in self.reply_queues.items():
            for binding in bindings:
                wanted.setdefault(binding.exchange, []).append(
                    Binding(queue, binding.exchange, binding.routing_key))
        missing: List[Binding] = []
        for exchange, wanted_here in wanted.items():
            present = {(row[0], row[-1]) for row in binding_rows(channel, exchange)}
            missing += [b for b in wanted_here if (b.routing_key, b.queue) not in present]
        return missing

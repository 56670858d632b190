"""Declaring on the consuming connection, remembered for reconnects: :class:`Declarer`.

Exchanges and queues are declared with kombu's public ``Exchange.declare``
and ``Queue.declare`` (the tavrida 1.0 properties exactly); bindings with
``Channel.queue_bind``. kombu's ``maybe_declare`` is not used: it caches
what it declared per connection, and the adapter must declare again what a
broker lost under a live connection (see :meth:`Declarer.check_topology`).

Delay queues (``Topology.delays``) are queues with arguments too:
``x-message-ttl`` and dead-lettering to their target on RabbitMQ; on Redis,
which has neither, a set and a sorted set (:mod:`.redis_delays`); kombu's
memory transport declares none (``holds_delays`` is False).

Quorum queues (``Topology.queue_type``, RabbitMQ only) are declared with
the arguments :meth:`~tavrida.transports.base.Topology.queue_arguments`
gives; a queue that exists with other arguments (a classic one asked to be
quorum) is refused by RabbitMQ with 406 PRECONDITION_FAILED, which becomes
:class:`~tavrida.exceptions.QueueMismatch` saying why, and the
control channel RabbitMQ closed over it is opened again.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from typing import Any, Iterable, List, Optional, Tuple

import amqp

from tavrida import exceptions
from tavrida.transports.base import Binding, Topology
from tavrida.transports.kombu.compat.virtual import delete_broker_bindings, forget_bindings
from tavrida.transports.kombu.connector import REDIS_SCHEMES
from tavrida.transports.kombu.consumers import ConsumerSet
from tavrida.transports.kombu.context import KombuContext
from tavrida.transports.kombu.declarations import Declarations
from tavrida.transports.kombu.link import Link

LOG = logging.getLogger(__name__)


class Declarer:
    """Declares and deletes on the consuming connection and declares it all again.

    Owns the :class:`~.declarations.Declarations` (what was declared),
    guarded by the connection's ``lock``; runs its operations through
    :meth:`.Link.with_connection` (which reconnects).
    """

    def __init__(self, context: KombuContext, lock: threading.RLock, link: Link,
                 consumers: ConsumerSet, topology_check_interval: float) -> None:
        self._context = context
        self._lock = lock
        self._link = link
        self._consumers = consumers
        self._topology_check_interval = topology_check_interval
        self.declarations = Declarations(context.is_amqp)

    @property
    def holds_delays(self) -> bool:
        """RabbitMQ (TTL queues) and Redis (:mod:`.redis_delays`); not kombu's memory."""
        context = self._context
        return context.is_amqp or (context.config.scheme in REDIS_SCHEMES
                                   and context.compat.private)

    def declare(self, topology: Topology) -> None:
        """Declare exchanges, queues, bindings (tavrida 1.0 style); again after reconnects.

        Raises the broker library's error when the broker refuses (e.g. 406
        for an exchange declared with other properties);
        :class:`~tavrida.exceptions.QueueMismatch` for a queue that exists
        with another type or arguments (a classic queue declared as quorum),
        IncorrectAMQPConfig for quorum queues off RabbitMQ.
        """
        queues = topology.queues
        if self.holds_delays:
            queues += tuple(delay.name for delay in topology.delays)
        arguments = {name: topology.queue_arguments(name) for name in queues}
        if topology.queue_type != "classic" and not self._context.is_amqp:
            raise exceptions.IncorrectAMQPConfig(
                reason=f"queue_type {topology.queue_type!r} is a RabbitMQ feature; "
                       f"{self._context.config.scheme}:// has classic queues only")
        declarations = self.declarations
        with self._lock:
            previous = {name: declarations.queue_arguments.get(name) for name in arguments}
            declarations.queue_arguments.update(arguments)

        def remember() -> None:
            declarations.exchanges.update(dict.fromkeys(topology.exchanges))
            declarations.queues.update(dict.fromkeys(queues))
            declarations.bindings.update(dict.fromkeys(topology.bindings))

        try:
            self._link.with_connection(
                lambda channel: declarations.declare_on(channel, topology.exchanges, queues,
                                                        topology.bindings),
                remember)
        except amqp.PreconditionFailed as exc:
            with self._lock:
                for name, value in previous.items():
                    if name not in declarations.queues:
                        declarations.queue_arguments.pop(name, None)
                    elif value is not None:
                        declarations.queue_arguments[name] = value
                self._link.reopen_control()
            if "for queue" not in str(exc):
                raise  # an exchange of another kind: the broker's error as it is
            queue, reason = _refused(topology, exc)
            raise exceptions.QueueMismatch(queue=queue, reason=reason) from exc

    def declare_reply_queue(self, queue: str, bindings: Iterable[Binding]) -> None:
        """Declare a private queue that goes away with this transport.

        RabbitMQ: exclusive and auto-delete, so the broker deletes it when the
        connection closes, however the process ends. Redis and memory: deleted
        by ``close()`` (a crashed process leaves it behind). Declared again on
        reconnect (:meth:`_declare_reply_again`): on RabbitMQ messages sent to
        it while the connection is down are lost with it; on Redis its list
        and bindings stay, so they wait there and are delivered after the
        reconnect. The exchanges named by ``bindings`` are declared if missing;
        ``Binding.queue`` is ignored: bindings go to ``queue``.

        Raises :class:`~tavrida.exceptions.QueueLocked` when another connection
        holds ``queue`` (RabbitMQ: another client's exclusive queue).
        """
        bindings = tuple(bindings)

        def remember() -> None:
            self.declarations.reply_queues[queue] = bindings

        try:
            self._link.with_connection(
                lambda channel: self.declarations.declare_reply_on(channel, queue, bindings),
                remember)
        except amqp.ResourceLocked as exc:
            # py-amqp has already reopened the channel the broker closed.
            raise exceptions.QueueLocked(
                queue=queue,
                reason=f"another connection holds it as its exclusive queue (another client "
                       f"running with this reply queue name?); give each client a reply "
                       f"queue of its own (RabbitMQ: {exc})") from exc

    def queue_size(self, queue: str) -> Optional[int]:
        """Messages ready in ``queue``; None when it does not exist (RabbitMQ)."""
        is_amqp = self._context.is_amqp

        def action(channel: Any) -> Optional[int]:
            if not is_amqp:
                # Redis has no empty-queue object: a passive declare would say 404.
                count: int = channel.queue_declare(queue=queue, passive=False,
                                                   auto_delete=False).message_count
                return count
            try:
                count = channel.queue_declare(queue=queue, passive=True).message_count
                return count
            except amqp.NotFound:
                return None  # py-amqp has already reopened the channel

        return self._link.with_connection(action, lambda: None)

    def delete(self, exchanges: List[str], queues: List[str]) -> None:
        """Delete queues, then exchanges, and forget them (missing ones are fine)."""
        context = self._context
        with self._lock:
            self._consumers.cancel_queues(queues)
            self.declarations.forget(queues, exchanges)

            def action(channel: Any) -> None:
                if context.compat.private:
                    delete_broker_bindings(channel, queues)  # Redis: other connections' too
                elif not context.is_amqp:
                    for name in queues:  # what kombu's delete would leave in an unbound queue
                        channel.queue_purge(queue=name)
                for name in queues:
                    channel.queue_delete(queue=name)
                for name in exchanges:
                    channel.exchange_delete(exchange=name)

            self._link.with_connection(action, lambda: None)

    def declare_all(self, control: Any) -> None:
        """Declare everything remembered on a new connection (lock held), reply queues too."""
        self.declarations.declare_all(control)
        for queue, bindings in list(self.declarations.reply_queues.items()):
            self._declare_reply_again(control, queue, bindings)

    def _declare_reply_again(self, control: Any, queue: str,
                             bindings: Tuple[Binding, ...]) -> None:
        """Declare a reply queue again after a reconnect; on RabbitMQ under a fresh name.

        The old name is unsafe on RabbitMQ: the broker refuses it while the
        client's previous connection still holds it (405 RESOURCE_LOCKED),
        and in a cluster the nodes that clean up after a node that went down
        may delete a queue of that name declared again meanwhile, bindings
        and all, telling no consumer (rabbitmq-server #6271, #9798). Answers
        find the queue by its binding (the client's service name), not by
        its name. A queue without bindings (found by its name only) keeps it,
        and takes a fresh one only when the name is held. Redis and memory
        keep the name (and the answers it holds: sent while the client
        reconnects, they wait in its list).
        """
        if not self._context.is_amqp or not bindings:
            try:
                self.declarations.declare_reply_on(control, queue, bindings)
                return
            except amqp.ResourceLocked:
                pass  # py-amqp has already reopened the channel the broker closed
        fresh = f"{queue.partition('~')[0]}~{uuid.uuid4().hex[:8]}"
        # Warned: answers it held, or sent before the new one is bound, are lost (their
        # callers time out; a service dead-letters the request of an answer no queue took).
        LOG.warning("reply queue %s went with the lost connection (RabbitMQ deletes an "
                    "exclusive queue with it): answers in it or sent meanwhile are lost; "
                    "declared again as %s (a fresh name after a reconnect)", queue, fresh)
        self.declarations.declare_reply_on(control, fresh, bindings)
        self.declarations.rename_reply_queue(queue, fresh)
        self._consumers.rename(queue, fresh)

    def check_topology(self, control: Any, generation: int) -> None:
        """Declare again what the broker lost while connected; call with the lock held.

        RabbitMQ: a consumer the broker cancelled (its queue was deleted)
        -- its queue, the other queues and every binding are declared again
        and it consumes again on its channel. Redis and kombu's memory
        transport tell nobody: every ``topology_check_interval`` seconds
        the bindings are compared with the broker's tables, and declared
        again when one is missing (a deleted queue, a Redis restarted
        without persistence under a live connection, a FLUSHALL).
        """
        consumers = self._consumers
        declarations = self.declarations
        resume = consumers.resume
        if self._context.is_amqp:
            if not resume:
                return
        else:
            now = time.monotonic()
            if now < declarations.next_check or not consumers.consumers:
                return
            declarations.next_check = now + self._topology_check_interval
            missing = declarations.missing(control)
            if not missing:
                return
            forget_bindings(control, missing)
        consumers.take_resume()
        LOG.warning("queues or bindings on %s disappeared (%s); declaring them again",
                    self._context.config.safe_url,
                    ", ".join(sorted({c.queue for c in resume})) or "bindings")
        declarations.declare_all(control)
        for queue, bindings in declarations.reply_queues.items():
            declarations.declare_reply_on(control, queue, bindings)
        for consumer in resume:
            if consumer in consumers.consumers and consumer.channel is not None:
                consumers.basic_consume(consumer, consumer.channel, generation)


def _refused(topology: Topology, exc: BaseException) -> Tuple[str, str]:
    """The queue RabbitMQ refused to declare (406) and what to do about it."""
    text = str(exc)
    match = re.search(r"for queue '([^']*)'", text)
    queue = match.group(1) if match else ", ".join(topology.queues)
    if topology.queue_type == "quorum":
        advice = ("it exists as a classic queue (tavrida 1.0's kind, or declared before "
                  "queue_type = quorum) or with other quorum settings; a queue's type and "
                  "arguments never change: quorum queues need a new queue name (or delete "
                  "the old queue once it is drained)")
    else:
        advice = ("it exists with another type or other arguments (a quorum queue?); "
                  "declare it as it was (queue_type = quorum), or use another name")
    return queue, f"{advice} (RabbitMQ: {text})"

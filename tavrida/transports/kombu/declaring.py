"""Declarations on the consuming connection, remembered for reconnects.

Exchanges and queues are declared with kombu's public ``Exchange.declare``
and ``Queue.declare`` (the tavrida 1.0 properties exactly); bindings with
``Channel.queue_bind``. kombu's ``maybe_declare`` is not used: it caches
what it declared per connection, and the adapter must declare again what a
broker lost under a live connection (see ``_check_topology``).

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
from typing import Any, Iterable, Optional, Tuple

import amqp

from tavrida import exceptions
from tavrida.transports.base import Binding, Topology
from tavrida.transports.kombu.connector import REDIS_SCHEMES
from tavrida.transports.kombu.heartbeat import KombuHeartbeats

LOG = logging.getLogger(__name__)


class KombuDeclarations(KombuHeartbeats):
    """The declaring part of :class:`~tavrida.transports.kombu.KombuTransport`."""

    @property
    def holds_delays(self) -> bool:  # type: ignore[override]
        """RabbitMQ (TTL queues) and Redis (:mod:`.redis_delays`); not kombu's memory."""
        return self._is_amqp or (self._config.scheme in REDIS_SCHEMES and self._compat.private)

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
        if topology.queue_type != "classic" and not self._is_amqp:
            raise exceptions.IncorrectAMQPConfig(
                reason=f"queue_type {topology.queue_type!r} is a RabbitMQ feature; "
                       f"{self._config.scheme}:// has classic queues only")
        with self._lock:
            previous = {name: self._declarations.queue_arguments.get(name) for name in arguments}
            self._declarations.queue_arguments.update(arguments)

        declarations = self._declarations

        def remember() -> None:
            declarations.exchanges.update(dict.fromkeys(topology.exchanges))
            declarations.queues.update(dict.fromkeys(queues))
            declarations.bindings.update(dict.fromkeys(topology.bindings))

        try:
            self._with_connection(
                lambda channel: declarations.declare_on(channel, topology.exchanges, queues,
                                                 topology.bindings),
                remember)
        except amqp.PreconditionFailed as exc:
            with self._lock:
                for name, value in previous.items():
                    if name not in self._declarations.queues:
                        self._declarations.queue_arguments.pop(name, None)
                    elif value is not None:
                        self._declarations.queue_arguments[name] = value
                self._reopen_control()
            if "for queue" not in str(exc):
                raise  # an exchange of another kind: the broker's error as it is
            queue, reason = _refused(topology, exc)
            raise exceptions.QueueMismatch(queue=queue, reason=reason) from exc

    def _reopen_control(self) -> None:
        """A new control channel for the one the broker closed; call with ``_lock`` held."""
        if self._conn is None:
            return
        try:
            self._control = self._connector.channel(self._conn)
        except self._connection_errors + self._channel_errors as exc:
            self._lost(exc)  # the next operation reconnects

    def declare_reply_queue(self, queue: str, bindings: Iterable[Binding]) -> None:
        """Declare a private queue that goes away with this transport.

        RabbitMQ: exclusive and auto-delete, so the broker deletes it when the
        connection closes, however the process ends. Redis and memory: deleted
        by :meth:`close` (a crashed process leaves it behind). Messages sent to
        it while the connection is down are lost; it is declared again on
        reconnect. The exchanges named by ``bindings`` are declared if missing;
        ``Binding.queue`` is ignored: bindings go to ``queue``.

        Raises :class:`~tavrida.exceptions.QueueLocked` when another connection
        holds ``queue`` (RabbitMQ: another client's exclusive queue).
        """
        bindings = tuple(bindings)

        def remember() -> None:
            self._declarations.reply_queues[queue] = bindings

        try:
            self._with_connection(
                lambda channel: self._declarations.declare_reply_on(channel, queue, bindings),
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

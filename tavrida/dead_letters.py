"""Dead letters: a message nobody can handle, copied aside with the reason.

The copy keeps the original bytes and headers and adds why
(:data:`~tavrida.headers.DEAD_LETTER_REASON`) and where it came from; it
goes through the default exchange to the server's ``<queue>.dead`` queue.
:class:`DeadLetters` is one server's (see the guarantees in :mod:`tavrida.server`).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Mapping, Optional

from tavrida import exceptions
from tavrida import headers as header_names
from tavrida.observability.hooks import HookList
from tavrida.transports.base import Delivery, OutgoingEnvelope, Transport

# Logged as the server: its records stay where operators look for them.
LOG = logging.getLogger("tavrida.server")

#: Header of a dead letter whose original headers could not be copied: why.
DEAD_LETTER_DROPPED_HEADER = header_names.DEAD_LETTER_DROPPED


class DeadLetters:
    """Copies a server's unhandleable messages to its dead-letter ``queue``."""

    def __init__(self, transport: Transport, queue: str, hooks: HookList) -> None:
        self.transport = transport
        #: The dead-letter queue (``<queue>.dead``).
        self.queue = queue
        self._hooks = hooks
        #: Called with the reason of every dead letter sent (the soak tests count them).
        self.observers: List[Callable[[str], None]] = []

    def send(self, delivery: Delivery, reason: str,
             extra: Optional[Mapping[str, Any]] = None) -> None:
        """Copy the original bytes and headers to the dead-letter queue with the reason.

        Broker trouble propagates (the server then requeues the original).
        """
        why: Dict[str, Any] = {header_names.DEAD_LETTER_REASON: reason,
                               header_names.DEAD_LETTER_QUEUE: delivery.queue,
                               header_names.DEAD_LETTER_EXCHANGE: delivery.exchange or "",
                               header_names.DEAD_LETTER_ROUTING_KEY: delivery.routing_key or ""}
        original = delivery.headers or {}
        if header_names.ATTEMPTS in original and not delivery.exchange:
            # A retried copy came through the default exchange; it says where it was first sent.
            for name in (header_names.DEAD_LETTER_EXCHANGE, header_names.DEAD_LETTER_ROUTING_KEY):
                if name in original:
                    why[name] = original[name]
        why.update(extra or {})
        properties = delivery.properties or {}
        envelope = OutgoingEnvelope("", self.queue, bytes(delivery.body or b""),
                                    {**original, **why},
                                    content_type=properties.get("content_type"),
                                    content_encoding=properties.get("content_encoding"),
                                    persistent=True)
        try:
            self.transport.publish(envelope).wait()
        except exceptions.PublishFailed as exc:
            if not exc.unencodable:
                raise
            # Its headers cannot travel again (too large for a frame, a type the broker
            # library cannot write): the copy keeps the body and tavrida's headers only.
            # (Text that is not UTF-8, e.g. a routing key, is escaped so that it encodes.)
            why[DEAD_LETTER_DROPPED_HEADER] = str(exc)
            envelope.headers = {name: str(value)[:2000].encode("utf-8", "backslashreplace")
                                .decode("utf-8") for name, value in why.items()}
            self.transport.publish(envelope).wait()
        LOG.warning("dead-lettered a message from %s to %s: %s", delivery.queue, self.queue,
                    reason)
        self._hooks.dead_lettered(reason)
        for observer in self.observers:
            observer(reason)

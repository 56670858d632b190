"""The sender: turns outgoing messages into envelopes and publishes them.

One sender serves one service (or one client): it resolves exchanges
through that service's discovery, encodes with :mod:`tavrida.wire` and
hands the bytes to the transport. It is the ``postprocessor`` that 1.0's
``ServiceController(postprocessor)`` and the proxies take.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Callable, Iterable, List, Optional

from tavrida import discovery as discovery_mod
from tavrida import entry_point, exceptions, messages, wire
from tavrida.transports.base import Confirmation, OutgoingEnvelope, Transport, confirm_all

LOG = logging.getLogger(__name__)

Observer = Callable[[messages.Message], None]


class Sender:
    """Publishes the messages of one service or client.

    ``reply_exchange`` is the exchange the answers to this service's own calls
    come back on (a server's exchange, a client's reply exchange): sent in
    every call's :data:`~tavrida.headers.REPLY_EXCHANGE` header so that a
    callee needs no discovery entry for the caller.
    """

    def __init__(self, transport: Optional[Transport],
                 discovery: Optional[discovery_mod.AbstractDiscovery],
                 persistent: bool = True, source: str = "", reply_exchange: str = "") -> None:
        self.transport = transport
        self.discovery = discovery or discovery_mod.LocalDiscovery()
        self.persistent = persistent
        #: Service or client this sender speaks for (for logs).
        self.source = source
        #: Called with every message after it is published (tests capture with it).
        self.observers: List[Observer] = []
        self.reply_exchange = reply_exchange
        self._service = entry_point.parse(source).service if source else ""

    def exchange_of(self, message: messages.Message) -> str:
        """Exchange a message goes to; raises UnableToDiscover or PublisherEndpointNotFound."""
        if message.message_type == messages.NOTIFICATION:
            return self.discovery.get_local_publisher(message.source.service)
        return self._remote_exchange(message, message.destination.service)

    def _remote_exchange(self, message: messages.Message, service: str) -> str:
        try:
            return self.discovery.get_remote(service)
        except exceptions.UnableToDiscover:
            # An answer to a caller discovery does not know: the exchange its call named.
            if message.reply_exchange and message.message_type != messages.REQUEST:
                return message.reply_exchange
            raise

    def routing_key_of(self, message: messages.Message) -> str:
        if message.message_type == messages.NOTIFICATION:
            return message.source.to_routing_key()
        return message.destination.to_routing_key()

    def envelope(self, message: messages.Message) -> OutgoingEnvelope:
        """The envelope for a message: exchange, routing key, bytes, headers."""
        body, headers = wire.encode(message)
        reply_service = message.reply_to.service
        if message.message_type == messages.REQUEST and reply_service:
            reply_exchange = message.reply_exchange or (
                self.reply_exchange if reply_service == self._service else "")
            if reply_exchange:
                headers[messages.REPLY_EXCHANGE_HEADER] = reply_exchange
        # A notification nobody subscribes to is normal pub/sub: not mandatory.
        envelope = OutgoingEnvelope(self.exchange_of(message), self.routing_key_of(message),
                                    body, headers, persistent=self.persistent,
                                    mandatory=message.message_type != messages.NOTIFICATION)
        if message.expires_at is not None and math.isfinite(message.expires_at):
            # A blocking call: the broker (AMQP expiration) and the server (the header,
            # for transports without per-message TTL) drop it once its caller gave up.
            headers[messages.EXPIRES_AT_HEADER] = int(message.expires_at * 1000)
            envelope.expiration = max(0.0, message.expires_at - time.time())
        return envelope

    def publish(self, message: messages.Message) -> Confirmation:
        """Publish one message; return its :class:`~tavrida.transports.base.Confirmation`.

        Returns once the message is written: the broker's verdict comes
        through the handle (``wait()`` raises why it failed). A blocking
        call's request is published so, its caller waiting for the answer and
        the confirm together (:class:`~tavrida.replies.Replies`); a server's
        answer so, its request acked at the confirm.
        """
        envelope = self.envelope(message)
        if self.transport is None:
            raise RuntimeError(f"{self.source or 'sender'} is not connected to a transport")
        confirmation = self.transport.publish(envelope)
        if confirmation.failure() is not None:
            return confirmation  # not sent: nothing to log or observe
        if LOG.isEnabledFor(logging.DEBUG):
            LOG.debug("sent %s to %s/%s", message.message_type, envelope.exchange,
                      envelope.routing_key)
        for observer in self.observers:
            observer(message)
        return confirmation

    def send(self, message: messages.Message) -> None:
        """Publish one message; return once the broker has it, or raise why not."""
        self.publish(message).wait()

    def send_many(self, batch: Iterable[messages.Message]) -> None:
        """Publish several messages, then wait for every confirm (pipelined).

        Raises one :class:`~tavrida.exceptions.PublishFailed` naming each
        message that failed (see :func:`~tavrida.transports.base.confirm_all`).
        """
        confirm_all([self.publish(message) for message in batch])

    def heartbeat(self) -> None:
        """Keep the broker connection alive (long handlers call it)."""
        if self.transport is not None:
            self.transport.heartbeat()

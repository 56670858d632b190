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
from tavrida.transports.base import OutgoingEnvelope, Transport

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

    def send(self, message: messages.Message,
             answered: Optional[Callable[[], bool]] = None) -> None:
        """Publish one message; returns when the broker has it.

        With ``answered`` (the request of a blocking call, from
        :class:`~tavrida.replies.Replies`): returns once ``answered()`` is
        true even if its confirm has not come yet (see
        :meth:`~tavrida.transports.base.Transport.publish_request`).
        """
        envelope = self.envelope(message)
        if self.transport is None:
            raise RuntimeError(f"{self.source or 'sender'} is not connected to a transport")
        if answered is None:
            self.transport.publish(envelope)
        else:
            self.transport.publish_request(envelope, answered)
        if LOG.isEnabledFor(logging.DEBUG):
            LOG.debug("sent %s to %s/%s", message.message_type, envelope.exchange,
                      envelope.routing_key)
        for observer in self.observers:
            observer(message)

    def send_many(self, batch: Iterable[messages.Message]) -> None:
        """Publish several messages, pipelining confirms where the transport can."""
        batch = list(batch)
        if self.transport is None:
            raise RuntimeError(f"{self.source or 'sender'} is not connected to a transport")
        self.transport.publish_many([self.envelope(message) for message in batch])
        for message in batch:
            for observer in self.observers:
                observer(message)

    def heartbeat(self) -> None:
        """Keep the broker connection alive (long handlers call it)."""
        if self.transport is not None:
            self.transport.heartbeat()

"""Publisher confirms and returns: which publish an ack, nack or basic.return is about.

Confirms are pipelined: :class:`~.unconfirmed.ConfirmTracker` numbers the
publishes; acks and nacks settle one or all up to a tag; a return (every
AMQP publish is ``mandatory``) comes before its message's confirm and is
matched to the first unconfirmed publish with its exchange, routing key and
body.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from typing import Any, Callable, Deque, List, Optional, Set, Tuple

import amqp
from kombu.connection import Connection

from tavrida.config import ConnectionConfig
from tavrida.transports.base import Transport
from tavrida.transports.kombu.batch import Batch, ConfirmTimeout
from tavrida.transports.kombu.compat import Compat
from tavrida.transports.kombu.connector import Connector
from tavrida.transports.kombu.consuming_connection import ConsumingConnection
from tavrida.transports.kombu.context import KombuContext
from tavrida.transports.kombu.deadlines import ThreadState
from tavrida.transports.kombu.lifecycle import Lifecycle
from tavrida.transports.kombu.polling import Readable
from tavrida.transports.kombu.reconnect import Errors
from tavrida.transports.kombu.unconfirmed import ConfirmTracker

LOG = logging.getLogger(__name__)

#: RabbitMQ's words (406 PRECONDITION_FAILED) for a body over its ``max_message_size``.
TOO_LARGE = re.compile(r"message size (\d+) is larger than (?:configured )?max size (\d+)")


class KombuConfirms(Transport):
    """The confirms part of :class:`~tavrida.transports.kombu.KombuTransport`.

    Declares the state the publishing parts share (set by the facade).
    """

    poll_interval: float
    confirm_timeout: float
    _context: KombuContext
    #: The consuming side, asked about reply queues and its socket.
    _consuming: ConsumingConnection
    _config: ConnectionConfig
    _is_amqp: bool
    _confirms: bool
    _retry_errors: Errors
    _connection_errors: Errors
    _channel_errors: Errors
    _local: ThreadState
    _lifecycle: Lifecycle
    _connector: Connector
    _compat: Compat
    #: Polls of the publishing socket, with or without the reply queue's (the reader's).
    _confirm_poll: Readable
    _pub_poll: Readable
    #: Poll of the consuming and the publishing sockets, for deferred confirms.
    _sockets_poll: Readable
    # The publishing connection (guarded by _publish_lock).
    _publish_lock: threading.Lock
    _pub_conn: Optional[Connection]
    _pub_channel: Any
    _pub_ever_connected: bool
    _pub_confirming: bool
    _unconfirmed: ConfirmTracker
    _pub_reader: bool
    _pub_idle: List[Tuple[Batch, threading.Condition, Callable[[], bool]]]
    #: Deferred publishes waiting for their confirm, oldest first (see ``deferring``).
    _deferred: Deque[Batch]
    #: Exchanges a virtual publisher channel has recorded as topic exchanges.
    _pub_exchanges: Set[str]

    def _unrouted(self, batch: Batch, index: int) -> None:
        """Envelope ``index`` reached no queue: an Unroutable failure, or fine if not mandatory."""
        envelope = batch.envelopes[index]
        if envelope.mandatory:
            batch.fail(index, "no queue is bound with a matching key", unroutable=True)
        else:
            LOG.debug("nobody takes %s/%s: dropped", envelope.exchange, envelope.routing_key)
            batch.todo.pop(index, None)

    def _wait_for_confirms(self, batch: Batch) -> None:
        """Read the publishing connection until ``batch`` has no unconfirmed publish."""
        deadline = time.monotonic() + self.confirm_timeout
        own = self._local.deadline
        if own is not None:
            deadline = min(deadline, own)
        raw = self._connector.raw(self._pub_conn)
        while batch.inflight:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ConfirmTimeout()
            try:
                raw.drain_events(timeout=remaining)
            except socket.timeout:
                continue

    def _forget(self, batch: Batch) -> None:
        """Stop waiting for the confirms of ``batch`` (``_publish_lock`` held)."""
        self._unconfirmed.forget(batch)

    def _on_confirm(self, delivery_tag: int, multiple: bool) -> None:
        for batch, index in self._unconfirmed.resolve(delivery_tag, multiple):
            batch.todo.pop(index, None)

    def _on_nack(self, delivery_tag: int, multiple: bool) -> None:
        for batch, index in self._unconfirmed.resolve(delivery_tag, multiple):
            batch.fail(index, "the broker nacked it")

    def _on_return(self, exc: Exception, exchange: str, routing_key: str, message: Any) -> None:
        """RabbitMQ returned a message no queue took (see :meth:`ConfirmTracker.returned`)."""
        if self._confirms:
            body = message.body
            if not isinstance(body, bytes):
                body = body.encode("utf-8") if isinstance(body, str) else bytes(body)
            entry = self._unconfirmed.returned(exchange, routing_key, body)
            if entry is not None:
                self._unrouted(*entry)
                return
        LOG.warning("the broker returned a message for %s/%s (%s); it reached no queue "
                    "(without publisher confirms it cannot be told which publish it was)",
                    exchange, routing_key, exc)

    def _on_channel_error(self, batch: Optional[Batch], exc: amqp.ChannelError) -> None:
        """The broker closed the publishing channel (py-amqp has reopened it).

        ``batch``: the one publishing when it happened (None: read by a
        waiting request).
        """
        reason = f"{exc.reply_code} {exc.reply_text}".strip() if exc.reply_text else str(exc)
        unconfirmed = self._unconfirmed.lose_all()
        self._pub_confirming = False
        if not self._confirms:
            # The culprit was an earlier, already returned publish: nothing to blame now.
            LOG.warning("the broker closed the publishing channel: %s", reason)
            return
        rest = [] if batch is None else [(batch, index) for index in batch.todo]
        too_large = TOO_LARGE.search(exc.reply_text or "")
        if too_large:
            # Bodies over the broker's limit can never go as they are (unencodable: the
            # server answers their caller with an Error); the others go out again.
            limit = int(too_large.group(2))
            culprits = [(owner, index) for owner, index in unconfirmed + rest
                        if len(owner.envelopes[index].body) > limit]
            for owner, index in culprits:
                owner.fail(index, reason, unencodable=True)
            if culprits:
                return
        # The broker names the missing exchange; other unconfirmed messages are innocent
        # and go out again on the fresh channel.
        culprits = [(owner, index) for owner, index in unconfirmed
                    if f"'{owner.envelopes[index].exchange}'" in (exc.reply_text or "")]
        # Nothing unconfirmed to blame: fail what is left rather than loop for ever.
        for owner, index in culprits or unconfirmed or rest:
            owner.fail(index, reason)

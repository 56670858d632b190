"""Publishing: one publisher connection, pipelined batches, unencodable and unroutable ones.

One channel in confirm mode is shared by every thread under
``_publish_lock``; messages lost with a connection or a channel are
published again (at least once). A batch holds the lock while it waits for
its confirms; the request of a blocking call does not: it publishes under
the lock and waits beside the other callers' requests, one of them reading
the confirms for all (:mod:`.shared_confirms`).
kombu's ``Producer`` is not used: it has no ``mandatory`` return matching,
and tavrida needs the raw ``basic_publish`` of the channel to pipeline
confirms.
"""

from __future__ import annotations

import copy
import logging
import socket
import time
from typing import Any, Callable, Dict, Iterable, List, Optional

import amqp

from tavrida import exceptions
from tavrida.transports.base import Confirmation, OutgoingEnvelope
from tavrida.transports.kombu.batch import Batch, ConfirmTimeout, Deferral
from tavrida.transports.kombu.compat.pyamqp import (
    UNENCODABLE,
    bytes_key,
    checked_message,
    plain_message,
)
from tavrida.transports.kombu.compat.virtual import NoRoute, check_route, strict_lookup
from tavrida.transports.kombu.confirms import KombuConfirms

LOG = logging.getLogger(__name__)


class KombuPublishing(KombuConfirms):
    """The publishing part of :class:`~tavrida.transports.kombu.KombuTransport`."""

    def publish(self, envelope: OutgoingEnvelope) -> Confirmation:
        """Publish one message; with confirms, return once the broker confirmed it.

        Its handle is failed on a nack, a missing exchange (RabbitMQ), a
        confirm timeout, or when reconnect attempts run out.
        """
        try:
            self._publish([envelope])
        except exceptions.PublishFailed as exc:
            return Confirmation.failed(envelope, exc)
        return Confirmation.confirmed(envelope)

    def publish_many(self, envelopes: Iterable[OutgoingEnvelope]) -> None:
        """Publish all, then wait for all confirms (pipelined).

        Messages lost with a connection or a channel are published again
        (at-least-once: a message whose confirm was lost may arrive twice).
        Raises PublishFailed naming every message that failed -- its
        ``exc.failed`` maps their indexes to reasons, ``exc.envelopes``
        lists them; all the others were confirmed. A ``mandatory`` message
        no queue took is such a failure (only those: ``Unroutable``); giving
        up on an unreachable broker (after ``publish_timeout`` or this
        thread's :meth:`deadline`) raises PublishConnectionFailed.
        """
        self._publish(list(envelopes))

    def _publish(self, envelopes: List[OutgoingEnvelope],
                 request: Optional[Callable[[Batch], None]] = None) -> None:
        """Publish a batch holding the lock, or one request by ``request(batch)``.

        ``request`` is how a blocking call's request waits beside the others
        (:mod:`.shared_confirms`).
        """
        batch = Batch(envelopes)
        if not batch.envelopes:
            return
        if self._lifecycle.closed:
            for index in list(batch.todo):
                batch.fail(index, "the transport is closed")
            raise batch.error()
        deferral = None
        if request is None and len(batch.envelopes) == 1:
            deferral = self._local.deferral
        with self.deadline(self._config.publish_timeout):
            try:
                self._consuming.check_reply_connection()
                if deferral is not None:
                    self._local.deferral = None  # the next publish only
                    self._publish_deferred(batch, deferral)
                elif request is not None:
                    request(batch)
                else:
                    lock = self._publish_lock
                    self._context.take(lock)  # (not _holding(): this runs for every publish)
                    try:
                        self._publish_batch(batch)
                    finally:
                        self._forget(batch)
                        if self._pub_idle:
                            self._wake_waiting(handover=False)  # it read their confirms
                        lock.release()
            except exceptions.ConnectionFailed as exc:
                batch.connection_failed = exc
                for index in list(batch.todo):
                    batch.fail(index, exc.kwargs.get("reason", str(exc)))
        if batch.failed:
            raise batch.error()

    def _publish_deferred(self, batch: Batch, deferral: Deferral) -> None:
        """Write one message and leave its confirm to drain() (see :mod:`.deferring`).

        Not deferred when it failed or was confirmed while it was written:
        :meth:`_publish` then raises or returns as for any publish.
        """
        with self._context.holding(self._publish_lock):
            self._send_request(batch)
            if batch.todo:
                batch.on_confirmed = deferral.on_confirmed
                batch.deadline = time.monotonic() + self.confirm_timeout
                self._deferred.append(batch)
                deferral.taken = True

    def _wake_waiting(self, handover: bool) -> None:
        """Wake the waiting requests settled or answered, and one more to read if ``handover``."""
        for batch, wake, answered in self._pub_idle:
            if not batch.todo or answered():
                wake.notify()
            elif handover:
                wake.notify()
                handover = False

    def _read_publisher_frame(self, raw: Any) -> bool:
        """Read what the publishing connection holds (``_publish_lock`` held); False: stop.

        A lost connection is dropped (its unconfirmed publishes go out
        again); a channel error settles what it names.
        """
        try:
            raw.drain_events(timeout=self.poll_interval)
        except socket.timeout:
            return False
        except self._retry_errors as exc:
            LOG.warning("publishing connection to %s lost (%s: %s)",
                        self._config.safe_url, type(exc).__name__, exc)
            self._drop_publisher()
            return False
        except amqp.ChannelError as exc:
            self._on_channel_error(None, exc)
            return False
        return True

    def _publish_batch(self, batch: Batch) -> None:
        def attempt() -> None:
            while batch.todo:
                self._publish_round(batch)

        try:
            self._context.retry(attempt, not self._pub_ever_connected, "publishing to",
                        once_if_interrupted=True)
        except ConfirmTimeout:
            self._drop_publisher()
            for index in list(batch.todo):
                batch.fail(index, "no confirm from the broker in time (confirm_timeout "
                                  f"{self.confirm_timeout}s, or the publish deadline)")
        except exceptions.ConnectionFailed:
            self._drop_publisher()
            raise
        except Exception as exc:  # whatever it is, every message gets its reason
            self._drop_publisher()
            reason = f"{type(exc).__name__}: {exc}"
            for index in list(batch.todo):
                batch.fail(index, reason)

    def _publisher_channel(self) -> Any:
        """The confirm-mode publishing channel, (re)connecting once if needed."""
        conn = self._pub_conn
        if conn is None or not conn.connected:
            self._drop_publisher()
            self._pub_conn = conn = self._connector.open("publish")
            self._pub_ever_connected = True
        if self._pub_channel is None:
            self._pub_channel = self._connector.channel(conn)
            if self._is_amqp:
                events = self._pub_channel.events
                events["basic_ack"].add(self._on_confirm)
                events["basic_nack"].add(self._on_nack)
                # Mandatory messages no queue takes come back before their confirm.
                events["basic_return"].add(self._on_return)
            elif self._compat.private:
                strict_lookup(self._pub_channel)
        if self._confirms and not self._pub_confirming:
            self._pub_channel.confirm_select()
            self._pub_confirming = True
            self._unconfirmed.reset()
        return self._pub_channel

    def _drop_publisher(self) -> None:
        conn, self._pub_conn, self._pub_channel = self._pub_conn, None, None
        self._pub_confirming = False
        self._unconfirmed.lose_all()
        self._pub_exchanges.clear()
        if conn is not None:
            try:
                conn.collect()
            except Exception:  # the connection is dead anyway: nothing to report
                LOG.debug("ignoring error while dropping a connection", exc_info=True)

    def _publish_round(self, batch: Batch) -> None:
        """Publish every pending envelope once and wait for their confirms.

        Connection errors propagate (the caller reconnects and calls again);
        a channel error fails the envelopes it names and leaves the others
        pending for the next round on a fresh confirm channel.
        """
        try:
            channel = self._publisher_channel()
        except self._retry_errors:
            self._drop_publisher()
            raise
        try:
            for index in list(batch.todo):
                if index not in batch.todo:
                    continue  # failed meanwhile (nack read while publishing)
                self._send(channel, batch, index)
            self._wait_for_confirms(batch)
        except self._retry_errors:
            self._drop_publisher()
            raise
        except amqp.ChannelError as exc:
            self._on_channel_error(batch, exc)

    def _send(self, channel: Any, batch: Batch, index: int) -> None:
        """Write envelope ``index`` and register it for its confirm (``_publish_lock`` held)."""
        envelope = batch.envelopes[index]
        try:
            message = self._prepare(channel, envelope)
            if self._is_amqp:
                # Always mandatory: a return is how a notification nobody takes is seen.
                channel.basic_publish(message, exchange=envelope.exchange,
                                      routing_key=envelope.routing_key, mandatory=True)
            else:
                channel.basic_publish(message, exchange=envelope.exchange,
                                      routing_key=envelope.routing_key)
        except UNENCODABLE as exc:
            # Raised while encoding, before anything was written: only this one fails.
            batch.fail(index, f"cannot encode it: {type(exc).__name__}: {exc}",
                       unencodable=True)
            return
        except NoRoute:
            # Raised by the routing lookup, before anything was stored.
            self._unrouted(batch, index)
            return
        if self._confirms:
            # Registered after the write: acks read inside basic_publish are older.
            self._unconfirmed.register(batch, index)
        else:
            batch.todo.pop(index, None)

    def _send_request(self, batch: Batch) -> None:
        """Publish a request once, reconnecting per the policy (``_publish_lock`` held)."""
        def attempt() -> None:
            try:
                channel = self._publisher_channel()
                self._send(channel, batch, 0)
            except self._retry_errors:
                self._drop_publisher()
                raise

        try:
            self._context.retry(attempt, not self._pub_ever_connected, "publishing to",
                        once_if_interrupted=True)
        except exceptions.ConnectionFailed:
            self._drop_publisher()
            raise
        except amqp.ChannelError as exc:
            self._on_channel_error(batch, exc)
        except Exception as exc:  # whatever it is, the request gets its reason
            self._drop_publisher()
            batch.fail(0, f"{type(exc).__name__}: {exc}")

    def _prepare(self, channel: Any, envelope: OutgoingEnvelope) -> Any:
        if not self._is_amqp and envelope.exchange not in self._pub_exchanges:
            # Virtual transports route in this process and treat an exchange they
            # have not seen as "direct": record it as topic (no broker round trip).
            if envelope.exchange:
                channel.exchange_declare(exchange=envelope.exchange, type="topic",
                                         durable=True, auto_delete=False)
            self._pub_exchanges.add(envelope.exchange)
        properties: Dict[str, Any] = {"delivery_mode": 2 if envelope.persistent else 1}
        if envelope.expiration is not None:
            # AMQP per-message TTL: milliseconds, as a string (virtual transports ignore it).
            properties["expiration"] = str(int(envelope.expiration * 1000))
        if not self._is_amqp:
            headers = dict(envelope.headers)
            if not self._compat.private:
                check_route(channel, envelope.exchange, envelope.routing_key)
                headers = copy.deepcopy(headers)  # kombu's memory stores this very object
            return channel.prepare_message(bytes(envelope.body), None, envelope.content_type,
                                           envelope.content_encoding, headers, properties)
        headers = dict(envelope.headers)
        try:  # one test for all keys: bench.profiling "cast, tavrida: client" calls/message
            ascii_keys = "".join(headers).isascii()
        except TypeError:  # a key that is not text
            ascii_keys = False
        if not ascii_keys:
            for key in headers:
                if isinstance(key, str) and not key.isascii():
                    # Keys received as text with surrogates (see text_key) go out as bytes.
                    headers = {bytes_key(key): value for key, value in headers.items()}
                    break
        message = checked_message if self._compat.private else plain_message
        return message(channel, bytes(envelope.body), envelope.content_type,
                       envelope.content_encoding, headers, properties)


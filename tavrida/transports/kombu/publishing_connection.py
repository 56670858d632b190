"""The publishing connection: :class:`PublishingConnection`, its channel and its publishes.

One channel in confirm mode is shared by every thread under the object's
own lock (``_publish_lock``). :meth:`PublishingConnection.publish` returns a
:class:`~tavrida.transports.confirmation.Confirmation` and never raises for
a message's failure. With confirms over plain TCP (sockets that can be
polled) it only writes the message and registers it for its confirm: the
handle is a pending :class:`~.kombu_confirmation.KombuConfirmation`, whose
waiters read the confirms for each other (:mod:`.confirm_reader`).
Elsewhere (Redis, kombu's memory, confirms off, amqps) the publish is done
in full, as ever, and the handle is settled at once. Messages lost with a
connection or a channel before their confirm are published again (at
least once).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any, Iterable, Optional, Protocol, Set

import amqp

from tavrida import exceptions
from tavrida.transports.base import OutgoingEnvelope
from tavrida.transports.confirmation import Confirmation
from tavrida.transports.kombu.batch import CONFIRM_LATE, Batch, ConfirmTimeout
from tavrida.transports.kombu.compat.pyamqp import UNENCODABLE
from tavrida.transports.kombu.compat.pyamqp_publish import publish as write_publish
from tavrida.transports.kombu.compat.virtual import NoRoute, strict_lookup
from tavrida.transports.kombu.confirm_reader import ConfirmReader
from tavrida.transports.kombu.confirm_tracker import ConfirmTracker, unrouted
from tavrida.transports.kombu.context import KombuContext
from tavrida.transports.kombu.deadlines import Deadline, take
from tavrida.transports.kombu.kombu_confirmation import KombuConfirmation
from tavrida.transports.kombu.outgoing_message import prepare_message
from tavrida.transports.kombu.polling import CAN_POLL, Readable
from tavrida.transports.kombu.severing import sever

LOG = logging.getLogger(__name__)


class Consuming(Protocol):
    """What the publishing side needs of the consuming connection (and nothing more)."""

    def reply_fd(self) -> int:
        """The consuming socket while it reads reply queues, else -1."""

    def frame_waits(self) -> bool:
        """A whole frame waits read ahead: input its socket's poll does not show."""

    def read_answers(self) -> bool:
        """One short read, handing out answers; False when another thread reads."""

    def check_reply_connection(self) -> None:
        """Before a request goes out: its reply queue exists (reconnect if not)."""

    def reply_connection_ok(self) -> bool:
        """No need for :meth:`check_reply_connection` now (never blocks)."""


class PublishingConnection:
    """The publishing connection, its confirm channel and the publishes awaiting confirms.

    Owns its lock (``_publish_lock``), the kombu connection and channel and
    the :class:`~.confirm_tracker.ConfirmTracker`. Safe from any thread.
    """

    def __init__(self, context: KombuContext, consuming: Consuming,
                 confirm_timeout: float, poll_interval: float) -> None:
        self.context = context
        self.consuming = consuming
        #: Longest a publish waits for its confirm.
        self.confirm_timeout = confirm_timeout
        #: Longest a pending publish waits for it: nor past the publish timeout either.
        self._confirm_in = min(confirm_timeout, context.config.publish_timeout or confirm_timeout)
        #: Longest one read of the socket blocks (bounds how late a waiter notices).
        self.poll_interval = poll_interval
        self._publish_lock = threading.Lock()
        #: The lock guarding the connection, its channel and the tracker (the same).
        self.lock = self._publish_lock
        self._conn: Any = None
        self._channel: Any = None
        self._ever_connected = False
        self._confirming = False
        #: The channel passed :meth:`_publisher_channel`'s checks, not dropped or closed
        #: since: a write uses it as it is (one check per run of writes).
        self._ready = False
        self.tracker = ConfirmTracker(context.confirms)
        #: Exchanges a virtual publisher channel has recorded as topic exchanges.
        self._exchanges: Set[str] = set()
        #: Confirms are read by the waiters, the lock free while they wait.
        self.pending = context.confirms and not context.config.ssl and CAN_POLL
        self.reader = ConfirmReader(self)
        #: Whether the publishing socket has input (before a write; lock held).
        self._has_input = Readable()

    @property
    def raw(self) -> Any:
        """The transport-level connection (no implicit reconnect), None if none."""
        return self.context.connector.raw(self._conn)

    # ------------------------------------------------------------------ publishing

    def publish(self, envelope: OutgoingEnvelope) -> Confirmation:
        """Publish one message; its handle carries every failure (see the module)."""
        context = self.context
        batch = Batch([envelope])
        if context.lifecycle.closed:
            batch.fail(0, "the transport is closed")
            return Confirmation.failed(envelope, batch.error())
        handle: Optional[KombuConfirmation] = None
        lock = self._publish_lock
        # A run of writes goes on (the channel as checked, still so once the lock is taken
        # at once; no reply queue to declare again; no confirm to read): nothing can block,
        # so no deadline block; a reconnect sets one up (bench.profiling "bulk").
        fast = self._ready and (self.pending or not context.confirms) \
            and self.consuming.reply_connection_ok() and lock.acquire(blocking=False)
        if fast and not self._ready:
            fast = False
            lock.release()
        try:
            if fast:
                handle = self._write(batch)
            else:
                # Deadline(), take() direct: a call each (bench.profiling "cast, tavrida").
                with Deadline(context.local, context.config.publish_timeout):
                    if context.is_amqp:
                        self.consuming.check_reply_connection()
                    take(context.local, lock, context.connector.failed)
                    handle = self._write(batch)
        except exceptions.ConnectionFailed as exc:
            batch.connection_failed = exc
            for index in list(batch.todo):
                batch.fail(index, exc.kwargs.get("reason", str(exc)))
        if handle is not None:
            return handle
        if batch.failed:
            return Confirmation.failed(envelope, batch.error())
        return Confirmation.confirmed(envelope)

    def _write(self, batch: Batch) -> Optional[KombuConfirmation]:
        """Publish ``batch`` holding the lock (released here); its handle if pending."""
        handle: Optional[KombuConfirmation] = None
        try:
            if self.pending:
                self.send_request(batch)
                if batch.todo:
                    own, bound = self.context.local.deadline, time.monotonic() + self._confirm_in
                    batch.deadline = own if own is not None and own < bound else bound
                    handle = KombuConfirmation(batch.envelopes[0], batch, self)
            else:
                self._publish_batch(batch)
        finally:
            if handle is None and batch.inflight:  # a test, not a call: bench.profiling "bulk"
                self.tracker.forget(batch)
            if self.reader.idle:
                self.reader.wake(handover=False)  # it read their confirms
            self._publish_lock.release()
        return handle

    def send_request(self, batch: Batch) -> None:
        """Write a one-message batch once, reconnecting per the policy (lock held)."""
        def attempt() -> None:
            try:
                self._send(self._publisher_channel(), batch, 0)
            except self.context.retry_errors:
                self.drop()
                raise

        try:
            self.context.retry(attempt, not self._ever_connected, "publishing to",
                               once_if_interrupted=True,
                               timeout=self.context.config.publish_timeout)
        except exceptions.ConnectionFailed:
            self.drop()
            raise
        except amqp.ChannelError as exc:
            self.channel_error(batch, exc)
        except Exception as exc:  # whatever it is, the request gets its reason
            self.drop()
            batch.fail(0, f"{type(exc).__name__}: {exc}")

    def resend(self, batch: Batch) -> None:
        """Write again a publish lost before its confirm (lock held); failing it if in vain."""
        try:
            with self.context.deadline(self.context.config.publish_timeout):
                self.send_request(batch)
        except exceptions.ConnectionFailed as exc:
            batch.connection_failed = exc
            batch.fail(0, exc.kwargs.get("reason", str(exc)))
        batch.deadline = time.monotonic() + self.confirm_timeout

    def time_out(self, batch: Batch) -> None:
        """No confirm in time: ``batch`` fails, the others go out anew (lock held)."""
        batch.fail(0, CONFIRM_LATE.format(self.confirm_timeout))
        self.tracker.forget(batch)
        self.drop()

    def _publish_batch(self, batch: Batch) -> None:
        """Publish and wait for the confirms, holding the lock (no pending handles)."""
        def attempt() -> None:
            while batch.todo:
                self._publish_round(batch)

        try:
            self.context.retry(attempt, not self._ever_connected, "publishing to",
                               once_if_interrupted=True,
                               timeout=self.context.config.publish_timeout)
        except ConfirmTimeout:
            self.drop()
            for index in list(batch.todo):
                batch.fail(index, CONFIRM_LATE.format(self.confirm_timeout))
        except exceptions.ConnectionFailed:
            self.drop()
            raise
        except Exception as exc:  # whatever it is, every message gets its reason
            self.drop()
            reason = f"{type(exc).__name__}: {exc}"
            for index in list(batch.todo):
                batch.fail(index, reason)

    def _publish_round(self, batch: Batch) -> None:
        """Publish every pending envelope once and wait for their confirms.

        Connection errors propagate (the caller reconnects, calls again); a channel
        error fails the envelopes it names, the others wait for the next round.
        """
        retry_errors = self.context.retry_errors
        try:
            channel = self._publisher_channel()
        except retry_errors:
            self.drop()
            raise
        try:
            for index in list(batch.todo):
                if index in batch.todo:  # else failed meanwhile (nack read while publishing)
                    self._send(channel, batch, index)
            if batch.inflight:
                self._wait_for_confirms(batch)
        except retry_errors:
            self.drop()
            raise
        except amqp.ChannelError as exc:
            self.channel_error(batch, exc)

    def _wait_for_confirms(self, batch: Batch) -> None:
        """Read the connection until ``batch`` has no unconfirmed publish (lock held)."""
        deadline = time.monotonic() + self.confirm_timeout
        own = self.context.local.deadline
        if own is not None:
            deadline = min(deadline, own)
        raw = self.raw
        while batch.inflight:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ConfirmTimeout()
            try:
                raw.drain_events(timeout=remaining)
            except socket.timeout:
                continue

    def _send(self, channel: Any, batch: Batch, index: int) -> None:
        """Write envelope ``index`` and register it for its confirm (lock held)."""
        envelope = batch.envelopes[index]
        context = self.context
        try:
            message = prepare_message(channel, envelope, context.is_amqp,
                                      context.compat.private, self._exchanges)
            # Always mandatory on AMQP: a return is how a notification nobody takes is seen.
            if not context.is_amqp:
                channel.basic_publish(message, exchange=envelope.exchange,
                                      routing_key=envelope.routing_key)
            elif context.compat.private:
                write_publish(channel, self._has_input, message, envelope.exchange,
                              envelope.routing_key, True)
            else:
                channel.basic_publish(message, exchange=envelope.exchange,
                                      routing_key=envelope.routing_key, mandatory=True)
        except UNENCODABLE as exc:
            # Raised while encoding, before anything was written: only this one fails.
            batch.fail(index, f"cannot encode it: {type(exc).__name__}: {exc}",
                       unencodable=True)
            return
        except NoRoute:
            # Raised by the routing lookup, before anything was stored.
            unrouted(batch, index)
            return
        if context.confirms:
            # Registered after the write: acks read inside basic_publish are older.
            self.tracker.register(batch, index)
        else:
            batch.todo.pop(index, None)

    # ------------------------------------------------------------------ the connection

    def _publisher_channel(self) -> Any:
        """The confirm-mode publishing channel, (re)connecting once if needed."""
        if self._ready:  # checked already for this run of writes (bench.profiling "bulk")
            return self._channel
        context = self.context
        conn = self._conn
        if conn is None or not conn.connected:
            self.drop()
            self._conn = conn = context.connector.open("publish")
            self._ever_connected = True
        if self._channel is None:
            self._channel = context.connector.channel(conn)
            if context.is_amqp:
                events = self._channel.events
                events["basic_ack"].add(self.tracker.on_ack)
                events["basic_nack"].add(self.tracker.on_nack)
                # Mandatory messages no queue takes come back before their confirm.
                events["basic_return"].add(self.tracker.on_return)
            elif context.compat.private:
                strict_lookup(self._channel)
        if context.confirms and not self._confirming:
            self._channel.confirm_select()
            self._confirming = True
            self.tracker.reset()
        self._ready = True
        return self._channel

    def channel_error(self, batch: Optional[Batch], exc: amqp.ChannelError) -> None:
        """The broker closed the channel: settle what it names (lock held)."""
        self._confirming = self._ready = False
        self.tracker.on_channel_error(batch, exc)

    def drop(self) -> None:
        """Forget the connection (lock held): its unconfirmed publishes go out again."""
        conn, self._conn, self._channel = self._conn, None, None
        self._confirming = self._ready = False
        self.tracker.lose_all()
        self._exchanges.clear()
        if conn is not None:
            try:
                conn.collect()
            except Exception:  # the connection is dead anyway: nothing to report
                LOG.debug("ignoring error while dropping a connection", exc_info=True)

    def read_frame(self, raw: Any, timeout: Optional[float] = None) -> bool:
        """Read what the connection holds, waiting up to ``timeout`` (default:
        :attr:`poll_interval`) for it (lock held); False: stop reading. A lost
        connection is dropped (its unconfirmed publishes go out again); a channel
        error settles what it names."""
        try:
            raw.drain_events(timeout=self.poll_interval if timeout is None else timeout)
        except socket.timeout:
            return False
        except self.context.retry_errors as exc:
            LOG.warning("publishing connection to %s lost (%s: %s)",
                        self.context.config.safe_url, type(exc).__name__, exc)
            self.drop()
            return False
        except amqp.ChannelError as exc:
            self.channel_error(None, exc)
            return False
        return True

    def forget_exchanges(self, names: Iterable[str]) -> None:
        """Exchanges were deleted: a virtual channel records them anew when next used."""
        with self._publish_lock:
            self._exchanges.difference_update(names)

    def sever(self) -> None:
        """Shut the connection's sockets down (any thread): its reads end now."""
        sever(self._conn, self.context.connector.raw)

    def close(self, deadline: float) -> None:
        """Close the connection, waiting for the lock until ``deadline`` (+1 s).

        Pending handles with callbacks are forgotten: the messages they answered
        were never acked, and the broker delivers them again."""
        lock = self._publish_lock
        if not lock.acquire(timeout=max(deadline - time.monotonic(), 0.0) + 1.0):
            LOG.warning("could not close the publishing connection in time; dropped")
            return
        try:
            if self._conn is not None:
                try:
                    self._conn.release()
                except self.context.connection_errors + self.context.channel_errors + (
                        OSError,):
                    LOG.debug("ignoring error while closing the publisher", exc_info=True)
            self.drop()
            self.reader.watched.clear()
        finally:
            lock.release()

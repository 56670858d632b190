"""Draining: bounded reads on the consuming connection, callbacks outside the lock.

Reads go through kombu's ``Transport.drain_events`` on the raw connection
(no implicit reconnect) and ``Transport.heartbeat_check``; a lost
connection is dropped and opened again on the next read.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

from tavrida import exceptions
from tavrida.transports.kombu.consuming import KombuConsuming
from tavrida.transports.kombu.deadlines import take
from tavrida.transports.kombu.polling import fileno

LOG = logging.getLogger(__name__)


class KombuDraining(KombuConsuming):
    """The draining part of :class:`~tavrida.transports.kombu.KombuTransport`."""

    #: Seconds between heartbeat checks while messages keep coming (each read
    #: counts as a sign of life; heartbeats are sent every half interval, which
    #: is seconds): a check per message would cost more than the message.
    heartbeat_check_interval = 0.02

    def drain(self, timeout: float) -> bool:
        """Deliver waiting messages, waiting at most ``timeout`` seconds for one.

        Returns True once something was delivered. Pumps heartbeats, performs
        queued acks and reconnects (re-declaring and consuming again) when the
        connection is lost; raises only when reconnect attempts run out.
        """
        now = time.monotonic()
        deadline = now + max(timeout, 0.0)
        lock = self._lock
        while not self._lifecycle.closed:
            if self._ready:
                return self._deliver_ready()
            if self._stop.is_set():
                break
            remaining = deadline - now
            if not self._consumers and (self._conn is None or self._broken):
                # Nothing to read or keep alive (after cancel(), acks of a lost
                # connection are void: no reconnect for them): wait to be stopped.
                self._stop.wait(max(remaining, 0.0))
                break
            try:
                take(self._local, lock, self._connector.failed)
                try:
                    read = self._next_slice() if self._unsettled else self.poll_interval
                    self._drain_once(min(max(remaining, self.min_poll_interval), read))
                finally:
                    lock.release()
            except exceptions.ConnectionFailed:
                if self._lifecycle.closed or self._lifecycle.interrupted:
                    break  # stopping during an outage: nothing in hand can be acked anyway
                raise
            if self._ready:
                return self._deliver_ready()
            now = time.monotonic()
            if now >= deadline:
                break
        self._stop.clear()
        return False

    def _drain_once(self, timeout: float) -> None:
        """One bounded read on the consuming connection; call with ``_lock`` held."""
        if self._lifecycle.closed:
            return
        conn = self._conn
        raw = self._connector.raw(conn)
        if not (self._is_amqp and raw is not None and not self._broken and raw.connected):
            self._ensure_connected()
            conn = self._conn
            raw = self._connector.raw(conn)
        if self._settles and not self._settles_can_wait(raw):
            self._perform_settles()
        assert conn is not None  # _ensure_connected() raises otherwise
        try:
            if self._is_amqp:
                raw.drain_events(timeout=timeout)  # what kombu's transport calls
            else:
                conn.transport.drain_events(raw, timeout=timeout)
        except socket.timeout:
            pass
        except self._connection_errors + self._channel_errors as exc:
            self._lost(exc)
            return
        if self._resume or not self._is_amqp:
            try:
                self._check_topology()
            except self._connection_errors + self._channel_errors as exc:
                self._lost(exc)  # reconnecting declares everything anyway
                return
        now = time.monotonic()
        if now - self._heartbeat.last >= self.heartbeat_check_interval:
            try:
                # After reading: frames just read count as signs of life.
                conn.transport.heartbeat_check(self._raw_connection(), rate=2)
            except self._connection_errors as exc:
                self._lost(exc)
                return
            self._heartbeat.last = now
        if self._settles and not self._settles_can_wait(raw):
            self._perform_settles()

    def _next_slice(self) -> float:
        """How long the next read may block: short while handlers may ack from elsewhere."""
        if not self._unsettled:
            return self.poll_interval
        current = self._slice
        self._slice = min(current * 2, self.poll_interval)
        return current

    def _deliver_ready(self) -> bool:
        """Run callbacks of received messages, outside the lock, on the draining thread."""
        self._delivering = threading.get_ident()
        try:
            while self._ready:
                delivery, on_message = self._ready.popleft()
                if not delivery._settled:
                    self._unsettled.add(delivery)
                    self._slice = self.min_poll_interval
                on_message(delivery)
        finally:
            self._delivering = 0
        return True

    def _reply_fd(self) -> int:
        """File descriptor of the consuming connection while it reads reply queues, else -1.

        Read without ``_lock`` (a publishing thread polls it): at worst it is
        a connection just dropped, whose reads :meth:`_read_answers` skips.
        """
        conn = self._conn
        if not self._declarations.reply_queues or conn is None or self._broken:
            return -1
        return fileno(self._connector.raw(conn))

    def _read_answers(self) -> bool:
        """One short read on the consuming connection, then hand out the answers read.

        For a publishing thread waiting for a confirm (see
        :meth:`_wait_for_confirm_or_answer`): only deliveries without acks
        (answers) are handed out here; the others stay for :meth:`drain`.
        False when another thread holds the connection (it delivers).
        """
        if not self._lock.acquire(blocking=False):
            return False
        try:
            if self._lifecycle.closed or self._conn is None or self._broken:
                return True
            self._drain_once(self.min_poll_interval)
            answers = [item for item in self._ready if item[0]._no_ack]
            if answers:
                others = [item for item in self._ready if not item[0]._no_ack]
                self._ready.clear()
                self._ready.extend(others)
        except exceptions.ConnectionFailed:
            return True  # the caller's own drain reconnects or reports it
        finally:
            self._lock.release()
        for delivery, on_message in answers:
            on_message(delivery)
        return True

    def stop(self) -> None:
        """Make a waiting :meth:`drain` return (within :attr:`poll_interval`)."""
        self._stop.set()

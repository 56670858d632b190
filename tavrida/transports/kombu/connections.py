"""Connecting: connection parameters, deadlines, (re)connects.

kombu's public ``Connection.ensure_connection`` opens each connection (one
attempt, ``max_retries=0``), but its retry loop is not used: it has no
deadline, cannot be cut short by :meth:`~tavrida.transports.base.Transport.interrupt`
or ``close()``, and sleeps in ``time.sleep``. :func:`.reconnect.retry_call` is the one
retry loop of the adapter instead (connecting, reconnecting, declaring,
publishing): attempts per the config, a backoff up to ``max_retry_interval``,
the calling thread's deadline, and sleeps that end at once on an interrupt.
Giving up raises :class:`~tavrida.exceptions.ConnectionFailed`.

A cluster's nodes are failed over by :mod:`.nodes`.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from typing import Any, Callable, Optional, TypeVar

import amqp

from tavrida import exceptions
from tavrida.transports.kombu.compat.virtual import restore_unacked
from tavrida.transports.kombu.deadlines import Deadline, Holding, take
from tavrida.transports.kombu.nodes import (
    QueueUnavailable,
    queue_unavailable,
)
from tavrida.transports.kombu.reconnect import retry_call
from tavrida.transports.kombu.severing import sever
from tavrida.transports.kombu.state import KombuState

LOG = logging.getLogger(__name__)


T = TypeVar("T")


class KombuConnections(KombuState):
    """The connections part of :class:`~tavrida.transports.kombu.KombuTransport`."""

    def _connect(self) -> None:
        """One attempt to connect and set everything up again (the facade's)."""
        raise NotImplementedError

    def _deadline(self) -> Optional[float]:
        """This thread's deadline (``time.monotonic()``), if any; see :meth:`deadline`."""
        return self._local.deadline

    def _step_deadline(self) -> float:
        """When a step of a stop (cancel, close) gives up on the broker.

        This thread's deadline, but no later than :attr:`stop_step_timeout`
        from now: a stalled connection cannot hold a stop.
        """
        bound = time.monotonic() + self.stop_step_timeout
        own = self._local.deadline
        return bound if own is None or own > bound else own

    def _sever_consuming(self) -> None:
        """Shut the consuming connection's sockets down (any thread): its reads end now."""
        self._broken = True
        sever(self._conn, self._connector.raw)


    def _retry(self, fun: Callable[[], T], initial: bool, what: str,
               once_if_interrupted: bool = False) -> T:
        """Run ``fun`` until it stops raising connection errors, per the retry policy.

        Gives up with :class:`~tavrida.exceptions.ConnectionFailed` when the
        attempts run out (the first connect: ``connection_attempts``, later
        ones: ``reconnect_attempts``), this thread's :meth:`deadline` passes,
        or the transport is closed or interrupted; an error retrying cannot
        mend (a refused login) raises it at once. See :func:`retry_call`.

        ``once_if_interrupted`` (publishes): after :meth:`interrupt`, still make
        the first attempt -- a stopping server's answer on a healthy connection
        goes out -- but retry nothing.
        """
        check: Callable[[], None] = self._connector.check
        if once_if_interrupted:
            first = [True]

            def check_retries() -> None:
                if first[0]:
                    first[0] = False
                    if self._lifecycle.closed:
                        raise self._connector.failed(None, "the transport is closed")
                    return
                self._connector.check()

            check = check_retries

        return self._policy.call(
            fun, initial=initial, deadline=self._local.deadline, wake=self._lifecycle.wake,
            retry_errors=self._retry_errors, fatal_errors=self._connection_errors,
            failed=self._connector.failed, check=check, what=what,
            url=self._connector.safe_url)

    def deadline(self, timeout: Optional[float]) -> "contextlib.AbstractContextManager[None]":
        """Bound this thread's blocking operations inside the block (see the base class)."""
        return Deadline(self._local, timeout)

    def _holding(self, lock: Any) -> "contextlib.AbstractContextManager[None]":
        """Acquire ``lock`` before this thread's deadline, or raise ConnectionFailed."""
        return Holding(self._local, lock, self._connector.failed)

    def _take(self, lock: Any) -> None:
        """:meth:`_holding` without its block: acquire ``lock`` (the caller releases it)."""
        take(self._local, lock, self._connector.failed)

    def _ensure_connected(self) -> None:
        """Open (or re-open) the consuming connection; call with ``_lock`` held."""
        if self._lifecycle.closed:
            raise exceptions.TavridaError("the transport is closed")
        if self._conn is not None and not self._broken and self._conn.connected:
            return
        initial = not self._ever_connected
        if not initial:
            LOG.info("reconnecting to %s", self._config.safe_url)
        self._retry(self._connect_declaring, initial, "connecting to")
        if not initial:
            LOG.info("reconnected to %s",
                     self._config.safe_urls[self._connector.rotation("consume").current])

    def _connect_declaring(self) -> None:
        """:meth:`_connect`; a queue whose home node is down is retried, not fatal."""
        try:
            self._connect()
        except amqp.NotFound as exc:
            if not queue_unavailable(exc):
                raise
            raise QueueUnavailable(str(exc)) from exc

    def _drop_connection(self) -> None:
        """Forget the consuming connection without talking to the broker."""
        conn, self._conn, self._control = self._conn, None, None
        self._broken = False
        self._resume = []  # a new connection consumes everything again
        channels = [consumer.channel for consumer in self._consumers
                    if consumer.channel is not None]
        for consumer in self._consumers:
            consumer.channel = None
        # Deliveries not yet handed out came on the dead connection: the broker redelivers
        # them -- but not those taken without an ack (answers): those are still handed out.
        kept = [item for item in self._ready if item[0]._no_ack]
        self._ready.clear()
        self._ready.extend(kept)
        self._unsettled.clear()
        if conn is not None and not self._is_amqp:
            # RabbitMQ requeues what a lost connection held; Redis has no such thing.
            self._unrestored.extend(channel.qos for channel in channels)
            self._restore_unacked()
        if conn is not None:
            try:
                conn.collect()
            except Exception:  # the connection is dead anyway: nothing to report
                LOG.debug("ignoring error while dropping a connection", exc_info=True)

    def _restore_unacked(self) -> None:
        """Give the un-acked messages of lost virtual channels back to their queues.

        kombu restores them when a channel closes, but closing a channel whose
        Redis connection died mid-BRPOP raises before that, leaving them in
        kombu's ``unacked`` hash until ``visibility_timeout`` (an hour) -- among
        them deliveries received and never handed out. Done here instead, with
        fresh connections from the channel's pool; what cannot be restored now
        (Redis down) is tried again after each reconnect.
        """
        pending, self._unrestored = self._unrestored, []
        for qos in pending:
            try:
                if self._compat.private:
                    restore_unacked(qos)
                else:
                    qos.restore_unacked()
            except Exception as exc:  # noqa: BLE001 - kept for the next attempt
                LOG.warning("could not give un-acked messages back yet (%s: %s)",
                            type(exc).__name__, exc)
                self._unrestored.append(qos)

    def _lost(self, exc: BaseException) -> None:
        LOG.warning("connection to %s lost (%s: %s)",
                    self._config.safe_urls[self._connector.rotation("consume").current],
                    type(exc).__name__, exc)
        self._drop_connection()

    def _raw_connection(self) -> Any:
        """The transport-level connection, without kombu's implicit reconnect."""
        return self._connector.raw(self._conn)

    def _socket_alive(self) -> bool:
        """False when the consuming connection's socket was closed or reset by the peer."""
        raw = self._raw_connection()
        sock = getattr(getattr(raw, "transport", None), "sock", None)
        if sock is None:
            return False
        try:
            # Poll first: recv on a socket in timeout mode would wait for data.
            if not self._alive_poll(sock):
                return True  # nothing to read: alive as far as can be told
            peeked: bytes = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            return peeked != b""
        except (BlockingIOError, InterruptedError, socket.timeout):
            return True  # a drainer took the data meanwhile
        except OSError:
            return False

    def _with_connection(self, action: Callable[[Any], T], remember: Callable[[], None]) -> T:
        """Run ``action(control_channel)``, reconnecting on connection errors (3 attempts).

        ``remember`` records the operation for reconnects; it runs before a
        reconnect (which then performs the declarations itself) or once the
        action worked, never after the broker refused it. Reconnecting is
        :meth:`_ensure_connected`'s (with its own pauses): no pause here.
        """
        def attempt() -> T:
            self._ensure_connected()
            return action(self._control)

        def lost(exc: BaseException) -> None:
            remember()
            self._lost(exc)

        with self._holding(self._lock):
            result = retry_call(
                attempt, attempts=1 if self._config.reconnect_attempts == 0 else 3, delay=0.0,
                max_interval=0.0, deadline=None, wake=self._lifecycle.wake,
                retry_errors=self._retry_errors, fatal_errors=(), failed=self._connector.failed,
                on_error=lost, pause=False)
            remember()
            return result

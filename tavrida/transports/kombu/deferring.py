"""Deferred confirms: a publish that returns once written, its confirm read by drain().

A server answering calls one by one would otherwise wait for each answer's
confirm before it reads the next request. Inside
:meth:`KombuDeferring.deferring` the thread's next publish is only written
(and registered for its confirm, as any publish); :meth:`KombuDeferring.drain`
then polls the publishing socket beside the consuming one, reads the
confirms, publishes again what a lost connection or channel took before
its confirm, fails what is not confirmed within :attr:`confirm_timeout`,
and tells each deferred publish its outcome, oldest first, outside the
locks. Only over plain TCP with publisher confirms on RabbitMQ (sockets
that can be polled); elsewhere nothing is deferred.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, List, Optional

from tavrida import exceptions
from tavrida.transports.kombu.batch import Batch, Deferral, OnConfirmed
from tavrida.transports.kombu.polling import CAN_POLL, fileno
from tavrida.transports.kombu.shared_confirms import KombuSharedConfirms

LOG = logging.getLogger(__name__)

#: Most frames read from the publishing connection in one go (bounds a pass).
MAX_CONFIRM_READS = 64


class KombuDeferring(KombuSharedConfirms):
    """The deferred confirms of :class:`~tavrida.transports.kombu.KombuTransport`."""

    def deferring(self, on_confirmed: OnConfirmed
                  ) -> "contextlib.AbstractContextManager[Deferral]":
        """Let this thread's next publish return before its confirm (see the base class)."""
        deferral = Deferral(on_confirmed)
        if not (self._confirms and self._is_amqp and not self._config.ssl
                and CAN_POLL):
            return contextlib.nullcontext(deferral)
        return _Deferring(self._local, deferral)

    def drain(self, timeout: float) -> bool:
        """Deliver waiting messages (see :meth:`.ConsumingConnection.drain`), reading
        deferred publishes' confirms meanwhile."""
        consuming = self._consuming
        if not self._deferred:
            return consuming.drain(timeout)
        end = time.monotonic() + max(timeout, 0.0)
        while True:
            if self._finish_deferred():
                consuming.drain(0.0)  # sends the acks just queued, delivers what is ready
                return True
            if not self._deferred:
                left = end - time.monotonic()
                return consuming.drain(max(left, 0.0))
            if consuming.has_ready():
                return consuming.drain(0.0)
            now = time.monotonic()
            first = self._deferred[0].deadline - now
            wait = min(max(end - now, 0.0), self.poll_interval, max(first, 0.0))
            readable = self._wait_for_sockets(wait)
            if readable and consuming.drain(0.0):
                return True
            if time.monotonic() >= end:
                return False

    def _wait_for_sockets(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for either connection; True unless only publishing is ready."""
        pub_fd = fileno(self._connector.raw(self._pub_conn))
        consume_fd = self._consuming.fileno()
        if consume_fd < 0:
            return True  # drain() reconnects
        if pub_fd >= 0:
            events = self._sockets_poll.poll(consume_fd, pub_fd, timeout=timeout)
        else:
            events = self._sockets_poll.poll(consume_fd, timeout=timeout)
        for fd, _ in events:
            if fd == consume_fd:
                return True
        return not events

    def _finish_deferred(self) -> int:
        """Read waiting confirms, resend or time out, run the outcomes of settled ones."""
        self._pump_deferred()
        done: List[Batch] = []
        while self._deferred and not self._deferred[0].todo:
            done.append(self._deferred.popleft())
        if not done:
            return 0
        with self._consuming.delivering():  # their acks go together (see Settlement.settle)
            for batch in done:
                on_confirmed, batch.on_confirmed = batch.on_confirmed, None
                assert on_confirmed is not None
                try:
                    on_confirmed(batch.error() if batch.failed else None)
                except Exception:  # noqa: BLE001 - one failing callback must not stop the rest
                    LOG.exception("a deferred publish's callback failed")
        return len(done)

    def _pump_deferred(self) -> None:
        """With the publishing lock free: read confirms, resend lost publishes, time out.

        A thread holding the lock is publishing a batch: it reads every
        confirm itself.
        """
        if not self._publish_lock.acquire(blocking=False):
            return
        try:
            self._read_waiting_confirms()
            now = time.monotonic()
            lost: Optional[exceptions.ConnectionFailed] = None
            for batch in list(self._deferred):
                if not batch.todo:
                    continue
                if not batch.inflight:
                    # Lost with its connection or channel before its confirm: out again
                    # (once the broker is out of reach, the others are not tried).
                    lost = lost or self._resend(batch)
                    if lost is not None:
                        batch.connection_failed = lost
                        batch.fail(0, lost.kwargs.get("reason", str(lost)))
                    batch.deadline = time.monotonic() + self.confirm_timeout
                elif batch.deadline <= now:
                    batch.fail(0, "no confirm from the broker in time (confirm_timeout "
                                  f"{self.confirm_timeout}s)")
                    self._forget(batch)
                    self._drop_publisher()  # the others go out again on a fresh connection
            if self._pub_idle:
                self._wake_waiting(handover=False)  # their confirms may have been read too
        finally:
            self._publish_lock.release()

    def _read_waiting_confirms(self) -> None:
        """Read what the publishing socket holds, never waiting (``_publish_lock`` held)."""
        raw = self._connector.raw(self._pub_conn)
        fd = fileno(raw)
        if fd < 0:
            return
        for _ in range(MAX_CONFIRM_READS):
            if not self._pub_poll.poll(fd) or not self._read_publisher_frame(raw):
                return

    def _resend(self, batch: Batch) -> Optional[exceptions.ConnectionFailed]:
        """Publish a deferred message again (``_publish_lock`` held); the failure, if any."""
        try:
            with self.deadline(self._config.publish_timeout):
                self._send_request(batch)
        except exceptions.ConnectionFailed as exc:
            return exc
        return None


class _Deferring:
    """The block of :meth:`KombuDeferring.deferring` (a class: it runs once per answer)."""

    __slots__ = ("_local", "_deferral")

    def __init__(self, local: Any, deferral: Deferral) -> None:
        self._local = local
        self._deferral = deferral

    def __enter__(self) -> Deferral:
        self._local.deferral = self._deferral
        return self._deferral

    def __exit__(self, *exc_info: Any) -> None:
        self._local.deferral = None

"""Blocking calls from many threads sharing one confirm channel.

The request of a blocking call is written under ``_publish_lock`` like any
publish, but the lock is not held while it waits: one waiting thread at a
time (the reader) polls the publishing socket and the reply queue's
together and reads what comes, confirms and answers, for every caller; the
others wait each on its own condition and are woken when their request is
settled or answered, or (one of them) to read next. An answer proves its
request was routed, so a call returns at its answer or its confirm,
whichever comes first; a nack or a return read first still fails it.
Batches (:meth:`~.KombuPublishing.publish_many`, casts) hold the lock for
their confirms as before (:mod:`.publishing`).
"""

from __future__ import annotations

import functools
import threading
import time
from typing import Any, Callable, Optional, Tuple

from tavrida.transports.base import OutgoingEnvelope
from tavrida.transports.kombu.batch import Batch
from tavrida.transports.kombu.deadlines import take
from tavrida.transports.kombu.polling import CAN_POLL, fileno
from tavrida.transports.kombu.publishing import KombuPublishing


class KombuSharedConfirms(KombuPublishing):
    """Blocking calls' requests of :class:`~tavrida.transports.kombu.KombuTransport`."""

    def publish_request(self, envelope: OutgoingEnvelope,
                        answered: Callable[[], bool]) -> None:
        """Publish a blocking call's request; return at its confirm or once ``answered()``.

        With confirms over plain TCP (sockets that can be polled), the
        publishing lock is held only to write: the requests of many calling
        threads are confirmed together, one waiting thread reading the
        confirms for all and the reply queue too. An answer proves the
        request was routed, so the call need not wait for the confirm (read
        later, it matches nothing). A nack or return read before the answer
        raises as :meth:`publish` does; a request lost with the connection or
        the channel before its confirm is published again.
        """
        shared = self._confirms and not self._config.ssl and CAN_POLL
        self._publish([envelope],
                      functools.partial(self._confirm_or_answer, answered=answered)
                      if shared else None)

    def _confirm_or_answer(self, batch: Batch, answered: Callable[[], bool]) -> None:
        """Publish a request and wait for its confirm or its answer, sharing the connection.

        The lock is held to write and to read, never to wait: one waiting
        thread at a time (the reader) polls the publishing socket and the
        reply queue's together and reads what comes; the others wait, each on
        its own condition, woken when their request is settled or answered,
        or (one of them) to read next. A request whose publish was lost
        (connection or channel) before its confirm goes out again.
        """
        deadline = 0.0
        sent = False
        lock = self._publish_lock
        waiting: Optional[Tuple[Batch, threading.Condition, Callable[[], bool]]] = None
        while True:
            take(self._local, lock, self._connector.failed)
            try:
                if not batch.todo:
                    return
                if sent and answered():
                    # The answer proves it was routed: its confirm, read later, matches nothing.
                    self._forget(batch)
                    batch.todo.clear()
                    return
                if not batch.inflight:
                    self._send_request(batch)
                    sent = True
                    now = time.monotonic()
                    deadline = now + self.confirm_timeout
                    own = self._local.deadline
                    if own is not None and own < deadline:
                        deadline = own
                    if not batch.todo or not batch.inflight:
                        continue  # confirmed, failed or lost while it was written
                else:
                    now = time.monotonic()
                remaining = deadline - now
                if remaining <= 0:
                    self._drop_publisher()
                    batch.fail(0, "no confirm from the broker in time (confirm_timeout "
                                  f"{self.confirm_timeout}s, or the publish deadline)")
                    return
                if self._pub_reader:
                    if waiting is None:  # made when needed: most calls never wait here
                        waiting = (batch, threading.Condition(lock), answered)
                    self._pub_idle.append(waiting)
                    try:
                        waiting[1].wait(min(remaining, self.poll_interval))
                    finally:
                        self._pub_idle.remove(waiting)
                    continue
                self._pub_reader = True
                raw = self._connector.raw(self._pub_conn)
            finally:
                lock.release()
            try:
                poll = self.poll_interval
                self._read_confirms(raw, poll if poll < remaining else remaining)
            finally:
                self._reader_done(batch, answered)

    def _reader_done(self, batch: Batch, answered: Callable[[], bool]) -> None:
        """The reader stops reading; wake who should read or return next.

        The lock is taken with this thread's deadline only: a batch may hold
        it for its confirms (up to the confirm timeout), and a call must not
        wait for that past its own deadline. Without the lock the flag is
        cleared all the same (one assignment); the waiting requests look at it
        again within :attr:`poll_interval`.
        """
        lock = self._publish_lock
        deadline = self._local.deadline
        if lock.acquire(
                timeout=-1 if deadline is None else max(deadline - time.monotonic(), 0.0)):
            try:
                self._pub_reader = False
                if self._pub_idle:
                    self._wake_waiting(handover=not batch.todo or answered())
            finally:
                lock.release()
        else:
            self._pub_reader = False


    def _read_confirms(self, raw: Any, timeout: float) -> None:
        """The reader: wait up to ``timeout`` for the publishing or the consuming socket, read.

        Polled without the lock (plain TCP: py-amqp reads no further than the
        frame it needs, so a socket with nothing to read holds no whole frame
        in a buffer); read with it, after checking that nobody read meanwhile.
        """
        pub_fd = fileno(raw)
        if pub_fd < 0:
            return  # closed meanwhile: the requests go out again
        reply_fd = self._consuming.reply_fd()
        end = time.monotonic() + timeout
        fds = (pub_fd, reply_fd) if reply_fd >= 0 else (pub_fd,)
        events = self._confirm_poll.poll(*fds, timeout=timeout)
        # At most two sockets ready: the first and the last are all of them.
        while events and events[0][0] != pub_fd and events[-1][0] != pub_fd:
            if self._consuming.read_answers():
                return
            # Another thread drains the replies: wait for the publishing socket alone.
            events = self._pub_poll.poll(pub_fd, timeout=max(end - time.monotonic(), 0.0))
        for fd, _ in events:
            if fd != pub_fd:
                self._consuming.read_answers()
                continue
            if not self._publish_lock.acquire(False):
                return  # a batch holds it and reads its confirms, ours among them
            try:
                if raw is not self._connector.raw(self._pub_conn):
                    return  # dropped meanwhile: the requests go out again
                if not self._pub_poll.poll(pub_fd):
                    return  # a batch holding the lock read it
                self._read_publisher_frame(raw)
            finally:
                self._publish_lock.release()

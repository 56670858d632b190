"""Reading the confirms of pending publishes for every waiter: :class:`ConfirmReader`.

A pending :class:`~.kombu_confirmation.KombuConfirmation` is written under
the publishing lock, which is not held while its publisher waits: one
waiting thread at a time (the reader) polls the publishing socket and the
reply queue's together and reads what comes, confirms and answers, for
everyone; the others wait each on its own condition and are woken when
their publish is settled, or (one of them) to read next. A blocking call
cancels its request's handle at its answer (an answer proves the request
was routed): its waiter returns then. The transport's ``drain`` reads the
confirms of handles with callbacks nobody waits for (:meth:`progress`).
"""

from __future__ import annotations

import collections
import select
import threading
import time
from typing import TYPE_CHECKING, Any, Deque, List, Optional, Tuple

from tavrida.transports.kombu.batch import CONFIRM_LATE, Batch
from tavrida.transports.kombu.kombu_confirmation import KombuConfirmation
from tavrida.transports.kombu.polling import Readable, fileno, frame_waits

if TYPE_CHECKING:
    from tavrida.transports.kombu.publishing_connection import PublishingConnection

#: Most frames read from the publishing connection in one go (bounds a drain's pass).
MAX_CONFIRM_READS = 64


class ConfirmReader:
    """Who reads the publishing socket for pending publishes; guarded by the publishing lock."""

    def __init__(self, publisher: PublishingConnection) -> None:
        self._publisher = publisher
        #: A waiter is reading the publishing connection for everyone.
        self.reading = False
        #: Waiters waiting while another reads: (batch of their handle, their condition).
        self.idle: List[Tuple[Any, threading.Condition]] = []
        #: Pending handles with callbacks, oldest first: ``drain`` settles them.
        self.watched: Deque[KombuConfirmation] = collections.deque()
        #: Polls of the publishing socket, with or without the reply queue's; and with the
        #: consuming one (``drain``).
        self._confirm_poll = Readable()
        self._pub_poll = Readable()
        self._sockets_poll = Readable()

    def watch(self, handle: KombuConfirmation) -> None:
        """``handle`` has callbacks: let ``drain`` read its confirm and settle it."""
        self.watched.append(handle)

    def wake(self, handover: bool) -> None:
        """Wake the waiters whose publish is settled, and one more to read if ``handover``
        (lock held)."""
        for batch, wake in self.idle:
            if not batch.todo:
                wake.notify()
            elif handover:
                wake.notify()
                handover = False

    def cancelled(self, handle: KombuConfirmation) -> None:
        """``handle`` was cancelled: wake its waiter now if the lock is free (else it sees
        it within ``poll_interval``)."""
        lock = self._publisher.lock
        if self.idle and lock.acquire(blocking=False):
            try:
                self.wake(handover=False)
            finally:
                lock.release()

    # ------------------------------------------------------------------ waiters

    def wait(self, batch: Batch, timeout: Optional[float]) -> bool:
        """Wait up to ``timeout`` (None: no limit) for the verdict on the publish of
        ``batch`` (a pending handle's), reading for everyone in turn. True once known.

        A publish lost with its connection or channel before its confirm is
        written again; it fails once its confirm timeout passes.
        """
        publisher = self._publisher
        end = None if timeout is None else time.monotonic() + timeout
        lock = publisher.lock
        waiting: Optional[Tuple[Any, threading.Condition]] = None
        while batch.todo:
            now = time.monotonic()
            if end is not None and now >= end:
                return False
            # Free, it is taken at once and ``now`` still holds (no bound, no clock read:
            # bench.profiling "cast, tavrida: client" calls/message).
            if not lock.acquire(blocking=False):
                bound = batch.deadline if end is None or end > batch.deadline else end
                if not lock.acquire(timeout=max(bound - now, 0.0)):
                    if time.monotonic() >= batch.deadline:
                        # The lock's holder cannot be waited for past the confirm timeout.
                        batch.fail(0, CONFIRM_LATE.format(publisher.confirm_timeout))
                    continue
                now = time.monotonic()
            try:
                if not batch.todo:
                    continue
                if not batch.inflight:
                    publisher.resend(batch)  # lost before its confirm: out again
                    continue
                remaining = batch.deadline - now
                if remaining <= 0:
                    publisher.time_out(batch)
                    continue
                if end is not None and end - now < remaining:
                    remaining = end - now
                if self.reading:
                    if waiting is None:  # made when needed: most publishes never wait here
                        waiting = (batch, threading.Condition(lock))
                    self.idle.append(waiting)
                    try:
                        waiting[1].wait(min(remaining, publisher.poll_interval))
                    finally:
                        self.idle.remove(waiting)
                    continue
                raw = publisher.raw
                reply_fd = publisher.consuming.reply_fd()
                if reply_fd < 0 and not self.idle:
                    # Alone, and no answer to read beside: read holding the lock, as a
                    # batch did (bench.profiling "cast, tavrida: client" calls/message).
                    left = min(remaining, publisher.poll_interval)
                    end_read = now + left
                    # read_frame() is False once the connection is dropped or the channel lost.
                    while raw is not None and publisher.read_frame(raw, left) \
                            and batch.inflight:
                        left = end_read - time.monotonic()
                        if left <= 0:
                            break
                    continue
                self.reading = True
            finally:
                lock.release()
            try:
                poll = publisher.poll_interval
                self._read(raw, reply_fd, poll if poll < remaining else max(remaining, 0.0))
            finally:
                self._done_reading(batch)
        return True

    def _done_reading(self, batch: Any) -> None:
        """The reader stops reading; wake who should read or return next.

        The lock is taken with this thread's deadline only. Without the lock
        the flag is cleared all the same (one assignment); the waiters look
        at it again within ``poll_interval``.
        """
        lock = self._publisher.lock
        deadline = self._publisher.context.local.deadline
        # Free, taken at once (no clock read: bench.profiling "call, tavrida: client").
        if lock.acquire(blocking=False) or lock.acquire(
                timeout=-1 if deadline is None else max(deadline - time.monotonic(), 0.0)):
            try:
                self.reading = False
                if self.idle:
                    self.wake(handover=not batch.todo)
            finally:
                lock.release()
        else:
            self.reading = False

    def _read(self, raw: Any, reply_fd: int, timeout: float) -> None:
        """The reader: wait up to ``timeout`` for the publishing or the reply socket
        (``reply_fd``, -1: none), read.

        Polled without the lock (plain TCP: a socket with nothing to read holds
        no whole frame in py-amqp's buffer; a frame read ahead, see
        :mod:`.compat.pyamqp_read`, is asked for first); read with it, after
        checking that nobody read meanwhile.
        """
        publisher = self._publisher
        consuming = publisher.consuming
        pub_fd = fileno(raw)
        if pub_fd < 0:
            return  # closed meanwhile: the publishes go out again
        transport = raw.transport
        end = time.monotonic() + timeout
        if frame_waits(transport):
            events: Any = ((pub_fd, select.POLLIN),)
        elif reply_fd >= 0 and consuming.frame_waits():
            events = ((reply_fd, select.POLLIN),)
        else:
            fds = (pub_fd, reply_fd) if reply_fd >= 0 else (pub_fd,)
            events = self._confirm_poll.poll(*fds, timeout=timeout)
        # At most two sockets ready: the first and the last are all of them.
        while events and events[0][0] != pub_fd and events[-1][0] != pub_fd:
            if consuming.read_answers():
                return
            # Another thread drains the replies: wait for the publishing socket alone.
            events = ((pub_fd, select.POLLIN),) if frame_waits(transport) else \
                self._pub_poll.poll(pub_fd, timeout=max(end - time.monotonic(), 0.0))
        lock = publisher.lock
        for fd, _ in events:
            if fd != pub_fd:
                consuming.read_answers()
                continue
            if not lock.acquire(False):
                return  # another thread holds it (writing), and reads after
            try:
                if raw is not publisher.raw:
                    return  # dropped meanwhile: the publishes go out again
                if not self._pub_poll.input_waits(transport, pub_fd):
                    return  # someone holding the lock read it
                publisher.read_frame(raw)
            finally:
                lock.release()

    # ------------------------------------------------------------------ drain

    def progress(self) -> List[KombuConfirmation]:
        """For ``drain``: read waiting confirms, resend lost publishes, time out; the
        watched handles whose verdict is known, oldest first, to settle.

        Reads only with the publishing lock free (its holder reads them too).
        """
        publisher = self._publisher
        lock = publisher.lock
        if lock.acquire(blocking=False):
            try:
                self._read_waiting(publisher)
                now = time.monotonic()
                for handle in list(self.watched):
                    batch = handle.batch
                    if not batch.todo:
                        continue
                    if not batch.inflight:
                        # Lost with its connection or channel before its confirm: out again.
                        publisher.resend(batch)
                    elif batch.deadline <= now:
                        publisher.time_out(batch)
                if self.idle:
                    self.wake(handover=False)  # their confirms may have been read too
            finally:
                lock.release()
        done = []
        watched = self.watched
        while watched and not watched[0].batch.todo:
            done.append(watched.popleft())
        return done

    def _read_waiting(self, publisher: PublishingConnection) -> None:
        """Read what the publishing socket holds, never waiting (lock held)."""
        raw = publisher.raw
        fd = fileno(raw)
        if fd < 0:
            return
        transport = raw.transport
        for _ in range(MAX_CONFIRM_READS):
            if not self._pub_poll.input_waits(transport, fd) or not publisher.read_frame(raw):
                return

    def next_deadline(self) -> float:
        """When the oldest watched publish times out (monotonic; there is one)."""
        return self.watched[0].batch.deadline

    def wait_for_sockets(self, consuming_fd: int, timeout: float) -> bool:
        """Wait up to ``timeout`` for either connection; True unless only publishing is ready
        (a frame read ahead, see :mod:`.compat.pyamqp_read`, is ready at once)."""
        publisher = self._publisher
        if publisher.consuming.frame_waits():
            return True
        raw = publisher.raw
        pub_fd = fileno(raw)
        if pub_fd < 0:
            self._sockets_poll.poll(consuming_fd, timeout=timeout)
            return True
        pub_waits = frame_waits(raw.transport)
        events = self._sockets_poll.poll(consuming_fd, pub_fd,
                                         timeout=0.0 if pub_waits else timeout)
        for fd, _ in events:
            if fd == consuming_fd:
                return True
        return not events and not pub_waits


"""The outbox: how asyncio code publishes without the loop waiting on the broker.

A transport whose publish never blocks (memory) is called on the loop
itself. Any other (kombu: a publish may reconnect, or wait for a confirm)
is called on a publishing thread, under the message's deadline
(:meth:`~tavrida.transports.base.Transport.deadline`): the messages sent
meanwhile wait in a queue, and one thread publishes them in turn (one
hand-off for many messages, not one per message). A cast or notification
still queued at its deadline fails then (it is never published). Either way
the verdict comes back through the
:class:`~tavrida.transports.confirmation.Confirmation`'s done callback and
``loop.call_soon_threadsafe`` (none when it is settled on the loop).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import logging
import threading
import time
from typing import Callable, Deque, Optional, Tuple

from tavrida import exceptions, messages
from tavrida.sender import Sender
from tavrida.transports.base import Confirmation

LOG = logging.getLogger(__name__)

#: Threads that publish for one asyncio client on a transport whose publish may block:
#: one takes the queue in turn (one hand-off per batch; bench scenario 8, client CPU per call).
PUBLISH_THREADS = 1

#: Told why a publish failed (on the loop), or None once confirmed: a
#: :class:`~tavrida.exceptions.PublishFailed`, or what a blocking send raises
#: before publishing (:class:`~tavrida.exceptions.UnableToDiscover`, ...).
OnVerdict = Callable[[Optional[Exception]], None]


class Sending:
    """One message on its way: its confirmation once published, and whether it is still wanted."""

    __slots__ = ("confirmation", "dropped", "taken")

    def __init__(self) -> None:
        self.confirmation: Optional[Confirmation] = None
        #: Its caller gave up (cancelled, timed out, answered): not published if not yet.
        self.dropped = False
        #: A publishing thread took it from the queue (under the outbox's lock).
        self.taken = False

    def drop(self) -> None:
        """Nobody needs its verdict any more: a pending confirmation is cancelled."""
        self.dropped = True
        confirmation = self.confirmation
        if confirmation is not None:
            confirmation.cancel()


class Outbox:
    """Publishes the messages of one asyncio client or server through ``sender``."""

    def __init__(self, sender: Sender, loop: asyncio.AbstractEventLoop, name: str) -> None:
        self.sender = sender
        self.loop = loop
        transport = sender.transport
        self._in_place = bool(transport is not None and transport.publish_never_blocks)
        self._pool: Optional[concurrent.futures.ThreadPoolExecutor] = None
        if not self._in_place:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                PUBLISH_THREADS, thread_name_prefix=f"{name}-publish")
        self._queue: Deque[Tuple[messages.Message, float, Sending, OnVerdict, bool, bool]] = (
            collections.deque())
        self._lock = threading.Lock()
        self._publishing = False  # a thread is taking the queue

    def send(self, message: messages.Message, deadline: float, on_verdict: OnVerdict,
             failures_only: bool = False, wake: bool = True) -> Sending:
        """Publish ``message`` by ``deadline`` (``time.monotonic()``); ``on_verdict`` on the loop.

        ``on_verdict(None)`` once confirmed, ``on_verdict(exc)`` when it
        failed (including when the broker could not be reached in time);
        never when it was dropped (:meth:`Sending.drop`) first. On the loop,
        what cannot be sent at all (no exchange for it, not JSON) raises here.
        ``failures_only``: no ``on_verdict(None)`` (a call waits for its answer
        anyway), so a confirm costs the loop nothing. ``wake``: once published,
        wake the drain that reads its confirm.
        """
        sending = Sending()
        if self._pool is None:
            self._watch(sending, self.sender.publish(message), on_verdict, True, failures_only,
                        wake)
        else:
            with self._lock:
                self._queue.append((message, deadline, sending, on_verdict, failures_only, wake))
                if self._publishing:
                    return sending  # the thread publishing takes it in this turn
                self._publishing = True
            try:
                self._pool.submit(self._publish_queued)
            except RuntimeError:  # closed: raised here, as before any publish
                with self._lock:  # (the queue was empty: only this message is in it)
                    self._publishing = False
                    self._queue.clear()
                raise
        return sending

    def _publish_queued(self) -> None:
        """Publish the queued messages in turn until none is left (on a publishing thread)."""
        try:
            while True:
                with self._lock:
                    if not self._queue:
                        self._publishing = False
                        return
                    message, deadline, sending, on_verdict, failures_only, wake = (
                        self._queue.popleft())
                    sending.taken = True
                self._publish_in_thread(message, deadline, sending, on_verdict, failures_only,
                                        wake)
        except BaseException:
            with self._lock:  # the next send starts a thread again for what is queued
                self._publishing = False
            raise

    def _expire_queued(self, sending: Sending, on_verdict: OnVerdict) -> None:
        """A message's deadline passed (on the loop): fail it if no thread took it yet."""
        with self._lock:
            if sending.taken or sending.dropped:
                return  # the publish has its own deadline (and its confirm the transport's)
            sending.dropped = True  # the publishing thread skips it
        on_verdict(exceptions.PublishConnectionFailed(
            reason="the deadline passed before the message could be published"))

    async def publish(self, message: messages.Message, timeout: Optional[float]) -> None:
        """Publish ``message`` and wait for its verdict: return once confirmed, else raise."""
        deadline = time.monotonic() + (timeout if timeout is not None else float("inf"))
        future: asyncio.Future[None] = self.loop.create_future()

        on_verdict = functools.partial(settle, future)
        sending = self.send(message, deadline, on_verdict)
        expiry = None
        if self._pool is not None and timeout is not None:
            expiry = self.loop.call_later(timeout, self._expire_queued, sending, on_verdict)
        try:
            await future
        finally:
            if expiry is not None:
                expiry.cancel()
            if not future.done():  # cancelled: not written again after a cut
                sending.drop()

    def _publish_in_thread(self, message: messages.Message, deadline: float,
                           sending: Sending, on_verdict: OnVerdict,
                           failures_only: bool, wake: bool) -> None:
        left = deadline - time.monotonic()
        if sending.dropped:
            return
        transport = self.sender.transport
        assert transport is not None
        try:
            if left <= 0:
                raise exceptions.PublishConnectionFailed(
                    reason="the deadline passed before the message could be published")
            with transport.deadline(left if left != float("inf") else None):
                confirmation = self.sender.publish(message)
        except Exception as exc:  # noqa: BLE001 - told to the caller, as a blocking send raises
            self.loop.call_soon_threadsafe(self._tell, sending, on_verdict, exc)
            return
        self._watch(sending, confirmation, on_verdict, False, failures_only, wake)

    def _watch(self, sending: Sending, confirmation: Confirmation, on_verdict: OnVerdict,
               on_loop: bool, failures_only: bool, wake: bool) -> None:
        """Tell ``on_verdict`` the confirmation's outcome on the loop (one hop, if any)."""
        sending.confirmation = confirmation
        if sending.dropped:
            confirmation.cancel()
        loop = self.loop

        def settled(done: Confirmation) -> None:
            if done.cancelled():
                return
            failure = done.failure()
            if failure is None and failures_only:
                return
            if on_loop and loop_thread_is_current(loop):
                self._tell(sending, on_verdict, failure)
            else:
                loop.call_soon_threadsafe(self._tell, sending, on_verdict, failure)

        confirmation.add_done_callback(settled)
        if wake and not on_loop and not confirmation.done():
            # The drain that reads its confirm may be waiting for a delivery for a
            # second: wake it (a cast awaited in turn took 1 s each on RabbitMQ).
            transport = self.sender.transport
            assert transport is not None
            transport.stop()

    @staticmethod
    def _tell(sending: Sending, on_verdict: OnVerdict, failure: Optional[Exception]) -> None:
        if not sending.dropped:
            on_verdict(failure)

    def close(self) -> None:
        """Stop the publishing threads (what they publish now finishes)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def loop_thread_is_current(loop: asyncio.AbstractEventLoop) -> bool:
    """True when called on the thread running ``loop``."""
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def settle(future: "asyncio.Future[None]", exc: Optional[BaseException]) -> None:
    """Give ``future`` its outcome (None: done), unless it has one (cancelled, say)."""
    if future.done():
        return
    if exc is None:
        future.set_result(None)
    else:
        future.set_exception(exc)

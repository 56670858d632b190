"""Awaited calls: the asyncio counterpart of :class:`tavrida.replies.Replies`.

Same wire: a private reply queue bound to the client's reply exchange with
its service name, answers paired with callers by ``request_id``
(see :mod:`tavrida.replies`). The reply queue is drained by the
:class:`~tavrida.aio.io_thread.IOThread`, which decodes each answer there and
hands it to the loop; answers that come together cross in one
``loop.call_soon_threadsafe``. Each call is a future in a dict with its
deadline; one timer (``loop.call_at``) serves every call, armed for the
earliest deadline: no task, no thread, no timer per call, so thousands may
be in flight. A call whose awaiting task is cancelled is forgotten at once;
its answer, if it comes, is dropped (logged at DEBUG).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
import uuid
from typing import Any, Dict, List, Optional, Tuple, Union

from tavrida import exceptions, messages, wire
from tavrida.aio.io_thread import IOThread
from tavrida.aio.outbox import Outbox
from tavrida.replies import payload_of
from tavrida.transports.base import Binding, Delivery, Topology

LOG = logging.getLogger(__name__)

Answer = Union[messages.Message, exceptions.IncorrectMessage]


class _Waiting:
    """One awaited call: its future, and when and how it times out."""

    __slots__ = ("future", "deadline", "request", "timeout")

    def __init__(self, future: "asyncio.Future[Answer]", deadline: float,
                 request: messages.Request, timeout: float) -> None:
        self.future = future
        self.deadline = deadline  # loop.time()
        self.request = request
        self.timeout = timeout


class Calls:
    """The awaited calls of one client (or server): their futures and their reply queue."""

    def __init__(self, outbox: Outbox, io: IOThread, service_name: str, exchange: str) -> None:
        self._outbox = outbox
        self._io = io
        self._loop = outbox.loop
        self._service_name = service_name
        self._pending: Dict[str, _Waiting] = {}
        # One timer for every call's deadline (a timer per call costs each call a heap
        # push and a cancelled handle: bench scenario 8, client CPU per call).
        self._expiry: Optional[asyncio.TimerHandle] = None
        self._expiry_at = math.inf
        self._arrived: List[Tuple[str, Answer]] = []
        self._arrived_lock = threading.Lock()
        self._started: Optional[asyncio.Future[None]] = None
        self.queue = f"{service_name}.replies.{uuid.uuid4().hex}"
        #: Exchange the answers come back on (see :func:`tavrida.replies.reply_exchange_of`).
        self.exchange = exchange

    @property
    def in_flight(self) -> int:
        """Calls waiting for their answer."""
        return len(self._pending)

    # ------------------------------------------------------------------ the reply queue

    def _declare(self, timeout: float) -> None:
        """Declare and consume the reply queue (on the I/O thread)."""
        transport = self._io.transport
        with transport.deadline(timeout):
            transport.declare(Topology.build(exchanges=[self.exchange]))
            transport.declare_reply_queue(
                self.queue, [Binding(self.queue, self.exchange, self._service_name)])
            transport.consume(self.queue, self._on_message, 0)

    async def _start(self, timeout: float) -> None:
        if not self._service_name:
            raise exceptions.TavridaError(
                "awaited calls need a client source: the service name answers are sent to")
        started = self._started
        if started is None or (started.done() and started.exception() is not None):
            started = self._started = asyncio.wrap_future(
                self._io.submit(lambda: self._declare(timeout)))
        await asyncio.shield(started)

    def _on_message(self, delivery: Delivery) -> None:
        """An answer (on the I/O thread): decoded here, paired with its call on the loop."""
        try:
            message = wire.decode(delivery.body, delivery.headers, delivery.properties)
            answer: Answer = message
            request_id = message.request_id
            is_answer = message.message_type in (messages.RESPONSE, messages.ERROR)
        except exceptions.IncorrectMessage as exc:
            LOG.error("dropping a bad message on reply queue %s: %s", self.queue, exc)
            headers = exc.headers or {}
            answer = exc
            request_id = str(headers.get("request_id", ""))
            is_answer = headers.get("message_type") in (messages.RESPONSE, messages.ERROR)
        delivery.ack()
        if not is_answer:
            LOG.warning("dropping a message that is no answer on reply queue %s", self.queue)
            return
        with self._arrived_lock:
            first = not self._arrived
            self._arrived.append((request_id, answer))
        if first:  # one hop for the answers that arrive before the loop takes them
            self._loop.call_soon_threadsafe(self._pair)

    def _pair(self) -> None:
        """Hand the answers that arrived to their callers (on the loop)."""
        with self._arrived_lock:
            arrived, self._arrived = self._arrived, []
        pending = self._pending
        for request_id, answer in arrived:
            waiting = pending.pop(request_id, None)
            future = None if waiting is None else waiting.future
            if future is None or future.done():
                LOG.debug("dropping an answer nobody waits for (late, cancelled or another "
                          "client's): request %s", request_id)
                continue
            future.set_result(answer)

    # ------------------------------------------------------------------ calls

    async def call(self, request: messages.Request, timeout: float) -> Dict[str, Any]:
        """Send ``request`` and await its answer: the payload, or raise as the blocking call does.

        :class:`~tavrida.exceptions.RemoteError` for an Error answer,
        :class:`~tavrida.exceptions.CallTimeout` when none comes within
        ``timeout``, :class:`~tavrida.exceptions.Unroutable` or
        :class:`~tavrida.exceptions.PublishFailed` when the request was
        refused (:class:`~tavrida.exceptions.PublishConnectionFailed`: the
        broker could not be reached in time).
        """
        loop = self._loop
        deadline = loop.time() + timeout
        if self._started is None or not self._started.done() or \
                self._started.exception() is not None:
            try:
                await asyncio.wait_for(self._start(timeout), timeout)
            except asyncio.TimeoutError:
                raise self._timeout(request, timeout) from None
        request_id = request.request_id
        future: asyncio.Future[Answer] = loop.create_future()
        # The first call after a quiet spell wakes the drain (waiting for an answer up to
        # a second): its refusal (Unroutable) is read then. Later ones' answers wake it.
        idle = not self._pending
        waiting = self._pending[request_id] = _Waiting(future, deadline, request, timeout)
        if deadline < self._expiry_at:
            self._arm(deadline)

        def failed(exc: Optional[Exception]) -> None:
            if exc is not None and not future.done():
                self._forget(request_id, waiting)
                future.set_exception(exc)

        sending = None
        try:
            sending = self._outbox.send(
                request, time.monotonic() + max(deadline - loop.time(), 0.0), failed,
                failures_only=True, wake=idle)
            answer = await future
        finally:
            self._forget(request_id, waiting)
            if sending is not None:
                # Answered (which proves it was routed), timed out or cancelled: its
                # confirm is not needed, and it is not written again after a cut.
                sending.drop()
        return payload_of(request, answer)

    def _forget(self, request_id: str, waiting: _Waiting) -> None:
        if self._pending.get(request_id) is waiting:
            del self._pending[request_id]

    def _arm(self, when: float) -> None:
        """Make the one deadline timer fire at ``when`` (loop time)."""
        if self._expiry is not None:
            self._expiry.cancel()
        self._expiry_at = when
        self._expiry = self._loop.call_at(when, self._expire)

    def _expire(self) -> None:
        """Time out the calls whose deadline passed; arm the timer for the next one."""
        self._expiry, self._expiry_at = None, math.inf
        now = self._loop.time()
        earliest = math.inf
        expired = []
        for request_id, waiting in self._pending.items():
            if waiting.deadline <= now:
                expired.append(request_id)
            elif waiting.deadline < earliest:
                earliest = waiting.deadline
        for request_id in expired:
            waiting = self._pending.pop(request_id)
            if not waiting.future.done():
                waiting.future.set_exception(self._timeout(waiting.request, waiting.timeout))
        if earliest < math.inf:
            self._arm(earliest)

    @staticmethod
    def _timeout(request: messages.Request, timeout: float) -> exceptions.CallTimeout:
        return exceptions.CallTimeout(destination=request.destination, timeout=timeout,
                                      correlation_id=request.correlation_id)

    def close(self) -> None:
        """Fail the calls still waiting: the client is closing."""
        pending, self._pending = self._pending, {}
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry, self._expiry_at = None, math.inf
        for waiting in pending.values():
            if not waiting.future.done():
                waiting.future.set_exception(exceptions.TavridaError("the client closed"))

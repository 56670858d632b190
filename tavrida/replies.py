"""Blocking calls: wait for the answer to a request.

How answers reach a client without changing how services answer (so a
tavrida 1.0 service can answer a 2.0 client): a service sends a response
to ``discovery.get_remote(<caller service>)`` with the bare caller service
name as routing key. The client's reply exchange is its own ``source``
service's exchange in its discovery when registered there (``[client_app]
exchange=client_app_exchange`` in a ``.ds`` file), else
:data:`DEFAULT_REPLY_EXCHANGE`. On its first blocking call it declares a
private reply queue that goes away with its connection, bound to that
exchange with the routing key ``client_app``. Every call names that
exchange in its ``x-tavrida-reply-exchange`` header, so a 2.0 service
answers the client without a discovery entry for it (a 1.0 service needs
one: it ignores the header).
Answers are matched to callers by ``request_id``; answers nobody waits for
(late, after a timeout, or for another client of the same name) are logged
and dropped.

``call(timeout=T)`` returns or raises within ``T`` seconds (plus a few
milliseconds) whether the broker is up or not: declaring the reply queue,
connecting, publishing the request and waiting for its answer all share
that one deadline (:meth:`tavrida.transports.base.Transport.deadline`).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from concurrent.futures import CancelledError
from typing import Any, Dict, List, Optional, Union

from tavrida import defaults, exceptions, messages, wire
from tavrida.discovery import AbstractDiscovery
from tavrida.sender import Sender
from tavrida.transports.base import Binding, Confirmation, Delivery, Topology

LOG = logging.getLogger(__name__)

#: Exchange a client's answers come back on when its discovery does not name one.
DEFAULT_REPLY_EXCHANGE = defaults.REPLY_EXCHANGE


def reply_exchange_of(discovery: AbstractDiscovery, service_name: str) -> str:
    """The exchange the answers to ``service_name``'s blocking calls come back on.

    Its own exchange in ``discovery`` when registered there, else
    :data:`DEFAULT_REPLY_EXCHANGE` ("" without a service name: no blocking calls).
    """
    if not service_name:
        return ""
    try:
        return discovery.get_remote(service_name)
    except exceptions.UnableToDiscover:
        return DEFAULT_REPLY_EXCHANGE


class _TimedOut(Exception):
    """The call's deadline passed before its request could go out or be confirmed."""


class _Waiter:
    """One blocking call: its answer, and the condition that wakes its caller alone."""

    __slots__ = ("answer", "request", "wake")

    def __init__(self) -> None:
        #: The answer, or why the answer that came could not be read.
        self.answer: Optional[Union[messages.Message, exceptions.IncorrectMessage]] = None
        #: The request's confirmation: cancelled by the answer (which proves it was routed).
        self.request: Optional[Confirmation] = None
        #: Made when the caller first waits for another drainer (most never do).
        self.wake: Optional[threading.Condition] = None

    def notify(self) -> None:
        if self.wake is not None:
            self.wake.notify()


class Replies:
    """Receives the answers to one client's blocking calls, from any number of threads.

    No thread of its own: a waiting caller drains the reply queue itself
    (one at a time), so an answer reaches its caller without a thread hop.
    An answer for another caller wakes that caller alone, and a drainer that
    got its own answer hands draining to one waiting caller (waking every
    caller for every answer cost more than the calls with 16 threads).
    """

    def __init__(self, sender: Sender, service_name: str, exchange: str) -> None:
        self._sender = sender
        self._service_name = service_name
        self._pending: Dict[str, _Waiter] = {}
        self._lock = threading.Lock()
        self._drainer = False  # a caller is draining the reply queue
        self._idle: List[_Waiter] = []  # callers waiting while another drains
        self._started = False
        self._start_lock = threading.Lock()  # taken with the caller's deadline
        self.queue = f"{service_name}.replies.{uuid.uuid4().hex}"
        #: Exchange the answers come back on (see :func:`reply_exchange_of`).
        self.exchange = exchange

    @property
    def sender(self) -> Sender:
        """The sender this object publishes its calls' requests with."""
        return self._sender

    def _start(self, deadline: float) -> None:
        """Declare and consume the reply queue once (first caller; others wait until deadline)."""
        if self._started:
            return
        if not self._start_lock.acquire(timeout=max(deadline - time.monotonic(), 0.0)):
            raise _TimedOut()
        try:
            if self._started:
                return
            if not self._service_name:
                raise exceptions.TavridaError(
                    "blocking calls need a client source: the service name answers are sent to")
            exchange = self.exchange
            transport = self._sender.transport
            assert transport is not None
            transport.declare(Topology.build(exchanges=[exchange]))
            transport.declare_reply_queue(
                self.queue, [Binding(self.queue, exchange, self._service_name)])
            transport.consume(self.queue, self._on_message, 0)
            self._started = True
        finally:
            self._start_lock.release()

    def _wait(self, waiter: _Waiter, deadline: float) -> bool:
        transport = self._sender.transport
        assert transport is not None
        while True:
            with self._lock:
                remaining = deadline - time.monotonic()
                if waiter.answer is not None or remaining <= 0:
                    if not self._drainer and self._idle:
                        self._idle[0].notify()  # it may have been handed draining
                    return waiter.answer is not None
                if self._drainer:
                    if waiter.wake is None:
                        waiter.wake = threading.Condition(self._lock)
                    self._idle.append(waiter)
                    try:
                        waiter.wake.wait(min(remaining, 0.2))
                    finally:
                        self._idle.remove(waiter)
                    continue
                self._drainer = True
            try:
                while waiter.answer is None and remaining > 0:
                    try:
                        transport.drain(min(remaining, 0.2))
                    except exceptions.ConnectionFailed:
                        if time.monotonic() < deadline:
                            raise  # reconnect attempts ran out before the deadline
                    remaining = deadline - time.monotonic()
            finally:
                with self._lock:
                    self._drainer = False
                    if self._idle:
                        self._idle[0].notify()  # another caller drains now

    def _on_message(self, delivery: Delivery) -> None:
        try:
            answer = wire.decode(delivery.body, delivery.headers, delivery.properties)
        except exceptions.IncorrectMessage as exc:
            LOG.error("dropping a bad message on reply queue %s: %s", self.queue, exc)
            self._unreadable(exc)
            delivery.ack()
            return
        waiter = None
        if answer.message_type in (messages.RESPONSE, messages.ERROR):
            with self._lock:
                waiter = self._pending.pop(answer.request_id, None)
                if waiter is not None:
                    waiter.answer = answer
                    waiter.notify()
        if waiter is None:
            LOG.warning("dropping an answer nobody waits for (late or another client's): %r",
                        answer)
        elif waiter.request is not None:
            # The answer proves the request was routed: its confirm is not needed (a
            # cut no longer sends it again), and its caller stops waiting for it.
            waiter.request.cancel()
        delivery.ack()

    def _unreadable(self, exc: exceptions.IncorrectMessage) -> None:
        """An answer whose headers name its call but whose body cannot be read: tell the caller.

        (Over :data:`tavrida.wire.DEFAULT_MAX_BODY_SIZE`, not JSON...: its caller
        learns it at once instead of waiting for its timeout.)
        """
        headers = exc.headers or {}
        if headers.get("message_type") not in (messages.RESPONSE, messages.ERROR):
            return
        with self._lock:
            waiter = self._pending.pop(str(headers.get("request_id", "")), None)
            if waiter is not None:
                waiter.answer = exc
                waiter.notify()
        if waiter is not None and waiter.request is not None:
            waiter.request.cancel()

    def call(self, request: messages.Request, timeout: float) -> Dict[str, Any]:
        """Send ``request`` and wait for its answer: the payload, or raise.

        Raises :class:`~tavrida.exceptions.RemoteError` for an Error answer,
        :class:`~tavrida.exceptions.CallTimeout` when none comes in time,
        :class:`~tavrida.exceptions.ConnectionFailed` when the request could
        not be sent within ``timeout`` (broker unreachable),
        :class:`~tavrida.exceptions.Unroutable` when no queue takes it and
        :class:`~tavrida.exceptions.IncorrectMessage` when its answer came
        but cannot be read (a body over the size limit, not JSON).
        """
        deadline = time.monotonic() + timeout
        transport = self._sender.transport
        assert transport is not None
        waiter = _Waiter()
        try:
            with transport.deadline(timeout):
                if not self._started:
                    self._start(deadline)
                with self._lock:
                    self._pending[request.request_id] = waiter
                confirmation = self._sender.publish(request)
                waiter.request = confirmation
                if waiter.answer is not None:
                    confirmation.cancel()  # answered while it was written
                # Its confirm or its answer, whichever comes first; a request the broker
                # refused raises as a publish does. (Inline: bench.profiling "call,
                # tavrida: client" calls/message.)
                try:
                    confirmation.wait(max(deadline - time.monotonic(), 0.0))
                except CancelledError:
                    pass  # cancelled by its answer
                except TimeoutError:
                    confirmation.cancel()  # its caller gives up: not written again after a cut
                    raise _TimedOut() from None
                self._wait(waiter, deadline)
        except _TimedOut:
            pass
        finally:
            with self._lock:
                self._pending.pop(request.request_id, None)
        if waiter.answer is None:
            raise exceptions.CallTimeout(destination=request.destination, timeout=timeout,
                                         correlation_id=request.correlation_id)
        return payload_of(request, waiter.answer)

    def close(self) -> None:
        """Forget the calls still waiting (they time out)."""
        with self._lock:
            self._pending.clear()


def payload_of(request: messages.Request,
               answer: Union[messages.Message, exceptions.IncorrectMessage]) -> Dict[str, Any]:
    """A call's outcome from its answer: the Response's payload, or raise.

    :class:`~tavrida.exceptions.RemoteError` for an Error,
    :class:`~tavrida.exceptions.IncorrectMessage` for an answer that came
    but cannot be read (also used by :mod:`tavrida.aio`).
    """
    if isinstance(answer, exceptions.IncorrectMessage):
        raise exceptions.IncorrectMessage(
            reason=f"the answer of {request.destination} came but cannot be read: "
                   f"{answer.kwargs.get('reason', answer)}")
    if answer.message_type == messages.ERROR:
        payload = answer.payload
        remote_class = str(payload.get("class", ""))
        code = payload.get("code", messages.DEFAULT_ERROR_CODE)
        raise exceptions.RemoteError(
            remote_class=remote_class,
            remote_name=str(payload.get("name") or remote_class.rpartition(".")[2]),
            remote_message=str(payload.get("message", "")),
            code=code if isinstance(code, int) else messages.DEFAULT_ERROR_CODE)
    return answer.payload

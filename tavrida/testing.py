"""Test helpers: run services in-process on the in-memory transport.

::

    from tavrida import testing

    with testing.MemoryCluster() as cluster:
        cluster.add_server([HelloController, WorldController])
        cli = cluster.client(disc, source="client_app")
        cli.test_hello.hello(param=1).call()
        cluster.deliver()                    # until idle; raises on unanswered failures
        assert cluster.sent_by("test_world").responses[0].payload == {...}

        answer = cli.test_hello.hello(param=2).call(timeout=5)   # blocking calls work too

    result = testing.call_handler(HelloController, "hello", param=1)
    assert result.response == {...} and result.sent.requests

Every cluster has its own in-memory broker, so tests do not see each
other's messages. Nothing runs in the background: :meth:`MemoryCluster.deliver`
(and a blocking call of a cluster's client) hands messages to the servers in
the calling thread until no queue has work, so a test sees one order of events.

Why one module of over 400 lines: it is the public testing kit, one import
for a test (``from tavrida import testing``); :class:`MemoryCluster` (a whole
deployment in-process) and :func:`call_handler` (one handler, no broker)
share its record of what was sent (:class:`Capture`).
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Type, Union

from tavrida import client as client_mod
from tavrida import config as config_mod
from tavrida import discovery as discovery_mod
from tavrida import exceptions, messages, wire
from tavrida.answers import Answers, ErrorHook
from tavrida.dispatcher import Handler
from tavrida.observability.hooks import ServerHook
from tavrida.proxies import RPCProxy
from tavrida.server import Server
from tavrida.service import ServiceController
from tavrida.transports.memory import MemoryBroker, MemoryTransport

#: What ``expect_errors`` takes: an exception class or a tuple of them.
ExpectedErrors = Union[Type[BaseException], Tuple[Type[BaseException], ...]]


class Capture:
    """What one service or client sent, in order, split by kind."""

    def __init__(self) -> None:
        self.all: List[messages.Message] = []

    def __call__(self, message: messages.Message) -> None:
        self.all.append(message)

    def _of(self, message_type: str) -> List[messages.Message]:
        return [m for m in self.all if m.message_type == message_type]

    @property
    def requests(self) -> List[messages.Message]:
        return self._of(messages.REQUEST)

    @property
    def responses(self) -> List[messages.Message]:
        return self._of(messages.RESPONSE)

    @property
    def errors(self) -> List[messages.Message]:
        return self._of(messages.ERROR)

    @property
    def notifications(self) -> List[messages.Message]:
        return self._of(messages.NOTIFICATION)

    def clear(self) -> None:
        self.all.clear()


class HandlerFailed(AssertionError):
    """A handler raised and no Error answer told a caller; the original is the cause."""


class Failure:
    """One handler (or incoming middleware) that raised, as a cluster saw it."""

    __slots__ = ("answered", "exception", "message")

    def __init__(self, message: Optional[messages.Message], exception: BaseException) -> None:
        #: The message the handler got.
        self.message = message
        #: What it raised.
        self.exception = exception
        #: True once an Error answer for it was sent to the caller.
        self.answered = False

    def __repr__(self) -> str:
        state = "answered with an Error" if self.answered else "unanswered"
        return f"<Failure {self.exception!r} on {self.message!r}: {state}>"


def _expected(exc: BaseException, expect_errors: ExpectedErrors) -> bool:
    return bool(expect_errors) and isinstance(exc, expect_errors)


class _ClusterTransport(MemoryTransport):
    """A cluster client's connection: while it waits, the cluster's servers run here.

    A blocking ``call(timeout=...)`` drains its reply queue until the answer
    comes; this drain first lets the servers handle what is waiting, in the
    calling thread, so the answer is produced without any background thread.
    """

    def __init__(self, config: config_mod.ConnectionConfig, cluster: MemoryCluster) -> None:
        super().__init__(config)
        self._cluster = cluster

    def drain(self, timeout: Optional[float]) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if super().drain(0):
                return True
            if not self._cluster._step():
                remaining = None if deadline is None else deadline - time.monotonic()
                if self._cluster._retries_pending():
                    # A retry is waiting for its delay: look again soon.
                    if super().drain(0.05 if remaining is None else min(max(remaining, 0), 0.05)):
                        return True
                    if deadline is not None and time.monotonic() >= deadline:
                        return False
                    continue
                # Idle: only another thread can still send anything.
                return super().drain(remaining if remaining is None else max(remaining, 0.0))
            self._cluster._raise_unanswered(())
            if deadline is not None and time.monotonic() >= deadline:
                return False


class _FailureHook(ServerHook):
    """Tells a cluster of each failure of its servers' messages."""

    def __init__(self, on_failure: ErrorHook) -> None:
        self._on_failure = on_failure

    def message_failed(self, server: Server, message: Optional[messages.Message],
                       exc: BaseException, by_handler: bool) -> None:
        self._on_failure(message, exc, by_handler)


class MemoryCluster:
    """Servers and clients sharing one private in-memory broker.

    Messages to services that are not in the cluster are captured and
    dropped; with ``strict_routing=True`` sending them raises
    :class:`~tavrida.exceptions.Unroutable`, as on a real broker.
    """

    def __init__(self, name: Optional[str] = None, strict_routing: bool = False) -> None:
        self.name = name or f"tavrida-test-{uuid.uuid4().hex}"
        self.broker.drop_unroutable = not strict_routing
        self.config = config_mod.ConnectionConfig.from_url(f"memory://{self.name}")
        self.servers: List[Server] = []
        self.clients: List[client_mod.RPCClient] = []
        #: Every handler failure seen so far, answered or not (see :meth:`deliver`).
        self.failures: List[Failure] = []
        self._captures: Dict[str, Capture] = {}
        self._unreported: List[Failure] = []
        self._unanswered_calls: Dict[str, Failure] = {}
        # Servers are driven by one thread at a time (re-entrant: a handler may
        # make a blocking call through a cluster client).
        self._lock = threading.RLock()

    @property
    def broker(self) -> MemoryBroker:
        """The in-memory broker (peek at queues with it)."""
        return MemoryBroker.get(self.name)

    def sent_by(self, name: str) -> Capture:
        """What service (or client source) ``name`` has sent so far."""
        return self._captures.setdefault(name, Capture())

    def add_server(self, service_list: Iterable[Type[ServiceController]],
                   queue_name: Optional[str] = None, exchange_name: Optional[str] = None,
                   **kwargs: Any) -> Server:
        """Start a server for ``service_list``; names default to the first service's."""
        service_list = list(service_list)
        first = service_list[0].service_name() if service_list else "service"
        kwargs["hooks"] = [*kwargs.get("hooks", ()), _FailureHook(self._on_error)]
        server = Server(self.config, queue_name or f"{first}_queue",
                        exchange_name or f"{first}_exchange", service_list, **kwargs)
        server.start()
        for controller in server.controllers:
            controller.postprocessor.observers.append(self.sent_by(controller.service_name()))
            controller.postprocessor.observers.append(self._on_sent)
        self.servers.append(server)
        return server

    def client(self, discovery: discovery_mod.AbstractDiscovery, source: str = "client",
               **kwargs: Any) -> client_mod.RPCClient:
        """An RPCClient on this cluster's broker; what it sends is captured under ``source``.

        Its blocking calls (``call(timeout=...)``) run the cluster's servers
        in the calling thread until the answer arrives or the timeout passes.
        """
        kwargs.setdefault("transport", _ClusterTransport(self.config, self))
        cli = client_mod.RPCClient(self.config, discovery, source=source, **kwargs)
        cli.sender.observers.append(self.sent_by(source.partition(".")[0]))
        self.clients.append(cli)
        return cli

    def _on_error(self, message: Optional[messages.Message], exc: BaseException,
                  by_handler: bool) -> None:
        if not by_handler:
            return  # bad messages, no handler...: logged and dead-lettered or answered
        failure = Failure(message, exc)
        self.failures.append(failure)
        self._unreported.append(failure)
        if isinstance(message, messages.IncomingRequestCall):
            self._unanswered_calls[message.request_id] = failure

    def _on_sent(self, message: messages.Message) -> None:
        if message.message_type == messages.ERROR:
            failure = self._unanswered_calls.pop(message.request_id, None)
            if failure is not None:
                failure.answered = True

    def _step(self) -> bool:
        """Let every server handle what is waiting; True if any message was taken."""
        with self._lock:
            busy = False
            for server in self.servers:
                busy = server.drain(0) or busy
            return busy

    def _retries_pending(self) -> bool:
        """True while a message whose handler asked for a retry waits for its delay."""
        return bool(self.broker.delays) or any(server.pending_retries
                                               for server in self.servers)

    def _raise_unanswered(self, expect_errors: ExpectedErrors) -> None:
        failures, self._unreported = self._unreported, []
        self._unanswered_calls.clear()
        for failure in failures:
            if not failure.answered and not _expected(failure.exception, expect_errors):
                exc = failure.exception
                raise HandlerFailed(f"handler raised {exc!r} on {failure.message!r} and no "
                                    f"Error answer told a caller") from exc

    def deliver(self, timeout: float = 5.0, raise_errors: bool = True,
                expect_errors: ExpectedErrors = ()) -> int:
        """Hand waiting messages to the servers until every queue is idle.

        A message whose handler asked for a retry counts as work until it
        ran again or was given up (see :mod:`tavrida.retries`): the broker's
        clock is moved ahead to its delay (:meth:`MemoryBroker.advance`), so
        a test never waits for a backoff.
        Returns how many messages were taken. A called handler that raises
        answers its caller with an Error (the caller's error handler runs):
        that is not a test failure. A handler failure no Error answer covers
        (a cast, a notification, an answer handler, an Error that could not
        be sent) raises :class:`HandlerFailed`, caused by the handler's
        exception, unless it is an instance of ``expect_errors`` (a class
        or tuple) or ``raise_errors`` is false. Every failure is kept in
        :attr:`failures`. Raises TimeoutError when the services are still
        busy after ``timeout`` seconds (for example a ping-pong loop).
        """
        deadline = time.monotonic() + timeout
        before = sum(server.handled for server in self.servers)
        while True:
            busy = self._step()
            if raise_errors:
                self._raise_unanswered(expect_errors)
            if not busy:
                if not self._retries_pending():
                    return sum(server.handled for server in self.servers) - before
                with self.broker.lock:
                    due = self.broker.delays.next_due()
                if due is not None:
                    self.broker.advance(due)  # the next retry's backoff, skipped
                    continue
                with self._lock:
                    for server in self.servers:
                        if server.pending_retries:
                            server.drain(0.05)  # wakes when the retry is published
                            break
            if time.monotonic() > deadline:
                raise TimeoutError(f"services still busy after {timeout}s")

    def dead_letters(self, queue_name: str) -> List[Tuple[Dict[str, Any], bytes]]:
        """(headers, body) of the messages in ``queue_name``'s dead-letter queue."""
        return self.broker.messages(queue_name + ".dead")

    def close(self) -> None:
        """Close servers and clients and drop the broker."""
        for server in self.servers:
            server.close()
        for cli in self.clients:
            cli.close()
        MemoryBroker.reset(self.name)

    def __enter__(self) -> MemoryCluster:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


# --------------------------------------------------------------------------- one handler


class RecordingSender:
    """A postprocessor that records what a controller sends instead of publishing it.

    Messages are still encoded as for the wire, so a payload that could not
    travel (not JSON) fails here as it would on a broker.
    """

    def __init__(self, discovery: Optional[discovery_mod.AbstractDiscovery] = None,
                 source: str = "") -> None:
        self.discovery = discovery or discovery_mod.LocalDiscovery()
        self.source = source
        self.transport = None
        #: Everything sent so far.
        self.sent = Capture()
        self.observers: List[Any] = [self.sent]

    def send(self, message: messages.Message) -> None:
        wire.encode(message)
        for observer in self.observers:
            observer(message)

    def send_many(self, batch: Iterable[messages.Message]) -> None:
        for message in batch:
            self.send(message)

    def heartbeat(self) -> None:
        """Nothing to keep alive."""


class HandlerResult:
    """What :func:`call_handler` saw: the answer, what was sent, what was raised."""

    def __init__(self, controller: ServiceController, message: messages.Message,
                 sent: Capture) -> None:
        #: The controller the handler ran on (look at its state).
        self.controller = controller
        #: The incoming message the handler got.
        self.message = message
        #: What the handler sent through its proxy (requests, notifications...).
        self.sent = sent
        #: The Response or Error a call is answered with (None for other messages).
        self.answer: Optional[messages.Message] = None
        #: What the handler (or a middleware) raised, or None.
        self.exception: Optional[BaseException] = None

    @property
    def response(self) -> Optional[Dict[str, Any]]:
        """The payload of the Response answer, or None."""
        answer = self.answer
        return answer.payload if answer is not None and \
            answer.message_type == messages.RESPONSE else None

    @property
    def error(self) -> Optional[Dict[str, Any]]:
        """The payload of the Error answer (``class``, ``name``, ``message``, ``code``)."""
        answer = self.answer
        return answer.payload if answer is not None and \
            answer.message_type == messages.ERROR else None

    def __repr__(self) -> str:
        return (f"<HandlerResult answer={self.answer!r} exception={self.exception!r} "
                f"sent={len(self.sent.all)}>")


def _find_handler(cls: Type[ServiceController], name: str,
                  message_type: Optional[str]) -> Handler:
    found = [h for h in cls.get_dispatcher().handlers.values()
             if h.method_name == name and message_type in (None, h.message_type)]
    if len(found) != 1:
        kinds = sorted(h.message_type for h in cls.get_dispatcher().handlers.values()
                       if h.method_name == name)
        reason = (f"handles {', '.join(kinds)}: say which with message_type="
                  if kinds else "is not a handler")
        raise ValueError(f"{cls.__qualname__}.{name} {reason}")
    return found[0]


def _incoming(handler: Handler, service_name: str, payload: Mapping[str, Any],
              context: Optional[Mapping[str, Any]], headers: Mapping[str, Any],
              correlation_id: str, source: str, cast: bool) -> messages.Message:
    """The message a server would hand ``handler``, built through the wire format."""
    ep = str(handler.entry_point)
    fields: Dict[str, Any] = dict(headers)
    fields["correlation_id"] = correlation_id
    kind = handler.message_type
    if kind == messages.REQUEST:
        src = source or "tester"
        fields.update(source=src, destination=ep,
                      reply_to="" if cast else src.partition(".")[0])
        outgoing: messages.Message = messages.Request(fields, context, payload)
    elif kind == messages.NOTIFICATION:
        fields.update(source=ep, destination="")
        outgoing = messages.Notification(fields, context, payload)
    else:
        fields.update(source=ep, destination=service_name)
        cls = messages.BaseResponse if kind == messages.RESPONSE else messages.BaseError
        outgoing = cls(fields, context, payload)
    body, wire_headers = wire.encode(outgoing)
    message = wire.decode(body, wire_headers)
    message.update_context(message.payload)
    return message


def call_handler(controller: Union[Type[ServiceController], ServiceController], handler: str,
                 payload: Optional[Mapping[str, Any]] = None, *,
                 context: Optional[Mapping[str, Any]] = None,
                 headers: Optional[Mapping[str, Any]] = None, correlation_id: str = "",
                 source: str = "", cast: bool = False, message_type: Optional[str] = None,
                 expect_errors: ExpectedErrors = (), **kwargs: Any) -> HandlerResult:
    """Run one handler as a server would, with a recording proxy; no broker involved.

    ``controller`` is a service class (instantiated with a
    :class:`RecordingSender`) or a controller you made with one.
    ``handler`` is the handler method's name; the payload is ``payload``
    updated with ``kwargs``. A request handler gets a call from ``source``
    (default ``tester``), or a cast with ``cast=True``; response, error and
    subscription handlers get an answer or notification from their entry
    point. Incoming and outgoing middlewares run.

    The result has the ``answer`` (``response`` / ``error`` payloads),
    what the handler ``sent`` and the ``exception`` it raised. As in
    :meth:`MemoryCluster.deliver`, a raise that no Error answer covers
    (anything but a call) raises :class:`HandlerFailed` unless it is an
    instance of ``expect_errors``.
    """
    if isinstance(controller, type):
        instance = controller(RecordingSender(controller.get_discovery(),
                                              controller.service_name()))
    else:
        instance = controller
    cls = type(instance)
    found = _find_handler(cls, handler, message_type)
    message = _incoming(found, cls.service_name(), {**(payload or {}), **kwargs}, context,
                        headers or {}, correlation_id or messages.new_correlation_id(), source,
                        cast)
    sent = Capture()
    postprocessor = instance.postprocessor
    observers = getattr(postprocessor, "observers", None)
    if observers is None:
        raise TypeError("call_handler needs a controller made with a RecordingSender "
                        "(or a Sender): its postprocessor has no observers")
    observers.append(sent)
    result = HandlerResult(instance, message, sent)
    try:
        proxy = RPCProxy(postprocessor, Server._proxy_source(message, instance, found.method_name),
                         message.context, message.correlation_id,
                         messages.user_headers(message.headers))
        try:
            result.answer = instance.process(found, message, proxy)
        except Exception as exc:  # noqa: BLE001 - reported in the result, as the server does
            result.exception = exc
            if isinstance(message, messages.IncomingRequestCall) and \
                    not isinstance(exc, exceptions.NackableException):
                result.answer = Answers.error_answer(instance, message, exc)
            elif not _expected(exc, expect_errors):
                raise HandlerFailed(f"handler {handler} raised {exc!r} on {message!r} and no "
                                    f"Error answer told a caller") from exc
            else:
                return result
        instance.message_done(message, result.answer)
    finally:
        observers.remove(sent)
    return result


__all__ = ["Capture", "Failure", "HandlerFailed", "HandlerResult", "MemoryCluster",
           "RecordingSender", "call_handler"]

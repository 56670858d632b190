"""call_handler: run one handler, no broker, and see what it answered and sent."""

from __future__ import annotations

import asyncio
import functools
from typing import Any, Dict, Iterable, List, Mapping, Optional, Type, Union

from tavrida import discovery as discovery_mod
from tavrida import exceptions, messages, wire
from tavrida.aio.proxies import direct_proxy
from tavrida.answers import Answers
from tavrida.dispatcher import Handler
from tavrida.handling import proxy_source
from tavrida.proxies import RPCProxy
from tavrida.service import ServiceController
from tavrida.testing.capture import Capture, ExpectedErrors, HandlerFailed, is_expected
from tavrida.transports.base import Confirmation, OutgoingEnvelope


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

    def publish(self, message: messages.Message) -> Confirmation:
        """Record ``message``; its confirmation is settled (confirmed) at once."""
        body, headers = wire.encode(message)
        for observer in self.observers:
            observer(message)
        return Confirmation.confirmed(OutgoingEnvelope("", "", body, headers))

    def send(self, message: messages.Message) -> None:
        self.publish(message)

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
    if instance.async_proxy is None:  # an async def handler's proxy is awaitable
        instance.async_proxy = direct_proxy
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
        proxy = RPCProxy(postprocessor, proxy_source(message, instance, found.method_name),
                         message.context, message.correlation_id,
                         messages.user_headers(message.headers))
        try:
            result.answer = instance.process(found, message, proxy)
        except Exception as exc:  # noqa: BLE001 - reported in the result, as the server does
            result.exception = exc
            if isinstance(message, messages.IncomingRequestCall) and \
                    not isinstance(exc, exceptions.NackableException):
                result.answer = Answers.error_answer(instance, message, exc)
            elif not is_expected(exc, expect_errors):
                raise HandlerFailed(f"handler {handler} raised {exc!r} on {message!r} and no "
                                    f"Error answer told a caller") from exc
            else:
                return result
        instance.message_done(message, result.answer)
    finally:
        observers.remove(sent)
    return result


async def acall_handler(controller: Union[Type[ServiceController], ServiceController],
                        handler: str, payload: Optional[Mapping[str, Any]] = None,
                        **options: Any) -> HandlerResult:
    """:func:`call_handler` from an async test: ``await testing.acall_handler(...)``.

    An ``async def`` handler runs on the test's loop (what it awaits may be
    the test's); the call itself, which waits for it, on a worker thread.
    """
    if isinstance(controller, type):
        controller = controller(RecordingSender(controller.get_discovery(),
                                                controller.service_name()))
    loop = asyncio.get_running_loop()
    controller.loop = loop
    return await loop.run_in_executor(
        None, functools.partial(call_handler, controller, handler, payload, **options))

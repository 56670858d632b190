"""Proxies: how handlers and clients call remote services and publish.

``proxy.<service>.<method>(**payload)`` builds an :class:`RPCCallProxy`;
its :meth:`~RPCCallProxy.call` sends a request that expects an answer (a
response or error handler gets it), :meth:`~RPCCallProxy.cast` one that
expects none, and :meth:`~RPCCallProxy.transfer` forwards a request.
``proxy.publish(**payload)`` sends a notification, and
``proxy.publish_event("order_placed", **payload)`` a named event (see
:mod:`tavrida.events`).

A proxy handed to a handler carries the handled message's context,
correlation id and user headers on to every message it sends.
"""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional, Union, overload

from tavrida import entry_point, events, exceptions, messages

if TYPE_CHECKING:  # only a client has one; importing it would pull the transports in
    from tavrida.replies import Replies

EntryPointLike = Union[str, entry_point.EntryPoint]


def _source(value: EntryPointLike) -> entry_point.EntryPoint:
    return entry_point.parse(value, source=True)


def _source_key(value: EntryPointLike) -> str:
    """The header text of a source, checked (what ``str(_source(value))`` gives)."""
    if type(value) is str:
        entry_point.parse_text(value, True, False)  # raises WrongEntryPointFormat
        return value
    if isinstance(value, entry_point.EntryPoint):
        return value.to_routing_key()
    return str(_source(value))


#: Attributes a proxy keeps as it hands them out (``cli.svc.method`` is then found
#: without ``__getattr__``); bounded for code that makes up names as it goes.
_MAX_KEPT = 256


def keep(obj: Any, name: str, value: Any) -> None:
    """Store ``value`` as ``obj.<name>`` so the next lookup needs no ``__getattr__``."""
    attributes = obj.__dict__
    if len(attributes) < _MAX_KEPT:
        attributes[name] = value


def _source_entry_point(value: EntryPointLike) -> entry_point.EntryPoint:
    """What ``_source(value)`` gives, without a copy of an entry point (they are values)."""
    if type(value) is str:
        return entry_point.parse_text(value, True, False)
    if isinstance(value, entry_point.EntryPoint):
        return value
    return _source(value)


#: The reply_to of a call from a service: one shared instance per service name.
_service_entry_point = functools.lru_cache(maxsize=256)(entry_point.ServiceEntryPoint)


def _check_headers(headers: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    if not headers:
        return {}
    headers = dict(headers)
    if headers.keys().isdisjoint(messages.TAVRIDA_HEADERS):
        return headers
    reserved = sorted(set(headers).intersection(messages.TAVRIDA_HEADERS))
    if reserved:
        raise exceptions.ForbiddenHeaders(headers=", ".join(reserved))
    return headers


class RPCCallProxy:
    """One prepared call: destination and payload are set, how to send is not yet."""

    def __init__(self, postprocessor: Any, service_name: str, method_name: str,
                 source: EntryPointLike, context: Optional[Mapping[str, Any]],
                 correlation_id: str, headers: Optional[Mapping[str, Any]],
                 kwargs: Mapping[str, Any], *, calls: Optional[Replies] = None) -> None:
        self._postprocessor = postprocessor
        self._calls = calls
        self._destination_key = f"{service_name}.{method_name}"
        self._source = source
        self._context = context
        self._correlation_id = correlation_id
        self._headers = headers or {}
        self._kwargs = dict(kwargs)

    def _request(self, correlation_id: str, context: Any, reply_to: EntryPointLike,
                 source: EntryPointLike, payload: Mapping[str, Any],
                 request_id: str = "") -> messages.Request:
        # Item by item, not update(**...): this runs for every request sent.
        headers = dict(self._headers) if self._headers else {}
        headers["correlation_id"] = correlation_id or self._correlation_id
        headers["request_id"] = request_id or messages.new_id()
        headers["message_id"] = messages.new_id()
        headers["source"] = _source_key(source if source else self._source)
        headers["destination"] = self._destination_key
        headers["reply_to"] = reply_to if type(reply_to) is str else str(reply_to or "")
        return messages.Request(headers, context or self._context, payload)

    @overload
    def call(self, correlation_id: str = "", context: Any = "", reply_to: EntryPointLike = "",
             source: EntryPointLike = "", timeout: None = None) -> messages.Request: ...

    @overload
    def call(self, correlation_id: str = "", context: Any = "", reply_to: EntryPointLike = "",
             source: EntryPointLike = "", *, timeout: float) -> Dict[str, Any]: ...

    @overload
    def call(self, correlation_id: str = "", context: Any = "", reply_to: EntryPointLike = "",
             source: EntryPointLike = "", *,
             timeout: Optional[float]) -> Union[messages.Request, Dict[str, Any]]: ...

    def call(self, correlation_id: str = "", context: Any = "", reply_to: EntryPointLike = "",
             source: EntryPointLike = "",
             timeout: Optional[float] = None) -> Union[messages.Request, Dict[str, Any]]:
        """Send a request that expects an answer.

        The answer goes to ``reply_to`` (default: the caller's service), whose
        response or error handler gets it; the sent :class:`~tavrida.messages.Request`
        is returned. With ``timeout`` (an :class:`~tavrida.client.RPCClient` only)
        the call blocks and returns the response payload instead; see
        :mod:`tavrida.client`.
        """
        request = self.call_request(correlation_id, context, reply_to, source, timeout)
        if timeout is not None:
            replies = self._calls
            if replies is None:
                raise exceptions.TavridaError(
                    "a blocking call (timeout=...) needs an RPCClient; from a handler "
                    "use call() with a response handler")
            return replies.call(request, timeout)
        self._postprocessor.send(request)
        return request

    def call_request(self, correlation_id: str = "", context: Any = "",
                     reply_to: EntryPointLike = "", source: EntryPointLike = "",
                     timeout: Optional[float] = None) -> messages.Request:
        """The request :meth:`call` sends, unsent (:mod:`tavrida.aio` sends it its own way).

        With ``timeout`` it expires with the call: nobody runs it once its caller gave up.
        """
        src = _source_entry_point(source if source else self._source)
        reply = entry_point.parse(reply_to) if reply_to else _service_entry_point(src.service)
        if not reply.service:
            # An empty reply_to makes the request a cast: the answer would never come.
            raise exceptions.IncorrectOutgoingMessage(
                reason=f"call to {self._destination_key} has no source or reply_to to "
                       f"answer to")
        request = self._request(correlation_id, context, reply.to_routing_key(),
                                src.to_routing_key(), self._kwargs)
        if timeout is not None:
            request.expires_at = time.time() + timeout
        return request

    def cast(self, correlation_id: str = "", context: Any = "",
             source: EntryPointLike = "") -> messages.Request:
        """Send a request that expects no answer."""
        request = self.cast_request(correlation_id, context, source)
        self._postprocessor.send(request)
        return request

    def cast_request(self, correlation_id: str = "", context: Any = "",
                     source: EntryPointLike = "") -> messages.Request:
        """The request :meth:`cast` sends, unsent."""
        return self._request(correlation_id, context, "", source, self._kwargs)

    def transfer(self, request: messages.Message, context: Any = "",
                 reply_to: EntryPointLike = "", source: EntryPointLike = "") -> messages.Request:
        """Forward ``request`` here: its payload (updated with this call's) and correlation id.

        The answer goes to ``reply_to``, by default the forwarded request's
        own ``reply_to``, so the final service answers the first caller.
        """
        payload = dict(request.payload)
        payload.update(self._kwargs)
        # The forwarded request keeps its request_id: the first caller pairs the
        # final answer with its own request by it.
        outgoing = self._request(request.correlation_id, context or request.context,
                                 reply_to or request.reply_to, source, payload,
                                 request.request_id)
        same_caller = outgoing.reply_to == request.reply_to
        if same_caller:
            # The answer goes to the first caller: the exchange its call named, too.
            outgoing.reply_exchange = request.reply_exchange
        self._postprocessor.send(outgoing)
        if same_caller and isinstance(request, messages.IncomingRequestCall):
            request.transferred = True  # the final service answers, not this one
        return outgoing


# 1.0's docs spell it this way.
RCPCallProxy = RPCCallProxy


class RPCMethodProxy:
    """``proxy.service.method``: call it with the payload."""

    def __init__(self, postprocessor: Any, service_name: str, method_name: str,
                 source: EntryPointLike, context: Optional[Mapping[str, Any]] = None,
                 correlation_id: str = "", headers: Optional[Mapping[str, Any]] = None,
                 *, calls: Optional[Replies] = None) -> None:
        self._args = (postprocessor, service_name, method_name, source, context,
                      correlation_id, headers)
        self._calls = calls

    def __call__(self, **kwargs: Any) -> RPCCallProxy:
        return RPCCallProxy(*self._args, kwargs, calls=self._calls)


class RPCServiceProxy:
    """``proxy.service``: pick a method by attribute."""

    def __init__(self, postprocessor: Any, name: str, source: EntryPointLike,
                 context: Optional[Mapping[str, Any]] = None, correlation_id: str = "",
                 headers: Optional[Mapping[str, Any]] = None, *,
                 calls: Optional[Replies] = None) -> None:
        self._postprocessor = postprocessor
        self._calls = calls
        self._name = name
        self._source = source
        self._context = context
        self._correlation_id = correlation_id
        self._headers = headers

    def _method(self, method_name: str) -> RPCMethodProxy:
        return RPCMethodProxy(self._postprocessor, self._name, method_name, self._source,
                              self._context, self._correlation_id, self._headers,
                              calls=self._calls)

    def __getattr__(self, method_name: str) -> RPCMethodProxy:
        if method_name.startswith("__"):
            raise AttributeError(method_name)
        return self._method(method_name)


class RPCClientProxy(RPCServiceProxy):
    """``client.<name>``: a service to pick a method of, or a method to call.

    An :class:`~tavrida.client.RPCClient` has two forms: ``cli.service.method(...)``,
    where ``cli.service`` is a service, and, for a client made for one
    service, ``cli.method(...)``, where ``cli.method`` is a method. One type
    for both, so that both type-check in user code; at run time a service
    is still not callable and a method has no attributes.
    """

    def __init__(self, postprocessor: Any, service_name: str, method_name: Optional[str],
                 source: EntryPointLike, context: Optional[Mapping[str, Any]] = None,
                 correlation_id: str = "", headers: Optional[Mapping[str, Any]] = None,
                 *, calls: Optional[Replies] = None) -> None:
        super().__init__(postprocessor, service_name, source, context, correlation_id, headers,
                         calls=calls)
        self._method_name = method_name

    def __getattr__(self, method_name: str) -> RPCMethodProxy:
        if self._method_name is not None and not method_name.startswith("__"):
            raise AttributeError(f"{self._name}.{self._method_name} is a method: "
                                 f"it has no attribute {method_name!r}")
        method = super().__getattr__(method_name)
        keep(self, method_name, method)  # proxies hold no state a call changes
        return method

    def __call__(self, **kwargs: Any) -> RPCCallProxy:
        if self._method_name is None:
            raise TypeError(f"{self._name} is a service, not callable: call one of its "
                            f"methods, client.{self._name}.<method>(...)")
        return self._method(self._method_name)(**kwargs)

    def __repr__(self) -> str:
        name = self._name if self._method_name is None else f"{self._name}.{self._method_name}"
        return f"<{type(self).__name__} {name}>"


class RPCProxy:
    """The proxy handlers get: ``proxy.<service>`` and :meth:`publish`.

    ``calls`` makes blocking calls (``call(timeout=...)``): an
    :class:`~tavrida.client.RPCClient` gives its own; a handler's proxy has none.
    """

    def __init__(self, postprocessor: Any, source: EntryPointLike,
                 context: Optional[Mapping[str, Any]] = None, correlation_id: str = "",
                 headers: Optional[Mapping[str, Any]] = None, *,
                 calls: Optional[Replies] = None) -> None:
        self._postprocessor = postprocessor
        self._calls = calls
        self._source = (entry_point.parse_text(source, True, False) if type(source) is str
                        else _source(source))
        self._context = context
        self._correlation_id = correlation_id
        self._headers = _check_headers(headers) if headers else {}

    @property
    def postprocessor(self) -> Any:
        """The sender this proxy's messages go out through."""
        return self._postprocessor

    def add_headers(self, headers: Mapping[str, Any]) -> None:
        """Add user headers to every message this proxy sends (not tavrida's seven)."""
        self._headers.update(_check_headers(headers))

    def __getattr__(self, service_name: str) -> RPCServiceProxy:
        if service_name.startswith("__"):
            raise AttributeError(service_name)
        return RPCServiceProxy(self._postprocessor, service_name, self._source,
                               self._context, self._correlation_id, self._headers,
                               calls=self._calls)

    def service(self, service_name: str, method_name: Optional[str] = None) -> RPCClientProxy:
        """Service ``service_name`` (or its method ``method_name``) as a client attribute.

        Also reaches a service whose name is one of this proxy's attributes:
        ``proxy.service("publish").method(...)``.
        """
        return RPCClientProxy(self._postprocessor, service_name, method_name, self._source,
                              self._context, self._correlation_id, self._headers,
                              calls=self._calls)

    def publish(self, correlation_id: str = "", **kwargs: Any) -> messages.Notification:
        """Publish a notification with ``kwargs`` as payload on this service's exchange.

        Its source and routing key are this proxy's source: a handler's own
        entry point (``orders.place``). To publish an event under a name of
        its own, use :meth:`publish_event`.
        """
        notification = self.notification(correlation_id, **kwargs)
        self._postprocessor.send(notification)
        return notification

    def notification(self, correlation_id: str = "", **kwargs: Any) -> messages.Notification:
        """The notification :meth:`publish` sends, unsent (:mod:`tavrida.aio` sends it)."""
        return self._notification(str(self._source), correlation_id, kwargs)

    def publish_event(self, event: str, /, **payload: Any) -> messages.Notification:
        """Publish event ``event`` of this service: routing key ``<service>.<event>``.

        Goes to the service's notification exchange (its local publisher),
        where ``subscription_method(service=<service>, method=event)`` takes
        it. ``event`` is positional only: every keyword is payload. Raises
        :class:`~tavrida.exceptions.WrongEntryPointFormat` for an empty name
        or one with a dot. See :mod:`tavrida.events`.
        """
        notification = self.event_notification(event, **payload)
        self._postprocessor.send(notification)
        return notification

    def event_notification(self, event: str, /, **payload: Any) -> messages.Notification:
        """The notification :meth:`publish_event` sends, unsent."""
        service = self._source.service
        if not service:
            raise exceptions.IncorrectOutgoingMessage(
                reason=f"event {event!r} has no service to publish as: give the client "
                       f"a source")
        return self._notification(f"{service}.{events.check_name(event)}", "", payload)

    def _notification(self, source: str, correlation_id: str,
                      payload: Dict[str, Any]) -> messages.Notification:
        headers = dict(self._headers)
        headers.update(correlation_id=correlation_id or self._correlation_id,
                       request_id=messages.new_id(), message_id=messages.new_id(),
                       source=source, destination="", reply_to="")
        return messages.Notification(headers, self._context, payload)

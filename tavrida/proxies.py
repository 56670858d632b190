"""Proxies: how handlers and clients call remote services and publish.

``proxy.<service>.<method>(**payload)`` builds an :class:`RPCCallProxy`;
its :meth:`~RPCCallProxy.call` sends a request that expects an answer (a
response or error handler gets it), :meth:`~RPCCallProxy.cast` one that
expects none, and :meth:`~RPCCallProxy.transfer` forwards a request.
``proxy.publish(**payload)`` sends a notification.

A proxy handed to a handler carries the handled message's context,
correlation id and user headers on to every message it sends.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Union

from tavrida import entry_point, exceptions, messages

EntryPointLike = Union[str, entry_point.EntryPoint]


def _source(value: EntryPointLike) -> entry_point.EntryPoint:
    return entry_point.parse(value, source=True)


def _check_headers(headers: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    headers = dict(headers or {})
    reserved = sorted(set(headers).intersection(messages.TAVRIDA_HEADERS))
    if reserved:
        raise exceptions.ForbiddenHeaders(headers=", ".join(reserved))
    return headers


class RPCCallProxy:
    """One prepared call: destination and payload are set, how to send is not yet."""

    def __init__(self, postprocessor: Any, service_name: str, method_name: str,
                 source: EntryPointLike, context: Optional[Mapping[str, Any]],
                 correlation_id: str, headers: Optional[Mapping[str, Any]],
                 kwargs: Mapping[str, Any]) -> None:
        self._postprocessor = postprocessor
        self._destination = entry_point.Destination(service_name, method_name)
        self._source = source
        self._context = context
        self._correlation_id = correlation_id
        self._headers = headers or {}
        self._kwargs = dict(kwargs)

    def _request(self, correlation_id: str, context: Any, reply_to: EntryPointLike,
                 source: EntryPointLike, payload: Mapping[str, Any],
                 request_id: str = "") -> messages.Request:
        headers = dict(self._headers)
        headers.update(correlation_id=correlation_id or self._correlation_id,
                       request_id=request_id or messages.new_id(),
                       message_id=messages.new_id(),
                       source=str(_source(source or self._source)),
                       destination=str(self._destination), reply_to=str(reply_to or ""))
        return messages.Request(headers, context or self._context, payload)

    def call(self, correlation_id: str = "", context: Any = "", reply_to: EntryPointLike = "",
             source: EntryPointLike = "", timeout: Optional[float] = None) -> Any:
        """Send a request that expects an answer.

        The answer goes to ``reply_to`` (default: the caller's service), whose
        response or error handler gets it. With ``timeout`` (an
        :class:`~tavrida.client.RPCClient` only) the call blocks and returns
        the response payload; see :meth:`tavrida.client.RPCClient`.
        """
        src = _source(source or self._source)
        reply = entry_point.parse(reply_to) if reply_to else entry_point.ServiceEntryPoint(
            src.service)
        if not reply:
            # An empty reply_to makes the request a cast: the answer would never come.
            raise exceptions.IncorrectOutgoingMessage(
                reason=f"call to {self._destination} has no source or reply_to to answer to")
        request = self._request(correlation_id, context, reply, src, self._kwargs)
        if timeout is not None:
            replies = getattr(self._postprocessor, "replies", None)
            if replies is None:
                raise exceptions.TavridaError(
                    "a blocking call (timeout=...) needs an RPCClient; from a handler "
                    "use call() with a response handler")
            return replies.call(request, timeout)
        self._postprocessor.send(request)
        return request

    def cast(self, correlation_id: str = "", context: Any = "",
             source: EntryPointLike = "") -> messages.Request:
        """Send a request that expects no answer."""
        request = self._request(correlation_id, context, "", source, self._kwargs)
        self._postprocessor.send(request)
        return request

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
                 correlation_id: str = "", headers: Optional[Mapping[str, Any]] = None) -> None:
        self._args = (postprocessor, service_name, method_name, source, context,
                      correlation_id, headers)

    def __call__(self, **kwargs: Any) -> RPCCallProxy:
        return RPCCallProxy(*self._args, kwargs)


class RPCServiceProxy:
    """``proxy.service``: pick a method by attribute."""

    def __init__(self, postprocessor: Any, name: str, source: EntryPointLike,
                 context: Optional[Mapping[str, Any]] = None, correlation_id: str = "",
                 headers: Optional[Mapping[str, Any]] = None) -> None:
        self._args = (postprocessor, name)
        self._rest = (source, context, correlation_id, headers)

    def __getattr__(self, method_name: str) -> RPCMethodProxy:
        if method_name.startswith("__"):
            raise AttributeError(method_name)
        return RPCMethodProxy(*self._args, method_name, *self._rest)


class RPCProxy:
    """The proxy handlers get: ``proxy.<service>`` and :meth:`publish`."""

    def __init__(self, postprocessor: Any, source: EntryPointLike,
                 context: Optional[Mapping[str, Any]] = None, correlation_id: str = "",
                 headers: Optional[Mapping[str, Any]] = None) -> None:
        self._postprocessor = postprocessor
        self._source = _source(source)
        self._context = context
        self._correlation_id = correlation_id
        self._headers = _check_headers(headers)

    def add_headers(self, headers: Mapping[str, Any]) -> None:
        """Add user headers to every message this proxy sends (not tavrida's seven)."""
        self._headers.update(_check_headers(headers))

    def __getattr__(self, service_name: str) -> RPCServiceProxy:
        if service_name.startswith("__"):
            raise AttributeError(service_name)
        return RPCServiceProxy(self._postprocessor, service_name, self._source,
                               self._context, self._correlation_id, self._headers)

    def publish(self, correlation_id: str = "", **kwargs: Any) -> messages.Notification:
        """Publish a notification with ``kwargs`` as payload on this service's exchange."""
        headers = dict(self._headers)
        headers.update(correlation_id=correlation_id or self._correlation_id,
                       request_id=messages.new_id(), message_id=messages.new_id(),
                       source=str(self._source), destination="", reply_to="")
        notification = messages.Notification(headers, self._context, kwargs)
        self._postprocessor.send(notification)
        return notification

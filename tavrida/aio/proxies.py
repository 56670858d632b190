"""Awaitable proxies: ``await cli.svc.method(**payload).call(timeout=5)``.

Each wraps the blocking proxy of :mod:`tavrida.proxies`, which builds the
message (headers, context, correlation id, checks) exactly as a blocking
client or handler would, and sends it through a :class:`Courier`: the
:class:`~tavrida.aio.outbox.Outbox` for casts, notifications and the
requests of 1.0 asynchronous calls, the :class:`~tavrida.aio.calls.Calls`
for awaited calls.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Union, overload

from tavrida import exceptions, messages, proxies
from tavrida.aio.calls import Calls
from tavrida.aio.outbox import Outbox
from tavrida.proxies import EntryPointLike


class Courier:
    """How an awaitable proxy sends: through an outbox, its awaited calls through calls.

    ``calls`` (or ``make_calls``, at the first awaited call: a server's
    handlers make few) take awaited calls; ``reply_to`` and
    ``reply_exchange`` say where their answers go when not to the caller's
    service (a server's handlers: a private name, see :mod:`tavrida.aio.server`).
    """

    def __init__(self, outbox: Optional[Outbox], calls: Optional[Calls],
                 publish_timeout: Optional[float], *,
                 make_calls: Optional[Callable[[], Calls]] = None, reply_to: str = "",
                 reply_exchange: str = "") -> None:
        self.outbox = outbox
        self.calls = calls
        #: Seconds a cast or publish may take (the config's ``publish_timeout``; None: no limit).
        self.publish_timeout = publish_timeout
        self.make_calls = make_calls
        self.reply_to = reply_to
        self.reply_exchange = reply_exchange

    async def publish(self, message: messages.Message) -> None:
        assert self.outbox is not None
        await self.outbox.publish(message, self.publish_timeout)

    async def call(self, request: messages.Request, timeout: float) -> Dict[str, Any]:
        calls = self.calls
        if calls is None and self.make_calls is not None:
            calls = self.calls = self.make_calls()
        if calls is None:
            raise exceptions.TavridaError(
                "an awaited call (timeout=...) needs an aio.RPCClient or an aio.Server")
        if self.reply_exchange:
            request.reply_exchange = self.reply_exchange
        return await calls.call(request, timeout)


class DirectCourier(Courier):
    """Sends through a blocking postprocessor on the calling thread (the test kit's handlers).

    For ``async def`` handlers run outside an :class:`~tavrida.aio.server.Server`
    (:func:`tavrida.testing.call_handler`, a
    :class:`~tavrida.testing.MemoryCluster`): what they send is recorded or
    routed in process, so nothing waits on a network. Awaited calls are refused.
    """

    def __init__(self, postprocessor: Any) -> None:
        super().__init__(None, None, None)
        self._postprocessor = postprocessor

    async def publish(self, message: messages.Message) -> None:
        self._postprocessor.send(message)


def direct_proxy(proxy: proxies.RPCProxy) -> AsyncProxy:
    """An ``async def`` handler's awaitable proxy over a blocking one (:class:`DirectCourier`)."""
    return AsyncProxy(proxy, DirectCourier(proxy.postprocessor))


class AsyncCallProxy:
    """One prepared call: await :meth:`call` or :meth:`cast`."""

    def __init__(self, inner: proxies.RPCCallProxy, courier: Courier) -> None:
        self._inner = inner
        self._courier = courier

    @overload
    async def call(self, correlation_id: str = "", context: Any = "",
                   reply_to: EntryPointLike = "", source: EntryPointLike = "",
                   timeout: None = None) -> messages.Request: ...

    @overload
    async def call(self, correlation_id: str = "", context: Any = "",
                   reply_to: EntryPointLike = "", source: EntryPointLike = "", *,
                   timeout: float) -> Dict[str, Any]: ...

    async def call(self, correlation_id: str = "", context: Any = "",
                   reply_to: EntryPointLike = "", source: EntryPointLike = "",
                   timeout: Optional[float] = None) -> Union[messages.Request, Dict[str, Any]]:
        """Send a request; with ``timeout``, await its answer and return its payload.

        Raises as the blocking call does (:mod:`tavrida.client`). Without
        ``timeout`` the answer goes to ``reply_to``'s response or error
        handler and the sent request is returned once the broker has it.
        """
        if timeout is not None and not reply_to:
            reply_to = self._courier.reply_to
        request = self._inner.call_request(correlation_id, context, reply_to, source, timeout)
        if timeout is None:
            await self._courier.publish(request)
            return request
        return await self._courier.call(request, timeout)

    async def cast(self, correlation_id: str = "", context: Any = "",
                   source: EntryPointLike = "") -> messages.Request:
        """Send a request that expects no answer; return it once the broker has it."""
        request = self._inner.cast_request(correlation_id, context, source)
        await self._courier.publish(request)
        return request


class AsyncMethodProxy:
    """``proxy.service.method``: call it with the payload."""

    def __init__(self, inner: proxies.RPCMethodProxy, courier: Courier) -> None:
        self._inner = inner
        self._courier = courier

    def __call__(self, **kwargs: Any) -> AsyncCallProxy:
        return AsyncCallProxy(self._inner(**kwargs), self._courier)


class AsyncServiceProxy:
    """``cli.<name>``: a service to pick a method of or, for a one-service client, a method."""

    def __init__(self, inner: proxies.RPCClientProxy, courier: Courier) -> None:
        self._inner = inner
        self._courier = courier

    def __getattr__(self, method_name: str) -> AsyncMethodProxy:
        if method_name.startswith("__"):
            raise AttributeError(method_name)
        method = AsyncMethodProxy(getattr(self._inner, method_name), self._courier)
        proxies.keep(self, method_name, method)
        return method

    def __call__(self, **kwargs: Any) -> AsyncCallProxy:
        return AsyncCallProxy(self._inner(**kwargs), self._courier)


class AsyncProxy:
    """What asyncio code calls services and publishes with (a client's, an async handler's)."""

    def __init__(self, inner: proxies.RPCProxy, courier: Courier,
                 service: Optional[str] = None) -> None:
        self._inner = inner
        self._courier = courier
        self._service = service

    def __getattr__(self, name: str) -> AsyncServiceProxy:
        if name.startswith("_"):
            raise AttributeError(name)
        found = self.service(name)
        proxies.keep(self, name, found)  # the next proxy.<name> is a plain attribute
        return found

    def service(self, service_name: str, method_name: Optional[str] = None) -> AsyncServiceProxy:
        """Service ``service_name`` (or its method ``method_name``), by name."""
        if self._service:
            inner = self._inner.service(self._service, service_name)
        else:
            inner = self._inner.service(service_name, method_name)
        return AsyncServiceProxy(inner, self._courier)

    def add_headers(self, headers: Mapping[str, Any]) -> None:
        """Add user headers to every message this proxy sends."""
        self._inner.add_headers(headers)

    async def publish(self, correlation_id: str = "", **kwargs: Any) -> messages.Notification:
        """Publish a notification as this proxy's source; return it once the broker has it."""
        notification = self._inner.notification(correlation_id, **kwargs)
        await self._courier.publish(notification)
        return notification

    async def publish_event(self, event: str, /, **payload: Any) -> messages.Notification:
        """Publish named event ``event`` (see :mod:`tavrida.events`)."""
        notification = self._inner.event_notification(event, **payload)
        await self._courier.publish(notification)
        return notification

"""The asyncio RPCClient: await calls from an asyncio program.

::

    async with aio.RPCClient("amqp://guest:guest@localhost//", disc,
                             source="client_app") as cli:
        answer = await cli.test_hello.hello(param=1).call(timeout=5)
        await cli.test_hello.hello(param=2).cast()
        await cli.publish(what="happened")

The same forms, messages and errors as :class:`tavrida.client.RPCClient`;
any number of calls in flight from one client, each with its own
deadline. Its transport is read by one thread of its own
(:mod:`tavrida.aio.io_thread`); see :doc:`/asyncio` for why.
"""

from __future__ import annotations

import asyncio
from typing import Any, Mapping, Optional, Union

from tavrida import config as config_mod
from tavrida import discovery as discovery_mod
from tavrida import exceptions, messages, proxies
from tavrida.aio.calls import Calls
from tavrida.aio.io_thread import IOThread
from tavrida.aio.outbox import Outbox
from tavrida.aio.proxies import AsyncProxy, AsyncServiceProxy, Courier
from tavrida.client import client_sender
from tavrida.proxies import RPCProxy
from tavrida.sender import Sender
from tavrida.transports.base import Transport


class RPCClient:
    """Sends requests and notifications on behalf of ``source``, from an event loop.

    Arguments as :class:`tavrida.client.RPCClient`'s. Use it as an async
    context manager, or call :meth:`close`; it belongs to the loop it is
    first used on.
    """

    def __init__(self, config: Union[config_mod.ConnectionConfig, str],
                 discovery: discovery_mod.AbstractDiscovery, source: str = "",
                 context: Optional[Mapping[str, Any]] = None,
                 headers: Optional[Mapping[str, Any]] = None,
                 service: Optional[str] = None, *,
                 transport: Optional[Transport] = None) -> None:
        self._config = config_mod.as_config(config)
        self._source = source
        self._transport, self._sender, self._service_name, self._exchange = client_sender(
            self._config, discovery, source, transport)
        self._inner = RPCProxy(self._sender, source, context, "", headers)
        self._service = service
        self._announced = ""
        self._proxy: Optional[AsyncProxy] = None
        self._io: Optional[IOThread] = None
        self._calls: Optional[Calls] = None
        self._outbox: Optional[Outbox] = None
        self._closed = False

    @property
    def sender(self) -> Sender:
        """The sender that publishes for this client."""
        return self._sender

    @property
    def transport(self) -> Transport:
        return self._transport

    @property
    def in_flight(self) -> int:
        """Awaited calls waiting for their answer now."""
        return self._calls.in_flight if self._calls is not None else 0

    def _bound(self) -> AsyncProxy:
        """The proxy, made on first use on the running loop (with the I/O thread)."""
        proxy = self._proxy
        if proxy is not None:
            return proxy
        if self._closed:
            raise exceptions.TavridaError("the client is closed")
        loop = asyncio.get_running_loop()
        name = f"tavrida-aio-{self._service_name or 'client'}"
        self._io = IOThread(self._transport, name)
        self._outbox = Outbox(self._sender, loop, name)
        self._calls = Calls(self._outbox, self._io, self._service_name, self._exchange)
        self._io.start()
        proxy = self._proxy = AsyncProxy(
            self._inner, Courier(self._outbox, self._calls, self._config.publish_timeout),
            self._service)
        return proxy

    async def open(self) -> RPCClient:
        """Bind to the running loop; announce ``source`` to a central discovery."""
        self._bound()
        if self._service_name and not self._announced:
            discovery = self._sender.discovery
            # A central discovery's store is a network call: not on the loop.
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: discovery.announce(self._service_name, self._exchange,
                                                 role="client"))
            self._announced = self._service_name
        return self

    def __getattr__(self, name: str) -> AsyncServiceProxy:
        """``cli.<service>``, or ``cli.<method>`` for a client made for one ``service``."""
        if name.startswith("_"):
            raise AttributeError(name)
        found = self._bound().service(name)
        proxies.keep(self, name, found)  # the next cli.<name> is a plain attribute
        return found

    def add_headers(self, headers: Mapping[str, Any]) -> None:
        """Add user headers to every message this client sends."""
        self._inner.add_headers(headers)

    async def publish(self, correlation_id: str = "", **kwargs: Any) -> messages.Notification:
        """Publish a notification as ``source`` (its exchange must be a local publisher)."""
        return await self._bound().publish(correlation_id, **kwargs)

    async def publish_event(self, event: str, /, **payload: Any) -> messages.Notification:
        """Publish event ``event`` of the ``source`` service (see :mod:`tavrida.events`)."""
        return await self._bound().publish_event(event, **payload)

    async def close(self) -> None:
        """Fail the calls still waiting, stop the I/O thread, close the connection."""
        if self._closed:
            return
        self._closed = True
        if self._calls is not None:
            self._calls.close()
        io, outbox, transport = self._io, self._outbox, self._transport
        announced, self._announced = self._announced, ""
        discovery = self._sender.discovery

        def close() -> None:
            if io is not None:
                io.stop(timeout=10.0)
            if outbox is not None:
                outbox.close()
            if announced:
                discovery.withdraw(announced)
            transport.close()

        await asyncio.get_running_loop().run_in_executor(None, close)

    async def __aenter__(self) -> RPCClient:
        return await self.open()

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

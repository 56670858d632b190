"""The two ways a user runs tavrida, as drivers of the contract suite (test_contract.py).

* ``blocking``: :class:`tavrida.server.Server` in threads, :class:`tavrida.client.RPCClient`,
  the services' handlers as written (sync);
* ``async``: :class:`tavrida.aio.Server` on an event loop (a thread of its own),
  :class:`tavrida.aio.RPCClient` on the same loop, and each service's handlers made
  ``async def`` (:func:`async_variant`): what they send goes through their awaitable proxy.

The test cases are written once, in the blocking style; :class:`Blocking` lets them
call an asyncio client (each call awaited on the loop, from the test's thread or
threads).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from typing import Any, Callable, Coroutine, Dict, List, Optional

from tavrida import aio, client, discovery, dispatcher, server

WAIT = 30.0


class LoopThread:
    """An event loop running on a thread of its own until :meth:`close`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="contract-loop",
                                        daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: Optional[float] = WAIT) -> Any:
        """Run ``coro`` on the loop; its result (or what it raised) in the calling thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(WAIT)
        self.loop.close()


class Chain:
    """An awaitable proxy seen through blocking eyes: attribute by attribute, call by call.

    What a call returns is wrapped again, unless it is a coroutine (``call()``,
    ``cast()``, ``publish()``): that goes to ``on_coroutine``, whose result is returned.
    """

    def __init__(self, inner: Any, on_coroutine: Callable[[Coroutine[Any, Any, Any]], Any]
                 ) -> None:
        self._inner = inner
        self._on_coroutine = on_coroutine

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return Chain(getattr(self._inner, name), self._on_coroutine)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        result = self._inner(*args, **kwargs)
        if inspect.iscoroutine(result):
            return self._on_coroutine(result)
        return Chain(result, self._on_coroutine)


def blocking(cli: aio.RPCClient, loop: LoopThread) -> Any:
    """``cli`` (open on ``loop``) called as a blocking client: each send awaited on the loop."""
    return Chain(cli, loop.run)


def async_variant(cls: type) -> type:
    """``cls`` with each handler made ``async def``, its sends awaited through its proxy.

    The handler's body runs on the loop as written, against a proxy that keeps
    what it sends (coroutines of the awaitable proxy); the async handler then
    awaits each in turn, so each is published (and confirmed) before it returns.
    The variant serves the same service, with ``cls``'s discovery. A class with
    ``sync_in_both_drivers`` set is served as it is (aio.Server runs it on a worker).
    """
    if getattr(cls, "sync_in_both_drivers", False):
        return cls
    variant = _VARIANTS.get(cls)
    if variant is None:
        members = {name: _async_handler(func) for name, func in vars(cls).items()
                   if getattr(func, dispatcher._ENTRIES_ATTR, None)}
        variant = type(f"Async{cls.__name__}", (cls,), {**members, "__module__": cls.__module__})
        variant = _VARIANTS[cls] = dispatcher.rpc_service(cls.service_name())(variant)
        assert all(handler.is_async for handler in variant.get_dispatcher().handlers.values())
    variant.set_discovery(cls.get_discovery())
    return variant


_VARIANTS: Dict[type, type] = {}


def _async_handler(func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    async def handler(self: Any, message: Any, proxy: Any, **kwargs: Any) -> Any:
        sends: List[Coroutine[Any, Any, Any]] = []
        try:
            result = func(self, message, Chain(proxy, sends.append), **kwargs)
        except BaseException:
            for send in sends:
                send.close()
            raise
        for send in sends:
            await send
        return result

    return handler


class Running:
    """Servers and clients of one driver, until the test ends."""

    def __init__(self, url: str, driver: str) -> None:
        self.url = url
        self.driver = driver
        #: The blocking servers (for aio.Server: the one it runs).
        self.servers: List[server.Server] = []
        self._threads: List[threading.Thread] = []
        self._serving: List[Any] = []
        self._clients: List[Callable[[], None]] = []  # (blocking ones)
        self._closing: List[Coroutine[Any, Any, None]] = []  # (asyncio ones)
        self._loop = LoopThread() if driver == "async" else None

    def serve(self, queue: str, exchange: str, services: List[type], **kwargs: Any) -> None:
        """Serve ``services`` on ``queue``; returns once it consumes (topology declared)."""
        if self._loop is None:
            srv = server.Server(self.url, queue, exchange, services, **kwargs)
            srv.start()
            thread = threading.Thread(target=srv.run, daemon=True)
            thread.start()
            self.servers.append(srv)
            self._threads.append(thread)
            return
        if "workers" in kwargs:
            kwargs["max_concurrency"] = kwargs.pop("workers")
        served = aio.Server(self.url, queue, exchange,
                            [async_variant(cls) for cls in services], **kwargs)
        serving = self._loop.run(_serving(served))
        self.servers.append(served.server)
        self._serving.append(serving)

    def client(self, disc: discovery.AbstractDiscovery, source: str, **kw: Any) -> Any:
        """A client of this driver, called as a blocking one."""
        if self._loop is None:
            cli = client.RPCClient(self.url, disc, source=source, **kw)
            self._clients.append(cli.close)
            return cli
        opened = aio.RPCClient(self.url, disc, source=source, **kw)
        self._loop.run(opened.open())
        self._closing.append(opened.close())
        return blocking(opened, self._loop)

    def close(self) -> None:
        """Stop the servers and close the clients (the asyncio ones side by side)."""
        for srv in self.servers:
            srv.stop()
        if self._loop is not None:
            self._loop.run(_wait_all([*self._closing, *self._serving]))
            self._loop.close()
        for close in self._clients:
            close()
        for thread in self._threads:
            thread.join(15)
        assert not any(thread.is_alive() for thread in self._threads), "a server did not stop"


async def _wait_all(awaitables: List[Any]) -> None:
    """Await them side by side (a close on Redis waits out a drain of 1 s)."""
    await asyncio.wait_for(asyncio.gather(*awaitables), 15)


async def _serving(served: aio.Server) -> "asyncio.Task[None]":
    """Start ``served.serve()``; return its task once it consumes (or raise why it cannot)."""
    serving = asyncio.ensure_future(served.serve())
    started = asyncio.ensure_future(served.wait_started())
    await asyncio.wait([serving, started], timeout=WAIT, return_when=asyncio.FIRST_COMPLETED)
    if serving.done():
        started.cancel()
        serving.result()
    assert started.done(), "the server did not start"
    return serving

"""aio.Server: serve ``async def`` (and sync) handlers from an event loop.

::

    srv = aio.Server(url, "orders_queue", "orders_exchange", [Orders])
    await srv.serve()          # until `await srv.stop()` or the task is cancelled

    aio.Server(...).run()      # a loop of its own; SIGTERM / SIGINT stop it

It is the blocking :class:`tavrida.server.Server` underneath, so every
guarantee holds as it is (confirms, the ack after the answer is confirmed,
retries, dead letters, the graceful stop, reconnects, hooks: metrics,
traces, the access log): its connection is read by a thread of its own,
and the handlers run on ``max_concurrency`` worker threads. An ``async
def`` handler or middleware runs on the serving loop, its worker waiting
for it (see :mod:`tavrida.coroutines`); a sync one runs on its worker, so it
never stalls the loop. An ``async def`` handler's proxy makes awaitable
calls: ``await proxy.svc.method(x=1).call(timeout=2)``. See :doc:`/asyncio`.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import uuid
from typing import Any, Iterable, Optional, Union

from tavrida import config as config_mod
from tavrida import coroutines, exceptions
from tavrida.aio.calls import Calls
from tavrida.aio.io_thread import IOThread
from tavrida.aio.outbox import Outbox, settle
from tavrida.aio.proxies import AsyncProxy, Courier
from tavrida.proxies import RPCProxy
from tavrida.replies import DEFAULT_REPLY_EXCHANGE
from tavrida.sender import Sender
from tavrida.server import Server as BlockingServer
from tavrida.service import ServiceController
from tavrida.transports import create_transport
from tavrida.transports.base import Transport

LOG = logging.getLogger(__name__)


class Server:
    """Serves ``service_list`` on ``queue_name`` from the running event loop.

    Arguments as :class:`tavrida.server.Server`'s (passed on to it), but
    ``max_concurrency``: messages handled at once (default: the prefetch
    count), each on a worker thread while its handler runs.
    """

    def __init__(self, config: Union[config_mod.ConnectionConfig, str], queue_name: str,
                 exchange_name: str, service_list: Iterable[type], *,
                 max_concurrency: Optional[int] = None, **kwargs: Any) -> None:
        if "workers" in kwargs:
            raise exceptions.IncorrectAMQPConfig(
                reason="aio.Server takes max_concurrency, not workers")
        self.config = config_mod.as_config(config)
        prefetch = kwargs.get("prefetch_count")
        prefetch_count = self.config.prefetch_count if prefetch is None else prefetch
        self.max_concurrency = max_concurrency or prefetch_count or 1
        if self.max_concurrency < 1:
            raise exceptions.IncorrectAMQPConfig(reason="max_concurrency must be >= 1")
        #: The blocking server doing the work.
        self.server = BlockingServer(self.config, queue_name, exchange_name, service_list,
                                     workers=self.max_concurrency, **kwargs)
        # A worker does not wait for its answer's confirm: the server's drain reads it
        # and acks (bench scenario 8: server CPU per call, thread wake-ups per call).
        self.server.pipelined_workers = True
        self._started = asyncio.Event()

    @property
    def handled(self) -> int:
        return self.server.handled

    async def wait_started(self) -> None:
        """Return once :meth:`serve` consumes (its topology declared): calls are taken now."""
        await self._started.wait()

    async def serve(self) -> None:
        """Serve until :meth:`stop` (or until this task is cancelled: then it stops too).

        Raises :class:`~tavrida.exceptions.ConnectionFailed` when the broker
        cannot be reached.
        """
        loop = asyncio.get_running_loop()
        server = self.server
        starting = loop.run_in_executor(None, server.start)
        try:
            await asyncio.shield(starting)
        except asyncio.CancelledError:
            await _wait_out(starting)
            await loop.run_in_executor(None, server.close)
            raise
        callers = [_Callers(self.config, loop, controller.postprocessor)
                   for controller in server.controllers]
        for controller, caller in zip(server.controllers, callers):
            controller.loop = loop
            controller.async_proxy = caller.proxy_for
        finished = loop.create_future()

        def run() -> None:
            try:
                server.run()
            except BaseException as exc:  # noqa: BLE001 - raised by serve()
                loop.call_soon_threadsafe(settle, finished, exc)
            else:
                loop.call_soon_threadsafe(settle, finished, None)

        thread = threading.Thread(target=run, name=f"tavrida-aio-{server.queue_name}",
                                  daemon=True)
        thread.start()
        self._started.set()
        try:
            await asyncio.shield(finished)
        except asyncio.CancelledError:
            server.stop()
            await _wait_out(finished)
            raise
        finally:
            self._started.clear()
            for caller in callers:
                await caller.close()

    async def stop(self) -> None:
        """Take no new message; finish, answer and ack those in hand (within ``stop_timeout``).

        Returns at once; :meth:`serve` returns when the stop is done. A
        second call gives back what is still in hand at once.
        """
        self.server.stop()

    def run(self) -> None:
        """Serve on an event loop of its own until SIGTERM or SIGINT (or :meth:`stop`)."""

        async def main() -> None:
            loop = asyncio.get_running_loop()
            if threading.current_thread() is threading.main_thread():
                for signum in (signal.SIGTERM, signal.SIGINT):
                    loop.add_signal_handler(signum, self.server.stop)
            await self.serve()

        asyncio.run(main())



async def _wait_out(finished: "asyncio.Future[None]") -> None:
    try:
        await finished
    except Exception:  # noqa: BLE001 - the cancellation is what the caller sees
        LOG.exception("the server failed while stopping")


class _Callers:
    """What one service's ``async def`` handlers send with: awaitable proxies.

    Casts, notifications and 1.0 asynchronous calls go through the
    service's own sender (as a sync handler's would), or with
    ``own_connection`` through a connection of their own. Awaited calls have a
    connection of their own (made at the first one), whose private reply
    queue on :data:`~tavrida.replies.DEFAULT_REPLY_EXCHANGE` takes their
    answers, addressed to a private name, not to the service (whose queue
    takes the answers its response handlers wait for): a 2.0 service answers
    on the exchange a call names; a 1.0 service cannot answer them.
    """

    def __init__(self, config: config_mod.ConnectionConfig, loop: asyncio.AbstractEventLoop,
                 sender: Sender, own_connection: bool = False) -> None:
        self._config = config
        self.loop = loop
        self._sender = sender
        name = (sender.source or "service").replace(".", "-")
        self.reply_to = f"{name}-aio-{uuid.uuid4().hex[:12]}"
        self._calls: Optional[Calls] = None
        self._io: Optional[IOThread] = None
        self._transport: Optional[Transport] = None
        self._calls_outbox: Optional[Outbox] = None
        self._lock = threading.Lock()
        if own_connection:
            sender = self._connect(sender.reply_exchange)
        self._outbox = Outbox(sender, loop, f"tavrida-aio-{name}")
        self._courier = Courier(self._outbox, None, config.publish_timeout,
                                make_calls=self._make_calls, reply_to=self.reply_to,
                                reply_exchange=DEFAULT_REPLY_EXCHANGE)

    def _connect(self, reply_exchange: str) -> Sender:
        """This service's connection of its own, drained by an I/O thread: its sender."""
        transport = self._transport = create_transport(self._config)
        self._io = IOThread(transport, f"tavrida-aio-{self.reply_to}")
        self._io.start()
        return Sender(transport, self._sender.discovery, self._config.persistent,
                      source=self._sender.source, reply_exchange=reply_exchange)

    def _make_calls(self) -> Calls:
        with self._lock:
            if self._calls is None:
                if self._io is None:
                    own = self._connect(DEFAULT_REPLY_EXCHANGE)
                    self._calls_outbox = Outbox(own, self.loop, f"tavrida-aio-{self.reply_to}")
                outbox = self._calls_outbox or self._outbox
                assert self._io is not None
                self._calls = Calls(outbox, self._io, self.reply_to, DEFAULT_REPLY_EXCHANGE)
            return self._calls

    def proxy_for(self, proxy: RPCProxy) -> AsyncProxy:
        """An ``async def`` handler's proxy: the blocking one's messages, awaited."""
        return AsyncProxy(proxy, self._courier)

    async def close(self) -> None:
        calls, io, outbox, transport = self._calls, self._io, self._calls_outbox, self._transport
        if calls is not None:
            calls.close()

        def close() -> None:
            self._outbox.close()
            if io is not None:
                io.stop(timeout=10.0)
            if outbox is not None:
                outbox.close()
            if transport is not None:
                transport.close()

        await self.loop.run_in_executor(None, close)


class AwaitableProxies:
    """The proxies of a blocking :class:`tavrida.server.Server`'s ``async def`` handlers.

    Awaitable, as in an :class:`Server`: made at the first such handler's
    message, on the loop the handlers run on (the process's, see
    :mod:`tavrida.coroutines`). What they send goes through a connection of
    their own, read by an I/O thread (the server's connection is read by the
    thread waiting for the handler when ``workers=0``).
    """

    def __init__(self, config: config_mod.ConnectionConfig,
                 controller: ServiceController) -> None:
        self._config = config
        self._controller = controller
        self._callers: Optional[_Callers] = None
        self._lock = threading.Lock()

    def __call__(self, proxy: RPCProxy) -> AsyncProxy:
        with self._lock:
            callers = self._callers
            if callers is None:
                controller = self._controller
                loop = controller.loop or coroutines.process_loop()
                callers = self._callers = _Callers(self._config, loop, controller.postprocessor,
                                                   own_connection=True)
        return callers.proxy_for(proxy)

    def close(self) -> None:
        """Close their connection (from a thread other than their loop's)."""
        with self._lock:
            callers, self._callers = self._callers, None
        if callers is not None:
            coroutines.resolve(callers.close(), callers.loop)

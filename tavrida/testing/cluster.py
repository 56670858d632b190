"""MemoryCluster: a whole deployment in-process, on its own in-memory broker."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
import uuid
from typing import Any, Dict, Iterable, List, Optional, Tuple, Type

from tavrida import aio, messages
from tavrida import client as client_mod
from tavrida import config as config_mod
from tavrida import discovery as discovery_mod
from tavrida.aio.proxies import direct_proxy
from tavrida.answers import ErrorHook
from tavrida.observability.hooks import ServerHook
from tavrida.server import Server
from tavrida.service import ServiceController
from tavrida.testing.capture import Capture, ExpectedErrors, Failure, HandlerFailed, is_expected
from tavrida.transports.memory import MemoryBroker, MemoryTransport


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
            controller.async_proxy = direct_proxy  # an async def handler's proxy is awaitable
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

    def aio_client(self, discovery: discovery_mod.AbstractDiscovery, source: str = "client",
                   **kwargs: Any) -> aio.RPCClient:
        """An :class:`aio.RPCClient <tavrida.aio.client.RPCClient>` on this cluster's broker.

        As :meth:`client`'s, its connection runs the cluster's servers while it
        waits, so ``await cli.svc.m(x=1).call(timeout=5)`` needs no server
        thread; it waits on its I/O thread, so while the client is open the
        servers may also run there between two :meth:`deliver` (which still
        returns once every queue is idle). Close it (``async with``) in the test.
        """
        kwargs.setdefault("transport", _ClusterTransport(self.config, self))
        cli = aio.RPCClient(self.config, discovery, source=source, **kwargs)
        cli.sender.observers.append(self.sent_by(source.partition(".")[0]))
        return cli

    async def adeliver(self, timeout: float = 5.0, raise_errors: bool = True,
                       expect_errors: ExpectedErrors = ()) -> int:
        """:meth:`deliver` from an async test: ``await cluster.adeliver()``.

        It runs on a worker thread while the test's loop runs the ``async def``
        handlers (and middlewares) of the cluster's services.
        """
        loop = asyncio.get_running_loop()
        for server in self.servers:
            for controller in server.controllers:
                controller.loop = loop
        return await loop.run_in_executor(
            None, functools.partial(self.deliver, timeout, raise_errors, expect_errors))

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
            if not failure.answered and not is_expected(failure.exception, expect_errors):
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

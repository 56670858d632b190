"""Test helpers: run services in-process on the in-memory transport.

::

    from tavrida import testing

    with testing.MemoryCluster() as cluster:
        cluster.add_server([HelloController, WorldController])
        cli = cluster.client(disc, source="client_app")
        cli.test_hello.hello(param=1).call()
        cluster.deliver()                    # until idle; re-raises handler errors
        assert cluster.sent_by("test_world").responses[0].payload == {...}

Every cluster has its own in-memory broker, so tests do not see each
other's messages. Nothing runs in the background: :meth:`MemoryCluster.deliver`
hands messages to the servers in the calling thread until no queue has work.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Dict, Iterable, List, Optional, Tuple

from tavrida import client as client_mod
from tavrida import config as config_mod
from tavrida import discovery as discovery_mod
from tavrida import messages
from tavrida.server import Server
from tavrida.transports.memory import MemoryBroker


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
    """Raised by :meth:`MemoryCluster.deliver`: a handler raised; the original is the cause."""


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
        self._captures: Dict[str, Capture] = {}
        self._errors: List[Tuple[Optional[messages.Message], BaseException]] = []

    @property
    def broker(self) -> MemoryBroker:
        """The in-memory broker (peek at queues with it)."""
        return MemoryBroker.get(self.name)

    def sent_by(self, name: str) -> Capture:
        """What service (or client source) ``name`` has sent so far."""
        return self._captures.setdefault(name, Capture())

    def add_server(self, service_list: Iterable[type], queue_name: Optional[str] = None,
                   exchange_name: Optional[str] = None, **kwargs: Any) -> Server:
        """Start a server for ``service_list``; names default to the first service's."""
        service_list = list(service_list)
        first = service_list[0].service_name() if service_list else "service"
        server = Server(self.config, queue_name or f"{first}_queue",
                        exchange_name or f"{first}_exchange", service_list, **kwargs)
        server.error_hooks.append(self._on_error)
        server.start()
        for controller in server.controllers:
            controller.postprocessor.observers.append(self.sent_by(controller.service_name()))
        self.servers.append(server)
        return server

    def client(self, discovery: discovery_mod.AbstractDiscovery, source: str = "client",
               **kwargs: Any) -> client_mod.RPCClient:
        """An RPCClient on this cluster's broker; what it sends is captured under ``source``."""
        cli = client_mod.RPCClient(self.config, discovery, source=source, **kwargs)
        cli.sender.observers.append(self.sent_by(source.partition(".")[0]))
        self.clients.append(cli)
        return cli

    def _on_error(self, message: Optional[messages.Message], exc: BaseException,
                  by_handler: bool) -> None:
        if by_handler:
            self._errors.append((message, exc))

    def deliver(self, timeout: float = 5.0, raise_errors: bool = True) -> int:
        """Hand waiting messages to the servers until every queue is idle.

        Returns how many messages were taken. Raises :class:`HandlerFailed`
        (caused by the handler's exception) when a handler raised and
        ``raise_errors`` is set, and TimeoutError when the services are
        still busy after ``timeout`` seconds (for example a ping-pong loop).
        """
        deadline = time.monotonic() + timeout
        before = sum(server.handled for server in self.servers)
        while True:
            busy = False
            for server in self.servers:
                busy = server.drain(0) or busy
            if raise_errors and self._errors:
                message, exc = self._errors.pop(0)
                self._errors.clear()
                raise HandlerFailed(f"handler raised {exc!r} on {message!r}") from exc
            if not busy:
                return sum(server.handled for server in self.servers) - before
            if time.monotonic() > deadline:
                raise TimeoutError(f"services still busy after {timeout}s")

    def dead_letters(self, queue_name: str) -> List[Tuple[dict, bytes]]:
        """(headers, body) of the messages in ``queue_name``'s dead-letter queue."""
        return self.broker.messages(queue_name + ".dead")

    def close(self) -> None:
        """Close servers and clients and drop the broker."""
        for server in self.servers:
            server.close()
        for cli in self.clients:
            cli.close()
        MemoryBroker.reset(self.name)

    def __enter__(self) -> "MemoryCluster":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


__all__ = ["Capture", "HandlerFailed", "MemoryCluster"]

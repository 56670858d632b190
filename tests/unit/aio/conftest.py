"""Fixtures of the asyncio tests: anyio on asyncio, a blocking server running in a thread."""

from __future__ import annotations

import threading
from typing import Any, Callable, Iterator, List

import pytest

from tavrida import discovery, dispatcher, service
from tavrida.server import Server


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Running:
    """Blocking servers run by :meth:`start` in threads of their own; stopped at the end."""

    def __init__(self) -> None:
        self.servers: List[Server] = []
        self._threads: List[threading.Thread] = []

    def start(self, server: Server) -> Server:
        server.start()
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        self.servers.append(server)
        self._threads.append(thread)
        return server

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        for thread in self._threads:
            thread.join(10)


@pytest.fixture
def running() -> Iterator[Running]:
    runner = Running()
    yield runner
    runner.stop()


def hello_service(got: List[Any], gate: Callable[[], None] = lambda: None) -> type:
    """Service ``test_hello``: ``hello(param)`` echoes, ``fail(why)`` raises, ``slow`` waits."""

    @dispatcher.rpc_service("test_hello")
    class Hello(service.ServiceController):
        @dispatcher.rpc_method(service="test_hello", method="hello")
        def hello(self, request, proxy, param):
            got.append(param)
            return {"echo": param, "correlation_id": request.correlation_id,
                    "context": dict(request.context), "headers": dict(request.headers)}

        @dispatcher.rpc_method(service="test_hello", method="fail")
        def fail(self, request, proxy, why):
            raise ValueError(f"boom: {why}")

        @dispatcher.rpc_method(service="test_hello", method="slow")
        def slow(self, request, proxy, param):
            gate()
            return {"echo": param}

    disc = discovery.LocalDiscovery()
    disc.register_remote_service("client_app", "client_exchange")
    Hello.set_discovery(disc)
    return Hello


@pytest.fixture
def disc() -> discovery.LocalDiscovery:
    disc = discovery.LocalDiscovery()
    disc.register_remote_service(service_name="test_hello", exchange_name="test_exchange")
    disc.register_remote_service("client_app", "client_exchange")  # where answers come back
    return disc

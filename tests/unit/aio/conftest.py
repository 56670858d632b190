"""Fixtures of the asyncio tests: anyio on asyncio, a blocking server running in a thread."""

from __future__ import annotations

import threading
from typing import Iterator, List

import pytest

from tavrida import discovery
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


@pytest.fixture
def disc() -> discovery.LocalDiscovery:
    disc = discovery.LocalDiscovery()
    disc.register_remote_service(service_name="test_hello", exchange_name="test_exchange")
    disc.register_remote_service("client_app", "client_exchange")  # where answers come back
    return disc

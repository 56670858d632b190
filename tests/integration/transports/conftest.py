"""Fixtures of the kombu transport tests."""

from __future__ import annotations

from typing import Callable, Iterator, List

import pytest

from tavrida.config import ConnectionConfig
from tavrida.transports.kombu import KombuTransport

MakeTransport = Callable[..., KombuTransport]


@pytest.fixture
def make_transport(unique: object) -> Iterator[MakeTransport]:
    """``make(url, **config)`` opens a KombuTransport; all are closed after the test.

    Depends on ``unique`` so that transports close before names are cleaned up.
    """
    made: List[KombuTransport] = []

    def make(url: str, **config: object) -> KombuTransport:
        config.setdefault("retry_delay", 0.2)
        transport = KombuTransport(ConnectionConfig.from_url(url, **config))
        made.append(transport)
        return transport

    yield make
    for transport in made:
        transport.close()

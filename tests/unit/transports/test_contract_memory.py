"""The transport contract (tests/transport_contract.py) on tavrida's ``memory://``."""

from __future__ import annotations

import uuid
from typing import Callable, Iterator

import pytest
from transport_contract import TransportContract

from tavrida.transports.memory import MemoryBroker


class TestMemoryTransport(TransportContract):
    @pytest.fixture
    def kind(self) -> str:
        return "memory"

    @pytest.fixture
    def url(self) -> Iterator[str]:
        """A private in-memory broker, dropped after the test."""
        name = "contract-" + uuid.uuid4().hex
        yield f"memory://{name}"
        MemoryBroker.reset(name)

    @pytest.fixture
    def names(self) -> Callable[[str], str]:
        return lambda suffix: suffix  # the broker is the test's own

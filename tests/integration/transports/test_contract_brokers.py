"""The transport contract (tests/transport_contract.py) on kombu's transports.

``kombu+memory://``, RabbitMQ and Redis, through the ``broker_url`` and
``unique`` fixtures of tests/integration/conftest.py. The lowest supported
kombu/py-amqp run this module too (``.ci/kombu-matrix``).
"""

from __future__ import annotations

import pytest
from transport_contract import TransportContract


class TestKombuTransports(TransportContract):
    @pytest.fixture
    def kind(self, broker_url: str) -> str:
        if broker_url.startswith("amqp"):
            return "amqp"
        if broker_url.startswith("redis"):
            return "redis"
        return "kombu-memory"

    @pytest.fixture
    def url(self, broker_url: str) -> str:
        return broker_url

    @pytest.fixture
    def names(self, unique):
        return unique

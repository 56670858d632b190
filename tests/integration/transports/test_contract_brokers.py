"""The transport contract (tests/transport_contract.py) on kombu's transports.

``kombu+memory://``, RabbitMQ and Redis, through the ``broker_url`` and
``unique`` fixtures of tests/integration/conftest.py. The lowest supported
kombu/py-amqp run this module too (``.ci/kombu-matrix``), and ``.ci/run``
runs it once more on public upstream API only (``TAVRIDA_KOMBU_PUBLIC_API=1``).
"""

from __future__ import annotations

import dataclasses

import pytest
from transport_contract import CAPABILITIES, Capabilities, TransportContract

from tavrida.transports.kombu.compat import Compat


class TestKombuTransports(TransportContract):
    @pytest.fixture
    def kind(self, broker_url: str) -> str:
        if broker_url.startswith("amqp"):
            return "amqp"
        if broker_url.startswith("redis"):
            return "redis"
        return "kombu-memory"

    @pytest.fixture
    def can(self, kind: str) -> Capabilities:
        """The table's row; in public mode (``TAVRIDA_KOMBU_PUBLIC_API=1``) Redis has no delays."""
        row = CAPABILITIES[kind]
        if kind == "redis" and not Compat.from_environment().private:
            return dataclasses.replace(row, delays=False)
        return row

    @pytest.fixture
    def url(self, broker_url: str) -> str:
        return broker_url

    @pytest.fixture
    def names(self, unique):
        return unique

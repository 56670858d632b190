"""Fixtures of the asyncio broker tests: anyio on asyncio, RabbitMQ and Redis in turn."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["amqp", "redis"])
def url(request: pytest.FixtureRequest) -> str:
    """Each real broker in turn."""
    return str(request.getfixturevalue(f"{request.param}_url"))

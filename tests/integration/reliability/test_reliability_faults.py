"""Connection faults and de-duplication: a stream of casts and calls, connections cut.

The issue's sizes: 20,000 casts and 2,000 calls while the client's and the
service's connections are all reset five times at random moments (through
TCP proxies on loopback). Every cast is handled at least once, every call
gets its own answer or a clear error; with the idempotency middleware the
handler sees each message exactly once.
"""

from __future__ import annotations

import pytest

from soak import scenarios

CASTS, CALLS, CUTS = 20_000, 2_000, 5

pytestmark = pytest.mark.slow


def test_connection_faults_lose_nothing_on_rabbitmq(amqp_url, report) -> None:
    report(scenarios.faults(amqp_url, CASTS, CALLS, CUTS))


def test_idempotency_middleware_sees_each_message_once_on_rabbitmq(amqp_url, report) -> None:
    report(scenarios.faults(amqp_url, CASTS, CALLS, CUTS, idempotent=True))


def test_connection_faults_lose_nothing_on_redis(redis_url, report) -> None:
    report(scenarios.faults(redis_url, CASTS, CALLS, CUTS))


def test_idempotency_middleware_sees_each_message_once_on_redis(redis_url, report) -> None:
    report(scenarios.faults(redis_url, CASTS, CALLS, CUTS, idempotent=True))

"""Graceful shutdown: SIGTERM to a service in the middle of 10,000 messages.

The service finishes and acks what it holds and exits 0; the rest is still
in the queue, and a second service handles exactly that: nothing lost,
nothing handled twice. With worker threads (messages queued for workers are
in hand too) and without.
"""

from __future__ import annotations

import pytest

from soak import scenarios

MESSAGES = 10_000

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("workers", [4, 0])
def test_sigterm_finishes_what_it_holds_on_rabbitmq(amqp_url, report, workers) -> None:
    report(scenarios.shutdown(amqp_url, MESSAGES, workers=workers))


def test_sigterm_finishes_what_it_holds_on_redis(redis_url, report) -> None:
    report(scenarios.shutdown(redis_url, MESSAGES, workers=4))

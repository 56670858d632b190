"""Delay queues on Redis (kombu.compat.redis_delays): its keys, seen in Redis itself.

The behaviour every transport shares (a held message comes back after its
delay, and outlives its publisher) is in the transport contract; here what
is Redis's own: the two keys named after the queue, an undeclared delay
refused rather than stored where nobody reads, and deleting the queue
deleting its keys with what they hold.
"""

from __future__ import annotations

import pytest
import redis

from tavrida import config, exceptions
from tavrida.transports.base import DelayQueue, OutgoingEnvelope, Topology
from tavrida.transports.kombu import KombuTransport


@pytest.fixture
def transport(redis_url: str):
    opened = KombuTransport(config.ConnectionConfig.from_url(redis_url))
    yield opened
    opened.close()


@pytest.fixture
def keys(redis_url: str):
    conn = redis.Redis.from_url(redis_url)
    yield conn
    conn.close()


def test_held_messages_live_in_two_keys_named_after_the_queue(transport, keys, unique):
    queue = unique("q")
    delay = DelayQueue(queue, 60_000)
    transport.declare(Topology.build([], [queue], [], delays=[delay]))
    assert keys.smembers(f"{queue}.tavrida-delays") == {b"60000"}
    transport.publish(OutgoingEnvelope("", delay.name, b"held", {}))
    assert keys.zcard(f"{queue}.tavrida-delayed") == 1
    assert not keys.exists(delay.name)  # not a list: nobody pops it early
    assert transport.queue_size(queue) == 0

    # A delay nobody declared: refused, not stored in a list nobody reads.
    with pytest.raises(exceptions.Unroutable):
        transport.publish(OutgoingEnvelope("", f"{queue}.retry.5", b"lost?", {})).wait()
    assert not keys.exists(f"{queue}.retry.5")

    transport.delete(queues=[queue])
    assert not keys.exists(f"{queue}.tavrida-delays", f"{queue}.tavrida-delayed")

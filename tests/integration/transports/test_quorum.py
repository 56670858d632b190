"""Quorum queues on RabbitMQ: opt-in, new names only, the broker's delivery limit dead-letters.

On the machine's RabbitMQ (one node is enough for a quorum queue); the
cluster tests (tests/integration/cluster) kill the node that holds one.
"""

from __future__ import annotations

import amqp
import pytest

from tavrida import config, exceptions
from tavrida.transports.base import (
    Binding,
    DelayQueue,
    Delivery,
    OutgoingEnvelope,
    Topology,
    dead_letter_queue_name,
)
from tavrida.transports.kombu import KombuTransport


@pytest.fixture
def transport(amqp_url: str):
    opened = KombuTransport(config.ConnectionConfig.from_url(amqp_url))
    yield opened
    opened.close()


def _topology(unique, queue_type: str, delivery_limit=None) -> Topology:
    queue = unique("q")
    exchange = unique("x")
    dead = unique.track(dead_letter_queue_name(queue))
    return Topology.build([exchange], [queue, dead], [Binding(queue, exchange, "k.#")],
                          queue_type, delivery_limit)


def test_a_classic_queue_is_not_made_quorum_and_the_transport_goes_on(transport, unique):
    classic = _topology(unique, "classic")
    transport.declare(classic)
    quorum = Topology.build(classic.exchanges, classic.queues, classic.bindings, "quorum", 5)
    with pytest.raises(exceptions.QueueMismatch) as raised:
        transport.declare(quorum)
    text = str(raised.value)
    assert classic.queues[0] in text
    assert "exists as a classic queue" in text and "new queue name" in text
    assert "PRECONDITION_FAILED" in text  # RabbitMQ's own words come along
    # The channel RabbitMQ closed over it was replaced: the transport still declares.
    assert transport.queue_size(classic.queues[0]) == 0
    transport.declare(classic)


def test_quorum_queue_dead_letters_what_its_consumer_keeps_rejecting(transport, unique):
    topology = _topology(unique, "quorum", delivery_limit=2)
    queue, dead = topology.queues
    transport.declare(topology)
    transport.declare(topology)  # the same arguments again: equivalent
    transport.publish(OutgoingEnvelope(topology.exchanges[0], "k.1", b"poison", {})).wait()
    seen = []

    def reject(delivery: Delivery) -> None:
        seen.append(delivery.body)
        delivery.reject(requeue=True)

    transport.consume(queue, reject, 10)
    # Bounded by deliveries, not time: without the limit it would come back for ever.
    while transport.queue_size(dead) == 0 and len(seen) <= 10:
        transport.drain(0.2)
    transport.cancel()
    # Delivered once, then again twice (the limit): the broker dead-letters it.
    assert seen == [b"poison"] * 3
    assert transport.queue_size(dead) == 1
    assert transport.queue_size(queue) == 0


def test_a_quorum_delay_queue_gives_back_and_the_delivery_limit_still_applies(transport,
                                                                             unique):
    topology = _topology(unique, "quorum", delivery_limit=2)
    queue, dead = topology.queues
    delay = DelayQueue(queue, 200)
    unique.track(delay.name)
    topology = Topology.build(topology.exchanges, topology.queues, topology.bindings, "quorum",
                              2, [delay])
    transport.declare(topology)
    with pytest.raises(exceptions.QueueMismatch):  # it is a quorum queue
        transport.declare(Topology.build(delays=[delay]))
    retried = OutgoingEnvelope("", delay.name, b"retried", {"x-tavrida-attempts": 1})
    transport.publish(retried).wait()
    seen = []

    def reject(delivery: Delivery) -> None:
        seen.append(delivery.body)
        delivery.reject(requeue=True)

    transport.consume(queue, reject, 10)
    while transport.queue_size(dead) == 0 and len(seen) <= 10:
        transport.drain(0.2)
    transport.cancel()
    # Back from its delay queue, then the broker's limit: delivered 3 times, dead-lettered.
    assert seen == [b"retried"] * 3
    assert transport.queue_size(dead) == 1
    assert transport.queue_size(queue) == 0 and transport.queue_size(delay.name) == 0


def test_an_exchange_of_another_kind_keeps_the_brokers_error(transport, amqp_url, unique):
    import kombu

    name = unique("x")
    with kombu.Connection(amqp_url) as conn:
        kombu.Exchange(name, "direct", durable=True)(conn.default_channel).declare()
    with pytest.raises(amqp.PreconditionFailed):
        transport.declare(Topology.build([name], [], [], "quorum"))
    transport.declare(Topology.build([], [unique("q")], [], "quorum"))  # still usable

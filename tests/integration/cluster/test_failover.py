"""tavrida on the three-node cluster: a node dies under a stream of casts and calls.

The issue's sizes: 20,000 casts and 2,000 calls while node 1, where the
service and the client are both connected, is SIGKILLed and booted again
(:func:`soak.cluster.failover`). Every cast is handled at least once, every
call answered with its own answer or failed with a clear error, the counts
printed (``-s``). Classic queues live on node 2 (a classic queue lives on
one node; see docs/deployment.rst); quorum queues have node 1 as their
leader, so the node killed held them, and still nothing is lost. Classic
queues on the node killed (``classic-home``) refuse what is sent while it is
down, and their senders are told so (``Unroutable``): no silent loss either.
"""

from __future__ import annotations

import logging
import threading
import uuid
from typing import List

import pytest
from cluster_harness import RabbitCluster

from soak import cluster as soak_cluster
from tavrida import config
from tavrida.transports.base import Binding, Delivery, OutgoingEnvelope, Topology
from tavrida.transports.kombu import KombuTransport

CASTS, CALLS = 20_000, 2_000


@pytest.mark.parametrize("variant", soak_cluster.VARIANTS)
def test_killing_the_node_of_a_service_and_a_client_loses_nothing(
        rabbit_cluster: RabbitCluster, variant: str) -> None:
    result = soak_cluster.failover(rabbit_cluster, variant, CASTS, CALLS)
    print(f"\n{result.line()}")
    assert result.passed, result.line()


def test_a_classic_queue_whose_node_died_is_consumed_again_when_it_is_back(
        rabbit_cluster: RabbitCluster, caplog: pytest.LogCaptureFixture) -> None:
    """RabbitMQ's 404 "home node ... is down" is retried, not raised, until the node is back."""
    name = f"tavrida-cluster-home-{uuid.uuid4().hex[:8]}"
    topology = Topology.build([name], [name], [Binding(name, name, "k.#")])
    # Home node 3; the consumer is connected to node 1.
    owner = KombuTransport(config.ConnectionConfig.from_url(rabbit_cluster.node(3).url))
    consumer = KombuTransport(config.ConnectionConfig.from_url(
        rabbit_cluster.failover_url, retry_delay=0.2))
    publisher = KombuTransport(config.ConnectionConfig.from_url(rabbit_cluster.node(2).url))
    received: List[bytes] = []
    arrived = threading.Event()
    failures: List[BaseException] = []
    stopping = threading.Event()

    def on_message(delivery: Delivery) -> None:
        received.append(delivery.body)
        delivery.ack()
        arrived.set()

    def drain() -> None:
        try:
            while not stopping.is_set():
                consumer.drain(0.2)
        except BaseException as exc:  # noqa: BLE001 - the test's verdict
            failures.append(exc)

    caplog.set_level(logging.WARNING, logger="tavrida.transports.kombu")
    try:
        owner.declare(topology)
        consumer.declare(topology)
        consumer.consume(name, on_message, 10)
        thread = threading.Thread(target=drain, name="drain")
        thread.start()
        rabbit_cluster.kill(3)
        rabbit_cluster.restart(3)
        publisher.publish(OutgoingEnvelope(name, "k.1", b"after", {}))
        # Bounded by the failure of the consumer (which ends the wait) or the message.
        while not arrived.wait(0.5) and not failures and thread.is_alive():
            pass
        stopping.set()
        consumer.stop()
        thread.join(60)
        assert not failures, f"the consumer gave up: {failures[0]!r}"
        assert received == [b"after"]
        warnings = [r.getMessage() for r in caplog.records]
        assert any("QueueUnavailable" in text and "home node" in text for text in warnings), \
            "the consumer never met the down home node: the test proved nothing"
    finally:
        stopping.set()
        consumer.close()
        publisher.close()
        owner.delete(exchanges=[name], queues=[name])
        owner.close()

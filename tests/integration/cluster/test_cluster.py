"""The test cluster itself, with plain kombu: it forms, it routes, a killed node is only that one.

tavrida's own failover tests (casts and calls while a node dies) are in
test_failover.py, on the same fixture.
"""

from __future__ import annotations

import subprocess
import time
import uuid

import kombu
import pytest
from cluster_harness import RabbitCluster, _bin


@pytest.fixture
def names(rabbit_cluster: RabbitCluster):
    """unique(x) -> a name of its own; its queues are deleted at the end."""
    made = []

    def unique(prefix: str) -> str:
        made.append(f"tavrida-cluster-{prefix}-{uuid.uuid4().hex[:8]}")
        return made[-1]

    yield unique
    alive = next(n for n in rabbit_cluster.nodes if n.pid() is not None)
    with kombu.Connection(alive.url, connect_timeout=10) as conn:
        for name in made:
            channel = conn.channel()
            try:
                channel.queue_delete(name)
            finally:
                channel.close()


def _quorum(name: str) -> kombu.Queue:
    """A quorum queue bound to the default exchange (every declare must say quorum)."""
    return kombu.Queue(name, durable=True, queue_arguments={"x-queue-type": "quorum"})


def _machine_node_pid() -> str:
    """The pid of the machine's own RabbitMQ, by the pid of its 5672 listener."""
    out = subprocess.run(["ss", "-ltnpH", "sport = :5672"], capture_output=True,
                         text=True).stdout
    return out.split("pid=")[1].split(",")[0] if "pid=" in out else ""


def test_three_nodes_form_one_cluster(rabbit_cluster: RabbitCluster):
    want = sorted(n.nodename for n in rabbit_cluster.nodes)
    for node in rabbit_cluster.nodes:
        assert rabbit_cluster.running_nodes(node.index) == want
    base = rabbit_cluster.base_port
    assert rabbit_cluster.urls == [f"amqp://guest:guest@127.0.0.1:{base + i}//" for i in (1, 2, 3)]


def test_published_on_node_1_consumed_on_node_2(rabbit_cluster: RabbitCluster, names):
    queue = names("q")
    with kombu.Connection(rabbit_cluster.node(1).url, connect_timeout=10) as one, \
            kombu.Connection(rabbit_cluster.node(2).url, connect_timeout=10) as two:
        _quorum(queue)(one).declare()
        one.Producer().publish({"n": 1}, routing_key=queue, retry=False)
        message = None
        deadline = time.monotonic() + 30
        simple = two.SimpleQueue(_quorum(queue), no_ack=False)
        try:
            while message is None and time.monotonic() < deadline:
                try:
                    message = simple.get(timeout=1)
                except simple.Empty:
                    continue
            assert message is not None, "the message published on node 1 never reached node 2"
            assert message.payload == {"n": 1}
            message.ack()
        finally:
            simple.consumer.cancel()


def test_kill_ends_one_node_and_a_failover_url_moves_on(rabbit_cluster: RabbitCluster, names):
    """Last in this file: the next test to ask for the cluster boots node 1 again."""
    queue = names("q")
    machine_pid = _machine_node_pid()
    with kombu.Connection(rabbit_cluster.failover_url, connect_timeout=10,
                          transport_options={"confirm_publish": True}) as conn:
        conn.ensure_connection(max_retries=3)
        assert conn.port == rabbit_cluster.node(1).port
        _quorum(queue)(conn).declare()
        conn.Producer().publish({"n": 1}, routing_key=queue, retry=False)
        rabbit_cluster.kill(1)
        assert rabbit_cluster.node(1).pid() is None
        assert rabbit_cluster.node(2).pid() and rabbit_cluster.node(3).pid()
        assert _machine_node_pid() == machine_pid
        conn.close()
        conn.ensure_connection(max_retries=5, interval_start=0.5)
        assert conn.port in (rabbit_cluster.node(2).port, rabbit_cluster.node(3).port)
        simple = conn.SimpleQueue(_quorum(queue), no_ack=False)
        try:
            message = simple.get(timeout=30)
            assert message.payload == {"n": 1}, "a quorum queue keeps its message"
            message.ack()
        finally:
            simple.consumer.cancel()
    assert subprocess.run([_bin("rabbitmqctl"), "-n", rabbit_cluster.node(1).nodename,
                           "ping"], env=rabbit_cluster.node(1).env(), capture_output=True,
                          timeout=120).returncode != 0

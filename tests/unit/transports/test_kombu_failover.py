"""Broker-free tests of failing over between a cluster's nodes, and of quorum declarations.

Nothing listens on the ports used here, so a real connect attempt is
refused at once; where the test needs a node that answers, the one-node
connect (``Connector.open_node``) is replaced by a recorder. The real cluster is in
tests/integration/cluster.
"""

from __future__ import annotations

import logging
from typing import Any, List

import amqp
import pytest

from tavrida import discovery, dispatcher, exceptions, service
from tavrida.config import ConnectionConfig
from tavrida.server import Server
from tavrida.transports.base import Binding, Topology
from tavrida.transports.kombu import KombuTransport
from tavrida.transports.kombu.nodes import NodeRotation, QueueUnavailable, node_endpoint
from tavrida.transports.memory import MemoryTransport

#: Three "nodes" nothing listens on; the first carries the credentials.
CLUSTER = ("amqp://svc:s3cret@127.0.0.1:25691//;amqp://127.0.0.1:25692;"
           "amqp://other:pw2@127.0.0.1:25693")


def transport(url: str = CLUSTER, **options: Any) -> KombuTransport:
    return KombuTransport(ConnectionConfig.from_url(url, **options))


class Nodes:
    """Stands in for ``Connector.open_node``: records the nodes tried, answers from ``up``."""

    def __init__(self, up: List[int]) -> None:
        self.up = up
        self.tried: List[int] = []

    def __call__(self, role: str, heartbeat: float, node: int) -> str:
        self.tried.append(node)
        if node not in self.up:
            raise ConnectionRefusedError(111, "Connection refused")
        return f"connection to node {node}"


def test_the_rotation_starts_with_the_current_node_and_wraps() -> None:
    rotation = NodeRotation(3)
    assert rotation.order() == [0, 1, 2]
    rotation.connected(2)
    assert rotation.order() == [2, 0, 1]
    rotation.failed_round()
    assert rotation.order() == [0, 1, 2]
    assert NodeRotation(1).order() == [0]


def test_each_node_gets_its_own_host_port_and_credentials() -> None:
    kombu = transport()
    params = [kombu._connector.params("consume", 0, node) for node in range(3)]
    assert [(p["hostname"], p["port"]) for p in params] == [
        ("127.0.0.1", 25691), ("127.0.0.1", 25692), ("127.0.0.1", 25693)]
    # A node without a user takes the first URL's; one with its own keeps it.
    assert [(p["userid"], p["password"]) for p in params] == [
        ("svc", "s3cret"), ("svc", "s3cret"), ("other", "pw2")]
    assert node_endpoint("amqp://a%40b:p%2Fw@h:1//") == ("h", 1, "a@b", "p/w")


def test_a_connect_attempt_tries_every_node_once_then_raises(
        caplog: pytest.LogCaptureFixture) -> None:
    kombu = transport()
    caplog.set_level(logging.WARNING)
    with pytest.raises(OSError):
        kombu._connector.open("publish")
    tried = [r.getMessage() for r in caplog.records if "cannot connect to node" in r.getMessage()]
    assert [text.split("/")[2] for text in tried] == [
        "svc:***@127.0.0.1:25691", "svc:***@127.0.0.1:25692", "other:***@127.0.0.1:25693"]
    assert "s3cret" not in caplog.text and "pw2" not in caplog.text
    assert kombu._connector.rotation("publish").current == 1  # the next round starts further on


def test_no_node_password_shows_in_a_connection_error() -> None:
    kombu = transport()
    error = kombu._connector.failed(OSError("refused by other:pw2 and svc:s3cret"), "gave up")
    assert "pw2" not in str(error) and "s3cret" not in str(error)
    assert "other:***" in str(error)


def test_a_connection_keeps_the_node_that_answered(monkeypatch: pytest.MonkeyPatch) -> None:
    kombu = transport()
    nodes = Nodes(up=[1, 2])
    monkeypatch.setattr(kombu._connector, "open_node", nodes)
    assert kombu._connector.open("consume") == "connection to node 1"
    assert kombu._connector.open("consume") == "connection to node 1"
    assert nodes.tried == [0, 1, 1]
    # Each connection has its own rotation: the publisher starts with the first node.
    assert kombu._connector.open("publish") == "connection to node 1"
    assert nodes.tried[3:] == [0, 1]
    nodes.up = [2]  # node 1 dies too
    assert kombu._connector.open("consume") == "connection to node 2"
    assert nodes.tried[5:] == [1, 2]


def test_no_further_node_is_tried_past_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    kombu = transport()
    nodes = Nodes(up=[2])
    monkeypatch.setattr(kombu._connector, "open_node", nodes)
    with kombu.deadline(0), pytest.raises(ConnectionRefusedError):
        kombu._connector.open("consume")
    assert nodes.tried == [0]


def test_no_further_node_is_tried_once_interrupted(monkeypatch: pytest.MonkeyPatch) -> None:
    kombu = transport()
    nodes = Nodes(up=[2])
    monkeypatch.setattr(kombu._connector, "open_node", nodes)
    kombu.interrupt()
    with pytest.raises(exceptions.ConnectionFailed, match="stopped"):
        kombu._connector.open("consume")
    assert nodes.tried == [0]


def test_the_retry_loop_moves_on_to_a_node_that_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole first connect: node 1 refuses, node 2 answers, in one attempt, no pause."""
    kombu = transport(retry_delay=30.0)  # a pause would make this test hang
    nodes = Nodes(up=[1])
    monkeypatch.setattr(kombu._connector, "open_node", nodes)
    opened: List[str] = []
    link = kombu._consuming._link
    monkeypatch.setattr(link, "connect", lambda: opened.append(kombu._connector.open("c")))
    kombu._context.retry(link.connect_declaring, True, "connecting to")
    assert opened == ["connection to node 1"] and nodes.tried == [0, 1]


def home_node_down() -> amqp.NotFound:
    return amqp.NotFound("NOT_FOUND - home node 'rabbit@r1' of durable queue 'q' in vhost "
                         "'/' is down or inaccessible", (50, 10), "Queue.declare", 404)


def test_a_queue_whose_home_node_is_down_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    kombu = transport(retry_delay=0.0)
    errors = [home_node_down(), home_node_down()]

    def connect() -> None:
        if errors:
            raise errors.pop()

    link = kombu._consuming._link
    monkeypatch.setattr(link, "connect", connect)
    with pytest.raises(QueueUnavailable):
        link.connect_declaring()
    assert issubclass(QueueUnavailable, kombu._context.retry_errors)
    kombu._context.retry(link.connect_declaring, True, "connecting to")  # retried until it works
    assert errors == []


def test_another_not_found_is_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    kombu = transport()
    missing = amqp.NotFound("NOT_FOUND - no exchange 'x' in vhost '/'", (50, 10),
                            "Queue.bind", 404)

    def connect() -> None:
        raise missing

    link = kombu._consuming._link
    monkeypatch.setattr(link, "connect", connect)
    with pytest.raises(amqp.NotFound):
        link.connect_declaring()


# -- quorum queues ---------------------------------------------------------------------------------

def quorum(limit: Any = 5) -> Topology:
    return Topology.build(["x"], ["q", "q.dead", "other"], [Binding("q", "x", "k.#")],
                          "quorum", limit)


def test_classic_queues_have_no_arguments() -> None:
    classic = Topology.build(["x"], ["q", "q.dead"])
    assert classic.queue_arguments("q") == {} and classic.queue_arguments("q.dead") == {}


def test_a_quorum_queue_dead_letters_to_its_own_dead_letter_queue() -> None:
    topology = quorum()
    assert topology.queue_arguments("q") == {
        "x-queue-type": "quorum", "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "q.dead", "x-delivery-limit": 5}
    assert topology.queue_arguments("q.dead") == {"x-queue-type": "quorum"}
    assert topology.queue_arguments("other") == {"x-queue-type": "quorum"}
    assert "x-delivery-limit" not in quorum(None).queue_arguments("q")


def test_an_unknown_queue_type_is_refused() -> None:
    with pytest.raises(exceptions.IncorrectAMQPConfig, match="classic, quorum.*'mirrored'"):
        Topology.build(queues=["q"], queue_type="mirrored")


@dispatcher.rpc_service("failover_unit")
class Unit(service.ServiceController):
    @dispatcher.rpc_method(service="failover_unit", method="ping")
    def ping(self, request: Any, proxy: Any) -> None:
        """Never called: the server is only asked for its topology."""


def test_a_server_passes_its_queue_type_and_max_attempts_on() -> None:
    Unit.set_discovery(discovery.LocalDiscovery())
    server = Server("memory://", "q", "x", [Unit], queue_type="quorum", max_attempts=3)
    topology = server.topology()
    assert (topology.queue_type, topology.delivery_limit) == ("quorum", 3)
    assert topology.queue_arguments("q")["x-dead-letter-routing-key"] == "q.dead"
    assert Server("memory://", "q", "x", [Unit]).topology().queue_type == "classic"
    with pytest.raises(exceptions.IncorrectAMQPConfig):
        Server("memory://", "q", "x", [Unit], queue_type="Quorum")


def test_redis_refuses_quorum_queues_before_connecting() -> None:
    redis = transport("redis://127.0.0.1:25694/0")
    with pytest.raises(exceptions.IncorrectAMQPConfig, match="RabbitMQ feature.*redis://"):
        redis.declare(quorum())
    redis.close()


def test_the_memory_transport_takes_quorum_as_classic() -> None:
    """Unit tests of a service run with its production queue_type (documented)."""
    memory = MemoryTransport(ConnectionConfig.from_url("memory://quorum-test"))
    try:
        memory.declare(quorum())
        assert memory.queue_size("q") == 0
    finally:
        memory.close()

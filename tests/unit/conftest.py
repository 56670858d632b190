"""Shared fixtures of the unit tests: an in-memory cluster, raw broker access, the tutorial.

Nothing here replaces the transport: every test runs servers and clients on
tavrida's in-memory broker (``tavrida.testing.MemoryCluster``) and looks at
what the broker holds, as an operator would look at RabbitMQ.
"""

from __future__ import annotations

import json
import pathlib
import uuid
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

from tavrida import discovery, dispatcher, messages, service
from tavrida.testing import MemoryCluster
from tavrida.transports.base import Binding, Delivery, OutgoingEnvelope, Topology
from tavrida.transports.memory import MemoryTransport

#: Six messages exactly as tavrida 1.0 put them on RabbitMQ (a copy of the reference
#: file shared with the wire protocol document).
SAMPLES_FILE = pathlib.Path(__file__).parent / "data" / "wire-samples-1.0.jsonl"


@pytest.fixture
def cluster() -> Iterator[MemoryCluster]:
    """A MemoryCluster of its own (a private in-memory broker), closed after the test."""
    with MemoryCluster() as memory_cluster:
        yield memory_cluster


class Spy:
    """A queue bound with ``pattern`` to some exchanges: what the broker routed there."""

    def __init__(self, transport: MemoryTransport, exchanges: Tuple[str, ...],
                 pattern: str) -> None:
        self.queue = "spy-" + uuid.uuid4().hex
        self._transport = transport
        self._deliveries: List[Delivery] = []
        transport.declare(Topology.build(
            exchanges, [self.queue], [Binding(self.queue, name, pattern) for name in exchanges]))
        transport.consume(self.queue, self._keep, 0)

    def _keep(self, delivery: Delivery) -> None:
        delivery.ack()
        self._deliveries.append(delivery)

    def collect(self) -> List[Delivery]:
        """Every delivery seen so far (body, headers, properties, exchange, routing key)."""
        self._transport.drain(0)
        return list(self._deliveries)


class Broker:
    """Raw access to a cluster's broker: spy on exchanges, publish bytes, read queues."""

    def __init__(self, cluster: MemoryCluster) -> None:
        self.cluster = cluster
        self._transports: List[MemoryTransport] = []
        self._producer = self._open()

    def _open(self) -> MemoryTransport:
        transport = MemoryTransport(self.cluster.config)
        self._transports.append(transport)
        return transport

    def open_transport(self) -> MemoryTransport:
        """A transport of the cluster's broker, closed after the test."""
        return self._open()

    def spy(self, *exchanges: str, pattern: str = "#") -> Spy:
        """Bind a fresh queue to ``exchanges`` (declared if missing) with ``pattern``."""
        return Spy(self._open(), exchanges, pattern)

    def publish(self, exchange: str, routing_key: str, body: Any, headers: Optional[dict],
                content_type: Optional[str] = None,
                content_encoding: Optional[str] = None) -> None:
        """Publish exactly these bytes and headers (no content type by default, as 1.0)."""
        if isinstance(body, str):
            body = body.encode("utf-8")
        self._producer.publish(OutgoingEnvelope(exchange, routing_key, body, headers,
                                                content_type=content_type,
                                                content_encoding=content_encoding))

    def messages(self, queue: str) -> List[Tuple[dict, bytes]]:
        """(headers, body) of the messages ready in ``queue``."""
        return self.cluster.broker.messages(queue)

    def dead(self, queue: str) -> List[Tuple[dict, bytes]]:
        """(headers, body) of the messages in ``queue``'s dead-letter queue."""
        return self.cluster.dead_letters(queue)

    @staticmethod
    def headers(destination: str, reply_to: str = "", source: str = "client.method",
                correlation_id: str = "123-456", message_type: str = "request",
                **extra: Any) -> Dict[str, Any]:
        """The seven headers of a message as 1.0 writes them (strings, fresh ids) + ``extra``."""
        headers = {"correlation_id": correlation_id, "reply_to": reply_to, "source": source,
                   "destination": destination, "request_id": uuid.uuid4().hex,
                   "message_type": message_type, "message_id": uuid.uuid4().hex}
        headers.update(extra)
        return headers

    @staticmethod
    def body(payload: Any, context: Any = None) -> bytes:
        """A 1.0 envelope: ``{"payload": ..., "context": ...}`` as UTF-8 JSON."""
        return json.dumps({"payload": payload, "context": context or {}}).encode("utf-8")

    def close(self) -> None:
        for transport in self._transports:
            transport.close()


@pytest.fixture
def broker(cluster: MemoryCluster) -> Iterator[Broker]:
    """Raw access to the cluster's broker (spies, raw publishes, queue contents)."""
    tools = Broker(cluster)
    yield tools
    tools.close()


def load_samples() -> List[dict]:
    """The six messages tavrida 1.0 put on RabbitMQ (see wire-samples-1.0.jsonl)."""
    with SAMPLES_FILE.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


@pytest.fixture
def samples() -> Dict[str, dict]:
    """The 1.0 samples by a short name: cast, handler_call, notification, response,
    error, client_call."""
    names = ["cast", "handler_call", "notification", "response", "error", "client_call"]
    loaded = load_samples()
    assert len(loaded) == len(names)
    return dict(zip(names, loaded))


class WorldFailure(Exception):
    """What World raises when asked to fail (code travels in the Error)."""

    code = 42


class Tutorial:
    """The Hello / World services of the 1.0 tutorial, on a cluster, with a record of calls.

    Hello (queue ``test_service``, exchange ``test_exchange``) handles
    ``test_hello.hello``: it calls ``test_world.world`` and publishes a
    notification unless ``param`` is ``"quiet"``; it has a response and an
    error handler for ``test_world.world``. World (queue
    ``test_world_service``, exchange ``test_world_exchange``) answers
    ``{"param": "world response"}`` or raises WorldFailure when
    ``param == "fail"``, and subscribes to ``test_hello.hello``.
    Answers to callers named ``client`` go to ``client_exchange``.
    """

    def __init__(self, cluster: MemoryCluster) -> None:
        self.cluster = cluster
        self.WorldFailure = WorldFailure
        #: (handler name, message, keyword arguments) in the order handlers ran.
        self.calls: List[Tuple[str, messages.Message, Dict[str, Any]]] = []
        record = self.calls

        @dispatcher.rpc_service("test_hello")
        class HelloController(service.ServiceController):

            @dispatcher.rpc_method(service="test_hello", method="hello")
            def handler(self, request, proxy, param):
                record.append(("hello", request, {"param": param}))
                if param != "quiet":
                    proxy.test_world.world(param=param).call()
                    proxy.publish(param="hello publication")

            @dispatcher.rpc_response_method(service="test_world", method="world")
            def world_resp(self, response, proxy, param):
                record.append(("world_resp", response, {"param": param}))

            @dispatcher.rpc_error_method(service="test_world", method="world")
            def world_error(self, error, proxy):
                record.append(("world_error", error, {}))

        @dispatcher.rpc_service("test_world")
        class WorldController(service.ServiceController):

            @dispatcher.rpc_method(service="test_world", method="world")
            def world(self, request, proxy, param):
                record.append(("world", request, {"param": param}))
                if param == "fail":
                    raise WorldFailure(f"world fails once (param={param})")
                return {"param": "world response"}

            @dispatcher.subscription_method(service="test_hello", method="hello")
            def hello_subscription(self, notification, proxy, param):
                record.append(("hello_subscription", notification, {"param": param}))

        hello_disc = discovery.LocalDiscovery()
        hello_disc.register_remote_service("test_world", "test_world_exchange")
        hello_disc.register_remote_service("client", "client_exchange")
        hello_disc.register_local_publisher("test_hello", "test_notification_exchange")
        HelloController.set_discovery(hello_disc)
        world_disc = discovery.LocalDiscovery()
        world_disc.register_remote_service("test_hello", "test_exchange")
        world_disc.register_remote_publisher("test_hello", "test_notification_exchange")
        WorldController.set_discovery(world_disc)

        self.Hello = HelloController
        self.World = WorldController
        self.hello_server = cluster.add_server([HelloController], queue_name="test_service",
                                               exchange_name="test_exchange")
        self.world_server = cluster.add_server([WorldController],
                                               queue_name="test_world_service",
                                               exchange_name="test_world_exchange")

    def client(self, source: str = "client.method", **kwargs: Any):
        disc = discovery.LocalDiscovery()
        disc.register_remote_service("test_hello", "test_exchange")
        return self.cluster.client(disc, source=source, **kwargs)

    def handled(self, name: str) -> List[Tuple[messages.Message, Dict[str, Any]]]:
        """(message, keyword arguments) of each run of handler ``name``."""
        return [(message, kwargs) for handler, message, kwargs in self.calls
                if handler == name]

    def names(self) -> List[str]:
        return [handler for handler, _, _ in self.calls]


@pytest.fixture
def tutorial(cluster: MemoryCluster) -> Tutorial:
    """The 1.0 tutorial's Hello and World servers, started on the cluster."""
    return Tutorial(cluster)

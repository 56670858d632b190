"""Message contracts on a real RabbitMQ: typed parameters, named events, the AsyncAPI document.

Services run ``Server.run`` in threads; a 1.0-style subscriber is a plain
py-amqp queue bound to the notification exchange with ``<service>.<event>``.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import threading
from typing import Any, Dict, Iterator, List

import pytest
from svc_support import WAIT, PlainAMQP

from tavrida import asyncapi, client, discovery, dispatcher, exceptions, server, service


@dataclasses.dataclass
class Item:
    sku: str
    quantity: int = 1


class Seen:
    """What the handlers got, with a bounded wait."""

    def __init__(self) -> None:
        self.items: List[Dict[str, Any]] = []
        self._cond = threading.Condition()

    def add(self, **item: Any) -> None:
        with self._cond:
            self.items.append(item)
            self._cond.notify_all()

    def wait_for(self, count: int) -> List[Dict[str, Any]]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.items) >= count, WAIT), self.items
            return list(self.items)


class Running:
    """``stock`` (typed, publishes ``reserved``) and ``audit`` (subscribes to it), on RabbitMQ."""

    def __init__(self, url: str, unique: Any) -> None:
        self.url = url
        self.seen = Seen()
        seen = self.seen
        self.names = {name: unique(name) for name in (
            "stock-q", "stock-ex", "audit-q", "audit-ex", "events-ex", "replies-ex", "raw-q")}
        names = self.names

        @dispatcher.rpc_service("stock")
        class Stock(service.ServiceController):
            @dispatcher.rpc_method(service="stock", method="reserve", publishes=("reserved",))
            def reserve(self, request, proxy, item_id: int, item: Item):
                seen.add(handler="reserve", item_id=item_id, item=item)
                proxy.publish_event("reserved", item_id=item_id, sku=item.sku)
                return item

        @dispatcher.rpc_service("audit")
        class Audit(service.ServiceController):
            @dispatcher.subscription_method(service="stock", method="reserved")
            def on_reserved(self, notification, proxy, item_id: int, sku: str):
                seen.add(handler="on_reserved", source=str(notification.source),
                         item_id=item_id, sku=sku)

        stock_disc = discovery.LocalDiscovery()
        stock_disc.register_local_publisher("stock", names["events-ex"])
        Stock.set_discovery(stock_disc)
        audit_disc = discovery.LocalDiscovery()
        audit_disc.register_remote_publisher("stock", names["events-ex"])
        Audit.set_discovery(audit_disc)
        self.servers = [server.Server(url, names["stock-q"], names["stock-ex"], [Stock]),
                        server.Server(url, names["audit-q"], names["audit-ex"], [Audit])]
        self.threads: List[threading.Thread] = []
        client_disc = discovery.LocalDiscovery()
        client_disc.register_remote_service("stock", names["stock-ex"])
        client_disc.register_remote_service("buyer", names["replies-ex"])
        self.client_disc = client_disc

    def start(self) -> None:
        for srv in self.servers:
            srv.start()
            thread = threading.Thread(target=srv.run, daemon=True)
            thread.start()
            self.threads.append(thread)

    def close(self) -> None:
        for srv in self.servers:
            srv.stop()
        for thread in self.threads:
            thread.join(WAIT)
        for srv in self.servers:
            srv.close()
        assert not any(thread.is_alive() for thread in self.threads)


@pytest.fixture
def running(amqp_url, unique) -> Iterator[Running]:
    services = Running(amqp_url, unique)
    services.start()
    yield services
    services.close()


@pytest.fixture
def plain(amqp_url, unique) -> Iterator[PlainAMQP]:
    with PlainAMQP(amqp_url) as conn:
        yield conn


def test_a_wrong_type_is_a_named_error_and_the_handler_never_runs(running, plain):
    with client.RPCClient(running.url, running.client_disc, source="buyer") as cli:
        with pytest.raises(exceptions.RemoteError) as caught:
            cli.stock.reserve(item_id="abc", item={"sku": 1}).call(timeout=WAIT)
        assert caught.value.remote_name == "InvalidPayload"
        assert caught.value.remote_message == (
            "Invalid payload for stock.reserve: item_id: expected int, got str 'abc'; "
            "item.sku: expected str, got int 1")
        # A good call after it: the bad one was acked and is not coming back.
        assert cli.stock.reserve(item_id=1, item={"sku": "a"}).call(timeout=WAIT) == {
            "sku": "a", "quantity": 1}
    seen = running.seen.wait_for(2)  # the good call, and the event it published
    assert [i for i in seen if i["handler"] == "reserve"] == [
        {"handler": "reserve", "item_id": 1, "item": Item("a", 1)}]
    assert plain.message_count(running.names["stock-q"]) == 0
    assert plain.message_count(running.names["stock-q"] + ".dead") == 0


def test_a_named_event_reaches_its_subscriber_and_a_1_0_queue(running, plain):
    raw = plain.spy(running.names["raw-q"], [(running.names["events-ex"], "stock.reserved")])
    with client.RPCClient(running.url, running.client_disc, source="buyer") as cli:
        cli.stock.reserve(item_id=7, item={"sku": "tea", "quantity": 2}).cast()
    seen = running.seen.wait_for(2)
    assert seen == [
        {"handler": "reserve", "item_id": 7, "item": Item("tea", 2)},
        {"handler": "on_reserved", "source": "stock.reserved", "item_id": 7, "sku": "tea"}]
    [message] = plain.wait_for(raw, 1)
    assert (message.exchange, message.routing_key) == (running.names["events-ex"],
                                                       "stock.reserved")
    assert message.headers["source"] == "stock.reserved"
    assert message.headers["message_type"] == "notification"
    assert json.loads(message.body)["payload"] == {"item_id": 7, "sku": "tea"}


def test_a_client_publishes_a_named_event(running, plain):
    disc = discovery.LocalDiscovery()
    disc.register_local_publisher("stock", running.names["events-ex"])
    with client.RPCClient(running.url, disc, source="stock") as cli:
        cli.publish_event("reserved", item_id=3, sku="cup")
    assert running.seen.wait_for(1) == [
        {"handler": "on_reserved", "source": "stock.reserved", "item_id": 3, "sku": "cup"}]


def test_the_asyncapi_document_of_the_running_services_validates(running):
    jsonschema = pytest.importorskip("jsonschema")
    spec = pathlib.Path(__file__).resolve().parents[1] / "unit" / "data" / "asyncapi" / \
        "3.0.0-without-id.json"
    doc = asyncapi.document(*running.servers)
    errors = list(jsonschema.Draft7Validator(json.loads(spec.read_text())).iter_errors(doc))
    assert errors == []
    assert doc["servers"]["broker"]["protocol"] == "amqp"
    assert sorted(doc["operations"]) == ["audit.on.stock.reserved", "stock.publishes.reserved",
                                         "stock.reserve.call", "stock.reserve.cast"]

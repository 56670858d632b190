"""Named events on the in-memory transport: published by name, subscribed to by name."""

from __future__ import annotations

import json
import uuid
from typing import Any, Dict, List

import pytest

from tavrida import cli, discovery, dispatcher, events, exceptions, service
from tavrida import config as config_mod
from tavrida.transports import Binding, Topology, create_transport


class Orders:
    """``orders`` publishes ``order_placed`` by name; ``billing`` subscribes to it by name."""

    def __init__(self, cluster) -> None:
        self.cluster = cluster
        self.seen: List[Dict[str, Any]] = []
        seen = self.seen

        @dispatcher.rpc_service("orders")
        class OrdersController(service.ServiceController):
            @dispatcher.rpc_method(service="orders", method="place",
                                   publishes=("order_placed",))
            def place(self, request, proxy, order_id):
                proxy.publish_event("order_placed", order_id=order_id, event="x",
                                    correlation_id="payload too")
                proxy.publish(order_id=order_id)  # 1.0: named after the handler

        @dispatcher.rpc_service("billing")
        class BillingController(service.ServiceController):
            @dispatcher.subscription_method(service="orders", method="order_placed")
            def on_placed(self, notification, proxy, order_id: int, event, correlation_id):
                seen.append({"by": "order_placed", "source": str(notification.source),
                             "order_id": order_id, "event": event,
                             "correlation_id": correlation_id,
                             "message_correlation_id": notification.correlation_id})

            @dispatcher.subscription_method(service="orders", method="place")
            def on_place(self, notification, proxy, order_id):
                seen.append({"by": "place", "source": str(notification.source)})

        orders_disc = discovery.LocalDiscovery()
        orders_disc.register_local_publisher("orders", "orders_events")
        OrdersController.set_discovery(orders_disc)
        billing_disc = discovery.LocalDiscovery()
        billing_disc.register_remote_publisher("orders", "orders_events")
        BillingController.set_discovery(billing_disc)
        cluster.add_server([OrdersController], "orders_queue", "orders_exchange")
        cluster.add_server([BillingController], "billing_queue", "billing_exchange")
        self.controller = OrdersController


@pytest.fixture
def orders(cluster) -> Orders:
    return Orders(cluster)


def test_an_event_published_by_name_reaches_its_subscriber_and_a_1_0_queue(orders, broker):
    # A 1.0 subscriber: a plain queue bound to the notification exchange with <service>.<event>.
    spy = broker.spy("orders_events", pattern="orders.order_placed")
    disc = discovery.LocalDiscovery()
    disc.register_remote_service("orders", "orders_exchange")
    orders.cluster.client(disc, source="shopper").orders.place(order_id=5).cast(
        correlation_id="corr-1")
    orders.cluster.deliver()
    assert orders.seen == [
        {"by": "order_placed", "source": "orders.order_placed", "order_id": 5, "event": "x",
         "correlation_id": "payload too", "message_correlation_id": "corr-1"},
        {"by": "place", "source": "orders.place"},
    ]
    [delivery] = spy.collect()
    assert (delivery.exchange, delivery.routing_key) == ("orders_events", "orders.order_placed")
    assert {k: delivery.headers[k] for k in ("message_type", "source", "destination",
                                             "reply_to", "correlation_id")} == {
        "message_type": "notification", "source": "orders.order_placed", "destination": "",
        "reply_to": "", "correlation_id": "corr-1"}
    assert json.loads(delivery.body)["payload"] == {
        "order_id": 5, "event": "x", "correlation_id": "payload too"}


def test_a_client_publishes_events_by_name(orders):
    disc = discovery.LocalDiscovery()
    disc.register_local_publisher("orders", "orders_events")
    cli_ = orders.cluster.client(disc, source="orders")
    sent = cli_.publish_event("order_placed", order_id=9, event="e", correlation_id="c")
    assert str(sent.source) == "orders.order_placed"
    orders.cluster.deliver()
    assert [(s["by"], s["order_id"]) for s in orders.seen] == [("order_placed", 9)]


@pytest.mark.parametrize("name", ["", "a.b", 3])
def test_an_event_name_is_one_word(orders, name):
    disc = discovery.LocalDiscovery()
    disc.register_local_publisher("orders", "orders_events")
    cli_ = orders.cluster.client(disc, source="orders")
    with pytest.raises(exceptions.WrongEntryPointFormat):
        cli_.publish_event(name, x=1)


def test_a_client_without_a_source_cannot_publish_an_event(orders):
    cli_ = orders.cluster.client(discovery.LocalDiscovery(), source="")
    with pytest.raises(exceptions.IncorrectOutgoingMessage, match="give the client a source"):
        cli_.publish_event("order_placed", x=1)


def test_handlers_declare_what_they_publish(orders):
    [handler] = [h for h in orders.controller.get_dispatcher().handlers.values()
                 if h.method_name == "place"]
    assert handler.publishes == {"order_placed": Any}
    assert events.declared({"a": int}) == {"a": int}
    assert events.declared("a") == {"a": Any}
    with pytest.raises(exceptions.WrongEntryPointFormat):
        dispatcher.rpc_method("orders", "x", publishes=("bad.name",))


@pytest.mark.parametrize("args", [["orders", "order_placed", "order_id=3"],
                                  ["orders.order_placed", "order_id=3"]])
def test_the_cli_publishes_an_event_by_name(args):
    url = f"memory://events-{uuid.uuid4().hex}"
    transport = create_transport(config_mod.ConnectionConfig.from_url(url))
    try:
        transport.declare(Topology.build(["orders_events"], ["spy"], [
            Binding("spy", "orders_events", "orders.order_placed")]))
        assert cli.main(["publish", *args, "--url", url, "--exchange", "orders_events"]) == 0
        seen: List[Any] = []
        transport.consume("spy", lambda d: (seen.append(d), d.ack()), 0)
        transport.drain(1.0)
        [delivery] = seen
        assert delivery.routing_key == "orders.order_placed"
        assert delivery.headers["source"] == "orders.order_placed"
        assert json.loads(delivery.body)["payload"] == {"order_id": 3}
    finally:
        transport.close()


@pytest.mark.parametrize("args", [["orders"], ["orders", "a=1"], ["orders", "a.b", "x=1"]])
def test_the_cli_refuses_a_publish_without_an_event(args, capsys):
    assert cli.main(["publish", *args, "--url", "memory://x", "--exchange", "e"]) == 2
    err = capsys.readouterr().err
    assert "is not SERVICE EVENT (or SERVICE.EVENT)" in err or "Wrong entry point" in err

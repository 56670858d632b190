"""Typed parameters and named events: Orders takes typed orders, Shipping hears of them.

``orders.place`` takes an ``Order`` (a dataclass, converted from the JSON
payload before the handler runs) and publishes the named event
``orders.order_placed``; Shipping subscribes to it by that name. A call with
a payload of the wrong type gets an Error naming the field, and the handler
does not run. ``examples/orders.ini`` serves both services from one queue::

    python examples/orders.py                          # memory://
    python examples/orders.py amqp://guest:guest@127.0.0.1:5672//
    tavrida run examples/orders.ini
    tavrida asyncapi examples/orders.ini               # the AsyncAPI document
"""

import dataclasses
import datetime
import enum
import sys
import threading
from typing import List, Optional

from tavrida import client, config, discovery, dispatcher, exceptions, server, service

#: Shipping's subscription handler reports here, so the demo knows when to stop.
ARRIVED = threading.Semaphore(0)


class Speed(enum.Enum):
    STANDARD = "standard"
    EXPRESS = "express"


@dataclasses.dataclass
class Line:
    """One line of an order."""

    sku: str
    quantity: int = 1


@dataclasses.dataclass
class Order:
    """What a customer orders."""

    customer: str
    lines: List[Line]
    speed: Speed = Speed.STANDARD
    deliver_by: Optional[datetime.date] = None


@dataclasses.dataclass
class Placed:
    """The answer to orders.place."""

    order_id: int
    lines: int


@dataclasses.dataclass
class OrderPlaced:
    """Event orders.order_placed."""

    order_id: int
    speed: Speed


@dispatcher.rpc_service("orders")
class OrdersController(service.ServiceController):
    next_id = 1

    @dispatcher.rpc_method(service="orders", method="place",
                           publishes={"order_placed": OrderPlaced})
    def place(self, request, proxy, order: Order) -> Placed:
        """Place an order; publishes orders.order_placed."""
        order_id = OrdersController.next_id
        OrdersController.next_id += 1
        print(f"orders   <- place    {order.customer}: {len(order.lines)} line(s), "
              f"{order.speed.value}, by {order.deliver_by}")
        proxy.publish_event("order_placed", order_id=order_id, speed=order.speed)
        return Placed(order_id=order_id, lines=len(order.lines))


@dispatcher.rpc_service("shipping")
class ShippingController(service.ServiceController):

    @dispatcher.subscription_method(service="orders", method="order_placed")
    def on_order_placed(self, event, proxy, order_id: int, speed: Speed):
        """Schedule the shipping of a placed order."""
        print(f"shipping <- event    {event.source}: order {order_id}, {speed.value}")
        ARRIVED.release()


def orders_discovery():
    """Orders publishes on orders_events; Shipping (in the same server) subscribes there."""
    disc = discovery.LocalDiscovery()
    disc.register_local_publisher("orders", "orders_events")
    disc.register_remote_publisher("orders", "orders_events")
    return disc


def orders_server(conf):
    OrdersController.set_discovery(orders_discovery())
    ShippingController.set_discovery(orders_discovery())
    return server.Server(conf, queue_name="orders_service", exchange_name="orders_exchange",
                         service_list=[OrdersController, ShippingController])


def main(url="memory://"):
    conf = config.ConnectionConfig.from_url(url)
    srv = orders_server(conf)
    srv.start()
    thread = threading.Thread(target=srv.run)
    thread.start()
    disc = discovery.LocalDiscovery()
    disc.register_remote_service("orders", "orders_exchange")
    ok = True
    try:
        with client.RPCClient(config=conf, discovery=disc, source="client_app") as cli:
            placed = cli.orders.place(order={
                "customer": "ada", "lines": [{"sku": "tea", "quantity": 2}, {"sku": "cup"}],
                "speed": "express", "deliver_by": "2030-01-31"}).call(timeout=10)
            print(f"client   <- answer   {placed}")
            try:
                cli.orders.place(order={"customer": "bob", "lines": [{"quantity": "two"}]}
                                 ).call(timeout=10)
                ok = False
            except exceptions.RemoteError as exc:
                print(f"client   <- error    {exc.remote_name}: {exc.remote_message}")
        ok = ok and ARRIVED.acquire(timeout=10)
    finally:
        srv.stop()
        thread.join()
    print("done" if ok else "failed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:2]))

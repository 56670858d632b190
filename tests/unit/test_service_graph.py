"""What a service class says about its peers, read from its handlers."""

from __future__ import annotations

from tavrida import dispatcher, entry_point, service, service_graph


@dispatcher.rpc_service("sg_orders")
class Orders(service.ServiceController):

    @dispatcher.rpc_method(service="sg_orders", method="place")
    def place(self, request, proxy, item):
        proxy.sg_stock.reserve(item=item).cast()
        proxy.add_headers({"x": "y"})  # the proxy's own method: no service
        proxy.publish(placed=item)

    @dispatcher.rpc_method(service="sg_orders", method="cancel")
    def cancel(self, request, _, item):
        _.sg_mail.send(to=item).call()

    @dispatcher.rpc_response_method(service="sg_mail", method="send")
    def sent(self, response, proxy):
        pass

    @dispatcher.rpc_error_method(service="sg_pay", method="charge")
    def not_charged(self, error, proxy):
        pass

    @dispatcher.subscription_method(service="sg_stock", method="low")
    def on_low(self, notification, proxy, item):
        proxy.publish(reorder=item)


def test_a_shape_lists_handlers_calls_and_publications():
    found = service_graph.shape(Orders)
    assert found.name == "sg_orders"
    assert sorted(found.requests) == ["cancel", "place"]
    assert found.answers == [entry_point.EntryPoint("sg_mail", "send"),
                             entry_point.EntryPoint("sg_pay", "charge")]
    assert found.subscriptions == [entry_point.EntryPoint("sg_stock", "low")]
    assert found.calls == {("sg_stock", "reserve"), ("sg_mail", "send")}
    # A request handler publishes as its entry point, another handler as service.method.
    assert found.publishes == {"sg_orders.place", "sg_orders.on_low"}
    assert found.called_services() == ["sg_mail", "sg_pay", "sg_stock"]
    assert found.complete


def test_a_handler_without_source_leaves_the_shape_incomplete():
    namespace: dict = {}
    exec(  # noqa: S102 - a class whose source inspect cannot find
        "from tavrida import dispatcher, service\n"
        "@dispatcher.rpc_service('sg_ghost')\n"
        "class Ghost(service.ServiceController):\n"
        "    @dispatcher.rpc_method(service='sg_ghost', method='m')\n"
        "    def m(self, request, proxy):\n"
        "        proxy.sg_x.y().cast()\n", namespace)
    found = service_graph.shape(namespace["Ghost"])
    assert found.requests == ["m"]
    assert found.calls == set()
    assert not found.complete

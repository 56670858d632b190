"""The handler-level examples of docs/testing.rst: one handler, no broker, no cluster."""

import pytest

from tavrida import dispatcher, service, testing


@dispatcher.rpc_service("orders")
class OrdersController(service.ServiceController):

    @dispatcher.rpc_method(service="orders", method="place")
    def place(self, request, proxy, item, quantity=1):
        if quantity < 1:
            raise ValueError("quantity must be at least 1")
        proxy.inventory.reserve(item=item, quantity=quantity).call()
        proxy.publish(placed=item)
        return {"status": "pending"}

    @dispatcher.rpc_response_method(service="inventory", method="reserve")
    def reserved(self, response, proxy, left):
        if left < 0:
            raise RuntimeError("oversold")


def test_place_answers_and_reserves():
    result = testing.call_handler(OrdersController, "place", item="book", quantity=2)
    assert result.response == {"status": "pending"}
    [reserve] = result.sent.requests
    assert str(reserve.destination) == "inventory.reserve"
    assert reserve.payload == {"item": "book", "quantity": 2}
    assert reserve.correlation_id == result.message.correlation_id
    assert [n.payload for n in result.sent.notifications] == [{"placed": "book"}]


def test_a_bad_quantity_is_an_error_answer():
    result = testing.call_handler(OrdersController, "place", item="book", quantity=0)
    assert result.response is None
    assert result.error["name"] == "ValueError"
    assert isinstance(result.exception, ValueError)
    assert result.sent.all == []


def test_a_failing_response_handler_fails_the_test_unless_expected():
    with pytest.raises(testing.HandlerFailed):
        testing.call_handler(OrdersController, "reserved", left=-1)
    result = testing.call_handler(OrdersController, "reserved", left=-1,
                                  expect_errors=RuntimeError)
    assert str(result.exception) == "oversold"

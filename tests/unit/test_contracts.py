"""Typed handler parameters on the in-memory transport: checked, converted, refused by name."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import logging
import uuid
from typing import Any, Dict, List, Optional

import pytest

from tavrida import discovery, dispatcher, exceptions, service, testing
from tavrida.transports.base import DEAD_LETTER_REASON_HEADER


class Size(enum.Enum):
    SMALL = "S"
    LARGE = "L"


@dataclasses.dataclass
class Item:
    sku: str
    quantity: int = 1
    size: Size = Size.SMALL


@dataclasses.dataclass
class Reservation:
    item: Item
    until: datetime.date
    ref: uuid.UUID
    price: decimal.Decimal


class Shop:
    """A typed service (``shop``), an untyped one (``plain``) and a client, on a cluster."""

    def __init__(self, cluster: testing.MemoryCluster) -> None:
        self.cluster = cluster
        self.ran: List[Dict[str, Any]] = []
        ran = self.ran

        @dispatcher.rpc_service("shop")
        class ShopController(service.ServiceController):
            @dispatcher.rpc_method(service="shop", method="reserve")
            def reserve(self, request, proxy, item_id: int, item: Item,
                        until: datetime.date, note: Optional[str] = None,
                        tags: List[str] = ()) -> Reservation:  # type: ignore[assignment]
                ran.append({"item_id": item_id, "item": item, "until": until, "note": note,
                            "tags": tags})
                return Reservation(item, until, uuid.UUID(int=item_id), decimal.Decimal("9.90"))

            @dispatcher.rpc_method(service="shop", method="count")
            def count(self, request, proxy, n: int, untyped=None) -> Dict[str, Any]:
                ran.append({"n": n, "untyped": untyped})
                return {"n": n, "at": datetime.datetime(2030, 1, 2, 3, 4, 5)}

        @dispatcher.rpc_service("plain")
        class PlainController(service.ServiceController):
            @dispatcher.rpc_method(service="plain", method="take")
            def take(self, request, proxy, item_id, item):
                ran.append({"item_id": item_id, "item": item})

        self.server = cluster.add_server([ShopController, PlainController],
                                         queue_name="shop_queue", exchange_name="shop_exchange")
        disc = discovery.LocalDiscovery()
        disc.register_remote_service("shop", "shop_exchange")
        disc.register_remote_service("plain", "shop_exchange")
        self.client = cluster.client(disc, source="buyer")

    def call(self, method: str, **payload: Any) -> Dict[str, Any]:
        service_name, _, name = method.partition(".")
        return getattr(getattr(self.client, service_name), name)(**payload).call(timeout=5)


@pytest.fixture
def shop(cluster) -> Shop:
    return Shop(cluster)


GOOD = {"item_id": 7, "item": {"sku": "tea", "quantity": 2, "size": "L"}, "until": "2030-01-31"}


def test_values_arrive_converted_to_their_annotations(shop):
    answer = shop.call("shop.reserve", **GOOD, tags=["gift"])
    [ran] = shop.ran
    assert ran == {"item_id": 7, "item": Item("tea", 2, Size.LARGE),
                   "until": datetime.date(2030, 1, 31), "note": None, "tags": ["gift"]}
    assert type(ran["item"]) is Item and ran["item"].size is Size.LARGE
    # The returned dataclass goes back as the JSON it would be read from.
    assert answer == {"item": {"sku": "tea", "quantity": 2, "size": "L"}, "until": "2030-01-31",
                      "ref": "00000000-0000-0000-0000-000000000007", "price": 9.9}


def test_a_wrong_type_is_an_error_naming_each_field_and_the_handler_never_runs(shop, caplog):
    caplog.set_level(logging.WARNING, logger="tavrida")
    bad = dict(GOOD, item_id="abc", item={"quantity": "2", "size": "XL"}, tags=[1])
    with pytest.raises(exceptions.RemoteError) as caught:
        shop.call("shop.reserve", **bad)
    error = caught.value
    assert error.remote_name == "InvalidPayload"
    assert error.remote_class == "tavrida.exceptions.InvalidPayload"
    assert error.remote_message == (
        "Invalid payload for shop.reserve: item_id: expected int, got str 'abc'; "
        "item.sku: missing (expected str); item.quantity: expected int, got str '2'; "
        "item.size: expected Size (one of 'S', 'L'), got str 'XL'; "
        "tags[0]: expected str, got int 1")
    assert shop.ran == []
    # Answered, so acked and not dead-lettered; logged once.
    shop.cluster.deliver()
    assert shop.cluster.broker.messages("shop_queue") == []
    assert shop.cluster.dead_letters("shop_queue") == []
    logged = [r for r in caplog.records if "item_id: expected int" in r.getMessage()]
    assert len(logged) == 1 and logged[0].levelno == logging.WARNING
    # The handler never ran: the log says the payload was refused, not that it raised.
    assert "payload refused for handler reserve" in logged[0].getMessage()
    assert "raised" not in logged[0].getMessage()


def test_a_cast_with_a_wrong_type_is_dead_lettered_with_the_reason(shop, caplog):
    caplog.set_level(logging.WARNING, logger="tavrida")
    shop.client.shop.reserve(**dict(GOOD, item_id="abc")).cast()
    shop.cluster.deliver(expect_errors=exceptions.InvalidPayload)
    assert shop.ran == []
    [(headers, _)] = shop.cluster.dead_letters("shop_queue")
    assert "item_id: expected int, got str 'abc'" in headers[DEAD_LETTER_REASON_HEADER]
    assert headers[DEAD_LETTER_REASON_HEADER].startswith("payload refused for handler reserve")
    # Logged once, as the sender's payload error: no traceback, not as a handler failure.
    failed = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(failed) == 1 and "payload refused" in failed[0].getMessage()
    assert not failed[0].exc_info


def test_a_default_none_takes_none_and_missing_keys_are_still_missing(shop):
    shop.call("shop.reserve", **GOOD, note=None)
    assert shop.ran[0]["note"] is None
    with pytest.raises(exceptions.RemoteError, match="payload lacks required parameter"):
        shop.call("shop.reserve", item_id=1)


def test_unannotated_parameters_take_anything_as_before(shop):
    assert shop.call("shop.count", n=3, untyped={"any": ["thing"]}) == {
        "n": 3, "at": "2030-01-02T03:04:05"}
    shop.call("plain.take", item_id="abc", item=[1])
    assert shop.ran[-1] == {"item_id": "abc", "item": [1]}


def test_call_handler_checks_the_same_way():
    @dispatcher.rpc_service("typed_alone")
    class Alone(service.ServiceController):
        @dispatcher.rpc_method(service="typed_alone", method="add")
        def add(self, request, proxy, a: int, b: int):
            return {"sum": a + b}

    assert testing.call_handler(Alone, "add", a=1, b=2).response == {"sum": 3}
    result = testing.call_handler(Alone, "add", a=1, b="2")
    assert isinstance(result.exception, exceptions.InvalidPayload)
    assert result.exception.problems == ["b: expected int, got str '2'"]
    assert result.error["message"] == "Invalid payload for typed_alone.add: b: expected int, " \
                                      "got str '2'"


def test_annotations_naming_classes_declared_in_a_function_resolve():
    # This module has ``from __future__ import annotations``: every annotation is text.
    @dataclasses.dataclass
    class Local:
        value: int

    @dispatcher.rpc_service("local_types")
    class Uses(service.ServiceController):
        @dispatcher.rpc_method(service="local_types", method="take")
        def take(self, request, proxy, thing: Local):
            return {"type": type(thing).__name__, "value": thing.value}

    assert testing.call_handler(Uses, "take", thing={"value": 1}).response == {
        "type": "Local", "value": 1}
    assert testing.call_handler(Uses, "take", thing={"value": "x"}).error["name"] == \
        "InvalidPayload"


def test_a_class_declared_after_the_service_is_resolved_at_the_first_message():
    @dispatcher.rpc_service("later_types")
    class Early(service.ServiceController):
        @dispatcher.rpc_method(service="later_types", method="take")
        def take(self, request, proxy, thing: Later):  # noqa: F821 - defined below
            return {"value": thing.value}

    global Later

    @dataclasses.dataclass
    class Later:
        value: int

    try:
        assert testing.call_handler(Early, "take", thing={"value": 2}).response == {"value": 2}
    finally:
        del Later


def test_an_annotation_that_never_resolves_is_logged_and_left_unchecked(caplog):
    @dispatcher.rpc_service("never_types")
    class Never(service.ServiceController):
        @dispatcher.rpc_method(service="never_types", method="take")
        def take(self, request, proxy, thing: Nowhere, n: int):  # noqa: F821
            return {"thing": thing}

    with caplog.at_level(logging.WARNING, logger="tavrida.contracts"):
        assert testing.call_handler(Never, "take", thing=[1], n=1).response == {"thing": [1]}
        assert testing.call_handler(Never, "take", thing=[1], n="x").error["message"] == \
            "Invalid payload for never_types.take: n: expected int, got str 'x'"
    [record] = [r for r in caplog.records if "Nowhere" in r.getMessage()]
    assert "parameter thing cannot be resolved" in record.getMessage()


def test_pydantic_models_are_parameters_and_answers():
    pydantic = pytest.importorskip("pydantic")

    class Item(pydantic.BaseModel):
        sku: str
        quantity: int

    @dispatcher.rpc_service("pydantic_types")
    class Models(service.ServiceController):
        @dispatcher.rpc_method(service="pydantic_types", method="take")
        def take(self, request, proxy, item: Item) -> Item:
            assert isinstance(item, Item)
            return Item(sku=item.sku.upper(), quantity=item.quantity + 1)

    assert testing.call_handler(Models, "take", item={"sku": "a", "quantity": 1}).response == \
        {"sku": "A", "quantity": 2}
    error = testing.call_handler(Models, "take", item={"sku": "a", "quantity": "x"}).error
    assert error["message"].startswith("Invalid payload for pydantic_types.take: "
                                       "item.quantity: Input should be a valid integer")


def test_a_handler_returning_something_else_is_still_a_wrong_response():
    @dispatcher.rpc_service("wrong_answer")
    class Wrong(service.ServiceController):
        @dispatcher.rpc_method(service="wrong_answer", method="give")
        def give(self, request, proxy):
            return 42

    error = testing.call_handler(Wrong, "give").error
    assert error["name"] == "WrongResponse"
    assert "a dataclass, a pydantic model" in error["message"]

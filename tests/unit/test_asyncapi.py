"""AsyncAPI documents: valid against the official AsyncAPI 3.0.0 schema, saying what travels.

The schema is shipped in tests/unit/data/asyncapi (its README names the
source and licence).
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import importlib.util
import json
import pathlib
import uuid
from typing import Any, Dict, Iterator, List, Literal, Optional

import pytest

from tavrida import asyncapi, cli, config, discovery, dispatcher, server, service

jsonschema = pytest.importorskip("jsonschema")

DATA = pathlib.Path(__file__).parent / "data" / "asyncapi"
EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def validator() -> Any:
    spec = json.loads((DATA / "3.0.0-without-id.json").read_text(encoding="utf-8"))
    assert spec["properties"]["asyncapi"]["const"] == "3.0.0"
    return jsonschema.Draft7Validator(spec)


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def resolve(doc: Dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def assert_valid(validator: Any, doc: Dict[str, Any]) -> None:
    errors = [f"{list(e.absolute_path)}: {e.message[:300]}" for e in validator.iter_errors(doc)]
    assert errors == []
    # The schema does not follow references: every one must point at something.
    for ref in refs(doc):
        assert resolve(doc, ref) is not None, ref
    json.dumps(doc)  # JSON through and through


def load(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"asyncapi_{name}_{uuid.uuid4().hex}",
                                                  EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_document_of_a_config_file_validates(validator, capsys, tmp_path):
    assert cli.main(["asyncapi", str(EXAMPLES / "orders.ini")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert_valid(validator, printed)
    out = tmp_path / "asyncapi.json"
    assert cli.main(["asyncapi", str(EXAMPLES / "orders.ini"), "-o", str(out),
                     "--title", "Orders"]) == 0
    assert capsys.readouterr().out == ""
    written = json.loads(out.read_text(encoding="utf-8"))
    assert written["info"] == {"title": "Orders", "version": "1.0.0"}
    assert_valid(validator, written)


def test_the_document_of_the_example_config_files_validates(validator, capsys):
    assert cli.main(["asyncapi", str(EXAMPLES / "hello.ini"), str(EXAMPLES / "world.ini")]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert_valid(validator, doc)
    assert doc["info"]["title"] == "tavrida services test_hello, test_world"
    assert {"test_hello.hello.call", "test_world.world.call", "test_hello.calls.test_world.world",
            "test_world.on.test_hello.hello"} <= set(doc["operations"])


def test_the_documents_of_the_examples_validate(validator):
    conf = config.ConnectionConfig.from_url("amqp://guest:secret@rabbit.example:5672/prod")
    hello_world, pubsub = load("hello_world"), load("pubsub")
    middleware, ds_discovery = load("middleware"), load("ds_discovery")
    documents = [
        asyncapi.document(hello_world.hello_server(conf), hello_world.world_server(conf)),
        asyncapi.document(pubsub.hello_server(conf), pubsub.world_server(conf)),
        asyncapi.document(middleware.hello_server(conf), middleware.world_server(conf)),
        asyncapi.document(ds_discovery.service1_server(conf), ds_discovery.service2_server(conf)),
        asyncapi.document(EXAMPLES / "orders.ini"),
    ]
    for doc in documents:
        assert_valid(validator, doc)
    assert documents[0]["servers"] == {"broker": {
        "host": "rabbit.example:5672", "protocol": "amqp", "pathname": "prod",
        "description": "amqp://guest:***@rabbit.example:5672/prod"}}
    assert "secret" not in json.dumps(documents)


def test_channels_name_exchanges_routing_keys_and_queues():
    doc = asyncapi.document(EXAMPLES / "orders.ini")
    channels = doc["channels"]
    place = channels["request.orders.place"]
    assert place["address"] == "orders.place"
    assert place["bindings"]["amqp"]["exchange"]["name"] == "orders_exchange"
    event = channels["event.orders.order_placed"]
    assert event["address"] == "orders.order_placed"
    assert event["bindings"]["amqp"]["exchange"]["name"] == "orders_events"
    queue = channels["queue.orders_service"]
    assert queue["bindings"]["amqp"] == {"is": "queue", "bindingVersion": "0.3.0", "queue": {
        "name": "orders_service", "durable": True, "exclusive": False, "autoDelete": False,
        "vhost": "/"}}
    assert "orders_exchange (orders.#)" in queue["description"]
    assert "orders_events (orders.order_placed.#)" in queue["description"]
    assert channels["queue.orders_service.dead"]["address"] == "orders_service.dead"
    assert sorted(doc["operations"]) == [
        "orders.place.call", "orders.place.cast", "orders.publishes.order_placed",
        "shipping.on.orders.order_placed"]
    call = doc["operations"]["orders.place.call"]
    assert call["action"] == "receive"
    assert call["reply"]["address"] == {"location": "$message.header#/reply_to",
                                        "description": "The caller's service name "
                                                       "(routing key)."}
    assert [resolve(doc, r["$ref"])["$ref"] for r in call["reply"]["messages"]] == [
        "#/components/messages/response.orders.place", "#/components/messages/error"]
    assert "reply" not in doc["operations"]["orders.place.cast"]
    assert doc["operations"]["orders.publishes.order_placed"]["action"] == "send"
    assert doc["operations"]["shipping.on.orders.order_placed"]["action"] == "receive"


class Kind(enum.Enum):
    A = "a"
    B = "b"


@dataclasses.dataclass
class Part:
    """A part."""

    code: str
    kind: Kind = Kind.A


@dataclasses.dataclass
class Built:
    parts: int


@dispatcher.rpc_service("factory")
class Factory(service.ServiceController):
    @dispatcher.rpc_method(service="factory", method="build",
                           publishes={"built": Built})
    def build(self, request, proxy, count: int, parts: List[Part], ratio: float,
              when: datetime.datetime, mode: Literal["fast", "slow"] = "fast",
              note: Optional[str] = None, anything=None) -> Built:
        """Build parts."""
        return Built(parts=count)

    @dispatcher.rpc_response_method(service="supplier", method="order")
    def ordered(self, response, proxy, ok: bool):
        pass

    @dispatcher.rpc_error_method(service="supplier", method="order")
    def order_failed(self, error, proxy):
        pass


def factory_document() -> Dict[str, Any]:
    disc = discovery.LocalDiscovery()
    disc.register_local_publisher("factory", "factory_events")
    disc.register_remote_service("supplier", "supplier_exchange")
    Factory.set_discovery(disc)
    return asyncapi.document(server.Server("memory://", "factory_queue", "factory_exchange",
                                           [Factory]))


def test_a_typed_handler_is_described_field_by_field(validator):
    doc = factory_document()
    assert_valid(validator, doc)
    request = doc["components"]["messages"]["request.factory.build"]
    assert request["summary"] == "Build parts."
    assert request["headers"]["allOf"][1] == {"properties": {"message_type": {
        "const": "request"}}}
    body = request["payload"]
    assert body["required"] == ["payload"] and body["properties"]["context"]["type"] == "object"
    payload = body["properties"]["payload"]
    assert payload["properties"] == {
        "count": {"type": "integer"},
        "parts": {"type": "array", "items": {"$ref": "#/components/schemas/Part"}},
        "ratio": {"type": "number"},
        "when": {"type": "string", "format": "date-time"},
        "mode": {"enum": ["fast", "slow"]},
        "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        "anything": {},
    }
    assert payload["required"] == ["count", "parts", "ratio", "when"]
    schemas = doc["components"]["schemas"]
    assert schemas["Part"] == {"type": "object", "title": "Part", "description": "A part.",
                               "properties": {"code": {"type": "string"},
                                              "kind": {"$ref": "#/components/schemas/Kind"}},
                               "required": ["code"]}
    assert schemas["Kind"] == {"title": "Kind", "enum": ["a", "b"]}
    response = doc["components"]["messages"]["response.factory.build"]
    assert response["payload"]["properties"]["payload"] == {
        "$ref": "#/components/schemas/Built"}
    assert response["correlationId"] == {"$ref": "#/components/correlationIds/request_id"}
    error = doc["components"]["messages"]["error"]["payload"]["properties"]["payload"]
    assert error["required"] == ["class", "name", "message", "code"]
    event = doc["components"]["messages"]["event.factory.built"]
    assert event["payload"]["properties"]["payload"] == {"$ref": "#/components/schemas/Built"}
    headers = schemas["tavrida_headers"]
    assert set(headers["required"]) == {"correlation_id", "request_id", "message_id",
                                        "message_type", "source", "destination", "reply_to"}
    assert "x-tavrida-reply-exchange" in headers["properties"]


def test_calls_a_service_makes_are_send_operations_with_their_reply():
    doc = factory_document()
    call = doc["operations"]["factory.calls.supplier.order"]
    assert call["action"] == "send"
    assert resolve(doc, call["channel"]["$ref"])["bindings"]["amqp"]["exchange"]["name"] == \
        "supplier_exchange"
    assert call["reply"]["channel"] == {"$ref": "#/channels/reply.supplier.order"}
    # supplier is not in the document: its answer is what the response handler takes.
    response = doc["components"]["messages"]["response.supplier.order"]["payload"]
    assert response["properties"]["payload"]["properties"] == {"ok": {"type": "boolean"}}
    assert doc["components"]["messages"]["request.supplier.order"]["payload"]["properties"][
        "payload"]["description"].startswith("Not described")


def test_pydantic_models_are_described_by_pydantic(validator):
    pydantic = pytest.importorskip("pydantic")

    class Inner(pydantic.BaseModel):
        x: int

    class Outer(pydantic.BaseModel):
        inner: Inner
        name: str = "n"

    @dispatcher.rpc_service("pydantic_doc")
    class Models(service.ServiceController):
        @dispatcher.rpc_method(service="pydantic_doc", method="take")
        def take(self, request, proxy, outer: Outer) -> Outer:
            return outer

    doc = asyncapi.document(server.Server("memory://", "pd_queue", "pd_exchange", [Models]))
    assert_valid(validator, doc)
    schemas = doc["components"]["schemas"]
    assert schemas["Outer"]["properties"]["inner"] == {"$ref": "#/components/schemas/Inner"}
    assert schemas["Inner"]["properties"]["x"]["type"] == "integer"


def test_a_bad_config_file_is_reported_not_documented(tmp_path, capsys):
    path = tmp_path / "bad.ini"
    path.write_text("[server]\nqueue = q\n")
    assert cli.main(["asyncapi", str(path)]) == 2
    assert "bad.ini" in capsys.readouterr().err

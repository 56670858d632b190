"""The wire format: what tavrida 2 puts on the broker, and reading what 1.0 put there.

The reference is /work/shared/reference/wire-protocol.md and the six
messages of wire-samples-1.0.jsonl.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tavrida import exceptions, messages, wire

HEX32 = re.compile(r"^[0-9a-f]{32}$")


def sample_headers(sample):
    return {name: value for name, kind, value in sample["headers"]}


# --------------------------------------------------------------------------- encode


def test_encode_writes_the_envelope_and_seven_headers():
    request = messages.Request({"source": "a.b", "destination": "c.d", "reply_to": "a",
                                "x-user": "u"}, {"ctx": "é"}, {"param": [1, 2]})
    body, headers = wire.encode(request)
    assert isinstance(body, bytes)
    assert json.loads(body.decode("utf-8")) == {"payload": {"param": [1, 2]},
                                                "context": {"ctx": "é"}}
    assert set(headers) == set(messages.TAVRIDA_HEADERS) | {"x-user"}
    assert headers["message_type"] == "request"


def test_encode_refuses_what_json_cannot_carry():
    request = messages.Request({"source": "a.b", "destination": "c.d"}, {}, {"x": object()})
    with pytest.raises(exceptions.IncorrectOutgoingMessage) as info:
        wire.encode(request)
    assert info.value.kwargs["reason"] == "payload field 'x': object is not JSON-serialisable"


@dataclasses.dataclass
class Record:
    when: datetime.date
    what: object


def circular():
    loop = {"n": 1}
    loop["self"] = loop
    return loop


@pytest.mark.parametrize("kind, payload, context, reason", [
    ("response", {"when": complex(1, 2)}, {},
     "answer field 'when': complex is not JSON-serialisable"),
    ("response", {"ok": [1, {"deep": [2, {3}, object()]}]}, {},
     "answer field 'ok[1].deep[2]': object is not JSON-serialisable"),
    ("response", {"record": Record(when=datetime.date(2026, 1, 1), what=object())}, {},
     "answer field 'record.what': object is not JSON-serialisable"),
    ("error", {"class": "x", "detail": b"\xff"}, {},
     "answer field 'detail': bytes that are not UTF-8 are not JSON-serialisable"),
    ("response", {"key": {(1, 2): "tuple key"}}, {},
     "answer field 'key': key (1, 2) of type tuple is not JSON-serialisable"),
    ("response", {"loop": circular()}, {},
     "answer field 'loop.self': refers to itself (a circular reference)"),
    ("response", {"fine": 1}, {"user": object()},
     "context field 'user': object is not JSON-serialisable"),
    ("notification", {"at": complex(1, 2)}, {},
     "notification field 'at': complex is not JSON-serialisable"),
], ids=["complex", "nested", "in a dataclass", "bytes in an error", "tuple key", "circular",
        "context", "notification"])
def test_encode_names_the_field_and_type_json_cannot_carry(kind, payload, context, reason):
    headers = {"source": "a.b", "destination": "c.d"}
    message = {"response": messages.Response, "error": messages.Error,
               "notification": messages.Notification}[kind](headers, context, payload)
    with pytest.raises(exceptions.IncorrectOutgoingMessage) as info:
        wire.encode(message)
    assert info.value.kwargs["reason"] == reason


def test_encode_decode_round_trip():
    request = messages.Request({"source": "a.b", "destination": "c.d", "reply_to": "a",
                                "x-user": "u"}, {"c": 1}, {"p": "ü"})
    body, headers = wire.encode(request)
    decoded = wire.decode(body, headers, {"content_type": "application/json"})
    assert isinstance(decoded, messages.IncomingRequestCall)
    assert decoded.payload == {"p": "ü"}
    assert decoded.context == {"c": 1}
    assert decoded.request_id == request.request_id
    assert decoded.headers["x-user"] == "u"


# --------------------------------------------------------------------------- decode: bad input


def good_headers(**changes):
    headers = {"correlation_id": "c", "request_id": "r", "message_id": "m",
               "message_type": "request", "reply_to": "caller", "source": "caller.x",
               "destination": "svc.m"}
    headers.update(changes)
    return {k: v for k, v in headers.items() if v is not None}


GOOD_BODY = b'{"payload": {}, "context": {}}'


@pytest.mark.parametrize("headers, reason, answerable", [
    (good_headers(source=None), "missing header(s): source", True),
    (good_headers(message_id=None, request_id=None), "missing header(s): message_id, request_id",
     False),
    (None, "missing header(s)", False),
    ("not a table", "headers are not a table", False),
    (good_headers(correlation_id={"a": 1}), "header 'correlation_id' must be text, got dict",
     False),
    (good_headers(source=["caller.x"]), "header 'source' must be text, got list", True),
    (good_headers(**{"x-tavrida-reply-exchange": {"x": 1}}),
     "header 'x-tavrida-reply-exchange' must be text, got dict", False),
    (good_headers(source=b"\xff\xfe"), "header 'source' is not valid UTF-8", True),
    (good_headers(message_id=b"\xff"), "header 'message_id' is not valid UTF-8", True),
    (good_headers(message_type="bogus"), "unknown message_type 'bogus'", False),
    (good_headers(correlation_id=""), "header 'correlation_id' is empty", False),
    (good_headers(destination="a.b.c"), "header 'destination' is not an entry point", False),
    (good_headers(reply_to=".x"), "header 'reply_to' is not an entry point", False),
    (good_headers(reply_to=None, source=b"\xff"), "header 'source' is not valid UTF-8", False),
])
def test_decode_refuses_bad_headers(headers, reason, answerable):
    with pytest.raises(exceptions.IncorrectMessage) as info:
        wire.decode(GOOD_BODY, headers)
    assert reason in str(info.value)
    # only a call whose caller, ids and destination can be read is offered for an answer
    offered = getattr(info.value, "headers", None)
    if answerable:
        assert offered == {"correlation_id": "c", "request_id": "r", "message_type": "request",
                           "reply_to": "caller", "destination": "svc.m"}
    else:
        assert offered is None


def test_decode_accepts_bytes_headers_and_keeps_user_headers():
    headers = {k: v.encode() for k, v in good_headers().items()}
    headers["x-count"] = 5
    message = wire.decode(GOOD_BODY, headers)
    assert message.source == "caller.x"
    assert message.headers["x-count"] == 5


@pytest.mark.parametrize("body, properties, reason", [
    (b"\xff\xfe{}", None, "body is not valid UTF-8"),
    (b"{not json", None, "body is not JSON"),
    (b"[1, 2]", None, "body is not a JSON object"),
    (b'{"context": {}}', None, 'body has no "payload" object'),
    (b'{"payload": [1], "context": {}}', None, 'body has no "payload" object'),
    (b'{"payload": "x", "context": {}}', None, 'body has no "payload" object'),
    (b'{"payload": {}, "context": [1]}', None, 'body "context" is not an object'),
    (GOOD_BODY, {"content_type": "application/x-python-serialize"},
     "content type 'application/x-python-serialize' refused: it names the pickle"),
    (GOOD_BODY, {"content_type": "application/x-yaml"}, "names the yaml serializer"),
    (GOOD_BODY, {"content_type": "application/x-msgpack"}, "names the msgpack serializer"),
    (GOOD_BODY, {"content_type": "application/pickle"}, "names the pickle serializer"),
    (GOOD_BODY, {"content_encoding": "latin-1"}, "tavrida reads UTF-8 JSON"),
    (GOOD_BODY, {"content_encoding": "gzip"}, "content encoding 'gzip' refused"),
    (b"<html/>", {"content_type": "text/html"}, "body is not JSON (content type 'text/html')"),
    (b"[" * 100000 + b"]" * 100000, None, "nested too deeply"),
])
def test_decode_refuses_bad_bodies_and_keeps_headers(body, properties, reason):
    with pytest.raises(exceptions.IncorrectMessage) as info:
        wire.decode(body, good_headers(), properties)
    assert reason in str(info.value)
    # the headers were fine: the server can still answer the caller
    assert info.value.headers["reply_to"] == "caller"


def test_decode_refuses_oversized_body():
    with pytest.raises(exceptions.IncorrectMessage) as info:
        wire.decode(b'{"payload": {"x": "' + b"a" * 100 + b'"}}', good_headers(), max_size=50)
    assert "exceeds the limit of 50 bytes" in str(info.value)


@pytest.mark.parametrize("body", [b'{"payload": {"a": 1}, "context": null}',
                                  b'{"payload": {"a": 1}}',
                                  '{"payload": {"a": 1}}'])
def test_decode_accepts_null_or_missing_context(body):
    message = wire.decode(body, good_headers())
    assert message.context == {}
    assert message.payload == {"a": 1}


@pytest.mark.parametrize("content_type", [None, "", "application/json",
                                          "application/json; charset=utf-8", "text/plain",
                                          "application/data", "application/octet-stream",
                                          "Application/JSON", "text/x-anything", b"binary"])
@pytest.mark.parametrize("content_encoding", [None, "", "utf-8", "UTF8", "binary", "ascii",
                                              "us-ascii", "utf_8"])
def test_decode_reads_json_whatever_the_label(content_type, content_encoding):
    # kombu labels raw bytes application/data + binary; pika and py-amqp set nothing
    message = wire.decode(b'{"payload": {"a": "\xc3\xa9"}}', good_headers(),
                          {"content_type": content_type, "content_encoding": content_encoding})
    assert message.payload == {"a": "\u00e9"}


@pytest.mark.parametrize("value, text", [(123, "123"), (-5, "-5"), (b"c-1", "c-1"),
                                         (bytearray(b"c-2"), "c-2"), (1.5, "1.5")])
def test_decode_reads_tavrida_headers_of_other_amqp_types_as_text(value, text):
    # a 1.0 client passing correlation_id=123 sends an AMQP integer; 1.0 services take it
    message = wire.decode(GOOD_BODY, good_headers(correlation_id=value, request_id=value))
    assert message.correlation_id == text
    assert message.request_id == text
    answer = messages.Response.create_by_request(message, {})
    assert wire.encode(answer)[1]["correlation_id"] == text


def test_decode_never_unpickles(tmp_path):
    import pickle

    marker = tmp_path / "unpickled"
    body = pickle.dumps(_Trap(str(marker)))
    with pytest.raises(exceptions.IncorrectMessage):
        wire.decode(body, good_headers(), {"content_type": "application/x-python-serialize"})
    with pytest.raises(exceptions.IncorrectMessage):
        wire.decode(body, good_headers())
    assert not marker.exists()


class _Trap:
    """Unpickling this creates a file: proof that something unpickled it."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                    st.text(max_size=12), st.binary(max_size=12))
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=5)
ANY_HEADERS = st.one_of(st.none(), st.dictionaries(
    st.sampled_from(list(messages.TAVRIDA_HEADERS) + ["x-user"]),
    st.one_of(_values, st.sampled_from(["request", "response", "error", "notification",
                                        "svc", "svc.m", "", "a.b.c"]))))
_json = st.recursive(_scalars.filter(lambda v: not isinstance(v, bytes)), lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.dictionaries(st.sampled_from(["payload", "context", "x"]), inner, max_size=3)),
    max_leaves=6)
ANY_BODY = st.one_of(st.binary(max_size=60), _json.map(lambda v: json.dumps(v).encode()))
FEW = settings(max_examples=300, derandomize=True, database=None, deadline=None,
               suppress_health_check=list(HealthCheck))


@FEW
@given(body=ANY_BODY, headers=ANY_HEADERS,
       content_type=st.one_of(st.none(), st.text(max_size=8),
                              st.sampled_from(["application/json",
                                               "application/x-python-serialize"])),
       content_encoding=st.one_of(st.none(), st.text(max_size=5)))
def test_decode_survives_any_input(body, headers, content_type, content_encoding):
    """Any bytes and any header types: a message, or IncorrectMessage -- nothing else."""
    try:
        message = wire.decode(body, headers, {"content_type": content_type,
                                              "content_encoding": content_encoding})
    except exceptions.IncorrectMessage as exc:
        assert str(exc).startswith("Incorrect message: ")
        return
    assert isinstance(message.payload, dict) and isinstance(message.context, dict)
    assert message.message_type in messages.MESSAGE_TYPES


# --------------------------------------------------------------------------- decode: 1.0 samples


@pytest.mark.parametrize("name, cls", [
    ("cast", messages.IncomingRequestCast),
    ("handler_call", messages.IncomingRequestCall),
    ("notification", messages.IncomingNotification),
    ("response", messages.IncomingResponse),
    ("error", messages.IncomingError),
    ("client_call", messages.IncomingRequestCall),
])
def test_decode_reads_each_1_0_sample(samples, name, cls):
    sample = samples[name]
    assert all(kind == "S" for _, kind, _ in sample["headers"])
    headers = sample_headers(sample)
    message = wire.decode(sample["body"].encode("utf-8"), headers, {})
    assert type(message) is cls
    assert message.correlation_id == headers["correlation_id"]
    assert message.request_id == headers["request_id"]
    assert str(message.source) == headers["source"]
    assert message.destination.to_routing_key() == headers["destination"]
    assert message.payload == json.loads(sample["body"])["payload"]


# --------------------------------------------------------------------------- on the broker


ALL_EXCHANGES = ("test_exchange", "test_world_exchange", "test_notification_exchange",
                 "client_exchange")


def run_tutorial(tutorial, broker, param=1, call=True):
    spy = broker.spy(*ALL_EXCHANGES)
    cli = tutorial.client(headers={"x-trace": "t1"})
    method = cli.test_hello.hello(param=param)
    if call:
        method.call(correlation_id="chain-1")
    else:
        method.cast(correlation_id="chain-1")
    tutorial.cluster.deliver(raise_errors=False)
    return spy.collect()


def by_route(deliveries):
    return {(d.headers["message_type"], d.exchange, d.routing_key): d for d in deliveries}


def test_every_message_has_seven_string_headers_plus_user_headers(tutorial, broker):
    deliveries = run_tutorial(tutorial, broker) + run_tutorial(tutorial, broker, param="fail")
    kinds = {d.headers["message_type"] for d in deliveries}
    assert kinds == {"request", "response", "error", "notification"}
    for delivery in deliveries:
        headers = delivery.headers
        # a 2.0 call names the exchange its answer goes to; nothing else adds headers
        if headers["message_type"] == "request" and headers["reply_to"]:
            expected = ("tavrida.replies" if headers["source"].startswith("client")
                        else "test_exchange")  # the client's default, hello's server's
            assert headers.pop("x-tavrida-reply-exchange") == expected
        assert set(headers) - {"x-trace"} == set(messages.TAVRIDA_HEADERS), headers
        assert all(isinstance(headers[name], str) for name in messages.TAVRIDA_HEADERS)
        # the client's header travels along the chain it started; nothing else does
        assert headers["x-trace"] == "t1"
        assert HEX32.match(headers["message_id"])
        assert HEX32.match(headers["request_id"])
    # tavrida 2 gives every message a fresh message_id
    ids = [d.headers["message_id"] for d in deliveries]
    assert len(set(ids)) == len(ids)


def test_every_body_is_a_json_envelope_sent_as_persistent_json(tutorial, broker):
    for delivery in run_tutorial(tutorial, broker):
        assert set(json.loads(delivery.body.decode("utf-8"))) == {"payload", "context"}
        assert delivery.properties["content_type"] == "application/json"
        assert delivery.properties["content_encoding"] == "utf-8"
        assert delivery.properties["delivery_mode"] == 2


def test_routing_and_headers_of_each_kind(tutorial, broker):
    routes = by_route(run_tutorial(tutorial, broker))
    assert set(routes) == {
        ("request", "test_exchange", "test_hello.hello"),          # client -> hello
        ("request", "test_world_exchange", "test_world.world"),    # hello -> world
        ("notification", "test_notification_exchange", "test_hello.hello"),
        ("response", "test_exchange", "test_hello"),               # world -> hello
        ("response", "client_exchange", "client"),                 # hello -> client
    }
    client_call = routes[("request", "test_exchange", "test_hello.hello")].headers
    assert (client_call["source"], client_call["destination"], client_call["reply_to"]) == (
        "client.method", "test_hello.hello", "client")
    handler_call = routes[("request", "test_world_exchange", "test_world.world")].headers
    assert (handler_call["source"], handler_call["destination"], handler_call["reply_to"]) == (
        "test_hello.hello", "test_world.world", "test_hello")
    notification = routes[("notification", "test_notification_exchange",
                           "test_hello.hello")].headers
    assert (notification["source"], notification["destination"], notification["reply_to"]) == (
        "test_hello.hello", "", "")
    response = routes[("response", "test_exchange", "test_hello")].headers
    assert (response["source"], response["destination"], response["reply_to"]) == (
        "test_world.world", "test_hello", "")
    assert response["request_id"] == handler_call["request_id"]
    to_client = routes[("response", "client_exchange", "client")].headers
    assert to_client["request_id"] == client_call["request_id"]
    assert to_client["source"] == "test_hello.hello"
    # one correlation id along the whole chain; a new request_id per request
    assert {d.headers["correlation_id"] for d in routes.values()} == {"chain-1"}
    assert len({client_call["request_id"], handler_call["request_id"],
                notification["request_id"]}) == 3


def test_error_on_the_wire(tutorial, broker):
    routes = by_route(run_tutorial(tutorial, broker, param="fail"))
    error = routes[("error", "test_exchange", "test_hello")]
    request = routes[("request", "test_world_exchange", "test_world.world")]
    assert error.headers["request_id"] == request.headers["request_id"]
    assert (error.headers["source"], error.headers["destination"], error.headers["reply_to"]) == (
        "test_world.world", "test_hello", "")
    payload = json.loads(error.body)["payload"]
    assert payload == {"class": messages.get_fqcn(tutorial.WorldFailure), "name": "WorldFailure",
                       "message": "world fails once (param=fail)", "code": 42}


def test_cast_has_empty_reply_to_and_gets_no_answer(tutorial, broker):
    routes = by_route(run_tutorial(tutorial, broker, call=False))
    cast = routes[("request", "test_exchange", "test_hello.hello")]
    assert cast.headers["reply_to"] == ""
    assert not [key for key in routes if key[1] == "client_exchange"]


def test_correlation_id_is_generated_when_empty(tutorial, broker):
    spy = broker.spy("test_exchange")
    tutorial.client().test_hello.hello(param="quiet").cast()
    (delivery,) = spy.collect()
    assert re.match(r"^[0-9a-f-]{36}$", delivery.headers["correlation_id"])


# --------------------------------------------------------------------------- 1.0 samples


def publish_sample(broker, sample):
    assert sample["properties_present"] == ["headers"]
    broker.publish(sample["exchange"], sample["routing_key"], sample["body"].encode("utf-8"),
                   sample_headers(sample), content_type=None, content_encoding=None)


def test_sample_cast_reaches_the_request_handler(tutorial, broker, samples):
    publish_sample(broker, samples["cast"])
    tutorial.cluster.deliver()
    (request, kwargs), = tutorial.handled("hello")
    assert kwargs == {"param": 123}
    assert type(request) is messages.IncomingRequestCast
    assert request.correlation_id == "123-456"
    assert request.source == "client.method"
    assert request.context == {"param": 123}
    # and hello goes on as in 1.0: it calls world, whose response comes back
    assert tutorial.handled("world_resp")[0][0].correlation_id == "123-456"


def test_sample_call_from_a_handler_is_answered(tutorial, broker, samples):
    spy = broker.spy("test_exchange", pattern="test_hello")
    publish_sample(broker, samples["handler_call"])
    tutorial.cluster.deliver()
    (request, kwargs), = tutorial.handled("world")
    assert kwargs == {"param": 123}
    assert type(request) is messages.IncomingRequestCall
    assert request.reply_to.to_routing_key() == "test_hello"
    (response,) = spy.collect()
    headers = sample_headers(samples["handler_call"])
    assert response.headers["request_id"] == headers["request_id"]
    assert response.headers["correlation_id"] == "123-456"
    assert json.loads(response.body) == {"payload": {"param": "world response"},
                                         "context": {"param": 123}}
    (answer, kwargs), = tutorial.handled("world_resp")
    assert kwargs == {"param": "world response"}


def test_sample_notification_reaches_the_subscriber(tutorial, broker, samples):
    publish_sample(broker, samples["notification"])
    tutorial.cluster.deliver()
    assert tutorial.names() == ["hello_subscription"]
    (notification, kwargs), = tutorial.handled("hello_subscription")
    assert kwargs == {"param": "hello publication"}
    assert type(notification) is messages.IncomingNotification
    assert notification.context == {"param": "hello publication"}


def test_sample_response_reaches_the_response_handler(tutorial, broker, samples):
    publish_sample(broker, samples["response"])
    tutorial.cluster.deliver()
    assert tutorial.names() == ["world_resp"]
    (response, kwargs), = tutorial.handled("world_resp")
    assert kwargs == {"param": "world response"}
    assert type(response) is messages.IncomingResponse
    assert response.request_id == "3e8cad7e139c4f1a9cb9f4b428c4f787"


def test_sample_error_without_name_reaches_the_error_handler(tutorial, broker, samples):
    publish_sample(broker, samples["error"])
    tutorial.cluster.deliver()
    assert tutorial.names() == ["world_error"]
    (error, kwargs), = tutorial.handled("world_error")
    assert type(error) is messages.IncomingError
    assert error.payload == {"class": "__main__.WorldFailure",
                             "message": "world fails once (param=123)", "code": 1000}
    assert broker.dead("test_service") == []


def test_sample_client_call_is_answered_to_the_client(tutorial, broker, samples):
    spy = broker.spy("client_exchange")
    publish_sample(broker, samples["client_call"])
    tutorial.cluster.deliver()
    (request, kwargs), = tutorial.handled("hello")
    assert kwargs == {"param": "client-call"}
    assert type(request) is messages.IncomingRequestCall
    (answer,) = spy.collect()
    headers = sample_headers(samples["client_call"])
    assert answer.routing_key == "client"
    assert answer.headers["message_type"] == "response"
    assert answer.headers["request_id"] == headers["request_id"]
    assert answer.headers["correlation_id"] == headers["correlation_id"]
    assert answer.headers["destination"] == "client"
    assert answer.headers["source"] == "test_hello.hello"
    # hello returned None: a call still gets its (empty) response
    assert json.loads(answer.body)["payload"] == {}


# --------------------------------------------------------------------------- the kept encoder


ENCODER_CASES = [
    ({"a": 1, "b": [1, 2.5, None, True], "c": "ü\u2028\"x\n"}, {"k": {"z": 1, "a": 2}}),
    ({"d": __import__("decimal").Decimal("1.10"), "t": (1, 2), "big": 2 ** 70}, {}),
    ({1: "int key", 2.5: "float key", None: "null key"}, {"b": b"bytes \xc3\xbc"}),
    ({}, {}),
]


@pytest.mark.parametrize("payload, context", ENCODER_CASES)
def test_the_kept_encoder_writes_what_simplejson_writes(payload, context):
    # wire keeps simplejson's C encoder per thread instead of building one per body:
    # the bytes must be exactly what JSONEncoder.encode writes.
    body, _ = wire.encode(messages.Request({"source": "a.b", "destination": "c.d"},
                                           context, payload))
    expected = wire._encoder.encode({"payload": payload, "context": context})
    assert body == expected.encode("utf-8")


def test_the_kept_encoder_recovers_after_a_failed_body():
    looped: dict = {}
    looped["self"] = looped
    for bad in ({"x": object()}, looped, {"nan": float("nan")}):
        with pytest.raises(exceptions.IncorrectOutgoingMessage):
            wire.encode(messages.Request({"source": "a.b", "destination": "c.d"}, {}, bad))
    shared = {"same": [1, 2]}
    body, _ = wire.encode(messages.Request({"source": "a.b", "destination": "c.d"},
                                           shared, {"one": shared, "two": shared}))
    assert json.loads(body) == {"payload": {"one": shared, "two": shared}, "context": shared}


def test_the_kept_encoder_is_one_per_thread():
    # Its circular-reference table is state: two threads writing the same dict through
    # one encoder could see each other's entries ("Circular reference detected").
    import threading

    wire.encode(messages.Request({"source": "a.b", "destination": "c.d"}, {}, {}))
    here = wire._bodies.run
    seen: list = []

    def other() -> None:
        wire.encode(messages.Request({"source": "a.b", "destination": "c.d"}, {}, {}))
        seen.append(wire._bodies.run)

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert here is not None and seen[0] is not None
    assert seen[0] is not here


@pytest.mark.parametrize("body", [b' {"payload": {"a": 1}}', b'{"payload": {"a": 1}}  \n',
                                  b'\xef\xbb\xbf{"payload": {"a": 1}}'])
def test_bodies_around_the_fast_scanner_still_read(body):
    assert wire.read_body(body) == ({}, {"a": 1})


@pytest.mark.parametrize("body", [b'{"payload": {}} x', b'{"payload": {}', b'{"payload": {}}{}'])
def test_bodies_the_fast_scanner_refuses_are_refused_as_before(body):
    with pytest.raises(exceptions.IncorrectMessage, match="body is not JSON"):
        wire.read_body(body)

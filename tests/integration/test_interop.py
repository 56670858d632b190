"""Interoperability with tavrida 1.0 and plain AMQP programs, on a real RabbitMQ.

The 1.0 side is played by py-amqp directly, publishing the six messages of
``wire-samples-1.0.jsonl`` byte for byte (headers only: no content type, no
delivery mode) and declaring the topology the way 1.0 did. The 2.0 side
runs through either API (contract_drivers.py): ``Server.run`` in threads and
``RPCClient``, or ``aio.Server`` with ``async def`` handlers and
``aio.RPCClient``. A spy queue
bound with ``#`` checks what 2.0 puts on the wire against
``/work/shared/reference/wire-protocol.md``.
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
from contract_drivers import Running
from svc_support import PlainAMQP, Seen

from tavrida import discovery, dispatcher, exceptions, service

SAMPLES_FILE = Path(__file__).resolve().parents[1] / "unit" / "data" / "wire-samples-1.0.jsonl"
SAMPLES = [json.loads(line) for line in SAMPLES_FILE.read_text().splitlines() if line.strip()]
TAVRIDA_HEADERS = {"correlation_id", "request_id", "message_id", "message_type", "reply_to",
                   "source", "destination"}
HEX32 = re.compile(r"^[0-9a-f]{32}$")
UUID36 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
WAIT = 15.0


def sample(what: str) -> Dict[str, Any]:
    """The 1.0 sample whose description starts with ``what``."""
    [found] = [s for s in SAMPLES if s["what"].startswith(what)]
    return found


def sample_headers(item: Dict[str, Any]) -> Dict[str, str]:
    assert {kind for _, kind, _ in item["headers"]} == {"S"}  # all long strings
    return {name: value for name, _, value in item["headers"]}


# -- 2.0 services --------------------------------------------------------------------------------

class Recorder:
    """What the 2.0 handlers saw, with a bounded wait for it."""

    def __init__(self) -> None:
        self.items: List[Dict[str, Any]] = []
        self._cond = threading.Condition()

    def add(self, handler: str, message: Any) -> None:
        with self._cond:
            self.items.append({"handler": handler, "kind": type(message).__name__,
                               "headers": dict(message.headers),
                               "context": dict(message.context),
                               "payload": dict(message.payload)})
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float = WAIT) -> Dict[str, Dict[str, Any]]:
        """What each handler saw, by ``handler`` (and ``handler/request_id``)."""
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.items) >= count, timeout), (
                f"handlers ran {len(self.items)} of {count} times: {self.items}")
            found = {item["handler"]: item for item in self.items}
            found.update((f"{item['handler']}/{item['headers']['request_id']}", item)
                         for item in self.items)
            return found


SEEN = Recorder()


class WorldFailure(Exception):
    """Raised by World for param == "fail" (no ``code``: 1000 on the wire)."""


@dispatcher.rpc_service("test_hello")
class Hello(service.ServiceController):
    """test_hello of the 1.0 tutorial: answers calls, takes World's responses and errors."""

    @dispatcher.rpc_method(service="test_hello", method="hello")
    def hello(self, request, proxy, param):
        SEEN.add("hello", request)
        return {"param": "hello response"}

    @dispatcher.rpc_response_method(service="test_world", method="world")
    def world_response(self, response, proxy, param):
        SEEN.add("world_response", response)

    @dispatcher.rpc_error_method(service="test_world", method="world")
    def world_error(self, error, proxy):
        SEEN.add("world_error", error)


@dispatcher.rpc_service("test_world")
class World(service.ServiceController):
    """test_world of the 1.0 tutorial: answers or fails, subscribes to Hello's notifications."""

    @dispatcher.rpc_method(service="test_world", method="world")
    def world(self, request, proxy, param):
        SEEN.add(f"world({param})", request)
        if param == "fail":
            raise WorldFailure(f"world fails once (param={param})")
        return {"param": "world response"}

    @dispatcher.subscription_method(service="test_hello", method="hello")
    def hello_publication(self, notification, proxy, param):
        SEEN.add("hello_publication", notification)


class Failure(Exception):
    code = 13


@dispatcher.rpc_service("front")
class Front(service.ServiceController):
    """Answers, fails or publishes: every 2.0 message kind, for the spy."""

    @dispatcher.rpc_method(service="front", method="work")
    def work(self, request, proxy, step):
        if step == "fail":
            raise Failure("front refuses")
        proxy.publish(step=step)
        return {"done": step}


@pytest.fixture(params=["blocking", "async"])
def cluster(request, amqp_url, unique) -> Iterator[Running]:
    """2.0 servers and clients through either API (see contract_drivers.py)."""
    global SEEN
    SEEN = Recorder()
    running = Running(amqp_url, request.param)
    yield running
    running.close()


@pytest.fixture
def plain(amqp_url, unique) -> Iterator[PlainAMQP]:
    """A plain py-amqp program (closed before ``unique`` deletes the names)."""
    with PlainAMQP(amqp_url) as conn:
        yield conn


def body_of(seen: Seen) -> Dict[str, Any]:
    body = json.loads(seen.body.decode("utf-8"))
    assert set(body) == {"payload", "context"}, body
    return body


def assert_dead_letter_queues_empty(plain: PlainAMQP, *queues: str) -> None:
    for queue in queues:
        assert plain.message_count(queue + ".dead") == 0, f"{queue}.dead holds messages"


# -- 1.0 messages to 2.0 services ----------------------------------------------------------------

def test_1_0_requests_are_served_and_answered_in_the_1_0_format(cluster, plain, unique):
    hello_ex, world_ex = unique("hello-ex"), unique("world-ex")
    client_ex, caller_ex = unique("client-ex"), unique("caller-ex")
    hello_disc = discovery.LocalDiscovery()
    hello_disc.register_remote_service("client", client_ex)  # RPCClient(source="client")
    Hello.set_discovery(hello_disc)
    world_disc = discovery.LocalDiscovery()
    world_disc.register_remote_service("test_hello", caller_ex)  # 1.0 test_hello: this program
    world_disc.register_remote_publisher("test_hello", unique("notif-ex"))
    World.set_discovery(world_disc)
    cluster.serve(unique("hello-q"), hello_ex, [Hello])
    cluster.serve(unique("world-q"), world_ex, [World])
    answers = plain.spy(unique("answers"), [(client_ex, "client"), (caller_ex, "test_hello")])
    requests = plain.spy(unique("requests"), [(hello_ex, "#"), (world_ex, "#")])

    cast, client_call = sample("cast from RPCClient"), sample("call from RPCClient")
    handler_call = sample("call from handler")
    failing = dict(handler_call, body=json.dumps({"payload": {"param": "fail"},
                                                  "context": {"param": "fail"}}))
    failing_headers = dict(sample_headers(handler_call), request_id="f" * 32,
                           message_id="e" * 32)
    # Published byte for byte as 1.0 did; the cast first, so its (absent) answer would
    # come before the call's on the same exchange.
    for item, headers, exchange in ((cast, sample_headers(cast), hello_ex),
                                    (client_call, sample_headers(client_call), hello_ex),
                                    (handler_call, sample_headers(handler_call), world_ex),
                                    (failing, failing_headers, world_ex)):
        plain.publish(exchange, item["routing_key"], item["body"].encode(), headers)

    on_wire = plain.wait_for(requests, 4)
    assert [seen.properties for seen in on_wire] == [{}] * 4  # headers only, as 1.0 sends
    answered = plain.wait_for(answers, 3)
    handled = SEEN.wait_for(4)

    # The cast: dispatched as a cast with its 1.0 headers, context updated with the payload.
    got = handled[f"hello/{sample_headers(cast)['request_id']}"]
    assert got["kind"] == "IncomingRequestCast"
    assert {k: got["headers"][k] for k in TAVRIDA_HEADERS} == sample_headers(cast)
    assert got["payload"] == {"param": 123}
    assert got["context"] == {"param": 123}
    got = handled[f"hello/{sample_headers(client_call)['request_id']}"]
    assert got["kind"] == "IncomingRequestCall"
    assert {k: got["headers"][k] for k in TAVRIDA_HEADERS} == sample_headers(client_call)
    assert handled["world(123)"]["kind"] == "IncomingRequestCall"
    assert handled["world(123)"]["context"] == {"param": 123}

    by_request = {seen.headers["request_id"]: seen for seen in answered}
    assert len(answered) == 3 and len(by_request) == 3, (
        f"one answer per call, none for the cast: {answered}")
    expected = {
        # request: (exchange, routing key, message_type, source, payload, context)
        sample_headers(client_call)["request_id"]: (
            client_ex, "client", "response", "test_hello.hello",
            {"param": "hello response"}, {"param": "client-call"}),
        sample_headers(handler_call)["request_id"]: (
            caller_ex, "test_hello", "response", "test_world.world",
            {"param": "world response"}, {"param": 123}),
        failing_headers["request_id"]: (
            caller_ex, "test_hello", "error", "test_world.world",
            {"class": f"{__name__}.WorldFailure", "name": "WorldFailure",
             "message": "world fails once (param=fail)", "code": 1000}, {"param": "fail"}),
    }
    requests_by_id = {sample_headers(client_call)["request_id"]: sample_headers(client_call),
                      sample_headers(handler_call)["request_id"]: sample_headers(handler_call),
                      failing_headers["request_id"]: failing_headers}
    for request_id, (exchange, key, kind, source, payload, context) in expected.items():
        answer = by_request[request_id]
        request = requests_by_id[request_id]
        assert (answer.exchange, answer.routing_key) == (exchange, key)
        assert set(answer.headers) == TAVRIDA_HEADERS
        assert all(isinstance(value, str) for value in answer.headers.values()), answer.headers
        assert answer.headers["message_type"] == kind
        assert answer.headers["correlation_id"] == request["correlation_id"]
        assert answer.headers["reply_to"] == ""
        assert answer.headers["source"] == request["destination"] == source
        assert answer.headers["destination"] == request["reply_to"] == key
        assert HEX32.match(answer.headers["message_id"])
        assert body_of(answer) == {"payload": payload, "context": context}
    # The 1.0 sample response to that very call, apart from ids, is what 2.0 sent.
    response_1_0 = sample("response from test_world.world")
    answer = by_request[sample_headers(handler_call)["request_id"]]
    assert json.loads(response_1_0["body"]) == body_of(answer)
    assert {k: v for k, v in sample_headers(response_1_0).items()
            if k not in ("message_id", "request_id")} == \
        {k: v for k, v in answer.headers.items() if k not in ("message_id", "request_id")}
    assert_dead_letter_queues_empty(plain, unique("hello-q"), unique("world-q"))


def test_1_0_response_error_and_notification_reach_2_0_handlers(cluster, plain, unique):
    hello_ex, notif_ex = unique("hello-ex"), unique("notif-ex")
    Hello.set_discovery(discovery.LocalDiscovery())
    world_disc = discovery.LocalDiscovery()
    world_disc.register_remote_publisher("test_hello", notif_ex)
    World.set_discovery(world_disc)
    cluster.serve(unique("hello-q"), hello_ex, [Hello])
    cluster.serve(unique("world-q"), unique("world-ex"), [World])

    response, error = sample("response from"), sample("error from")
    notification = sample("notification published")
    plain.publish(hello_ex, response["routing_key"], response["body"].encode(),
                  sample_headers(response))
    plain.publish(hello_ex, error["routing_key"], error["body"].encode(), sample_headers(error))
    plain.publish(notif_ex, notification["routing_key"], notification["body"].encode(),
                  sample_headers(notification))
    handled = SEEN.wait_for(3)

    got = handled["world_response"]
    assert got["kind"] == "IncomingResponse"
    assert got["payload"] == {"param": "world response"}
    assert got["context"] == {"param": "world response"}  # 123, then updated with the payload
    assert got["headers"]["correlation_id"] == "123-456"
    got = handled["world_error"]
    assert got["kind"] == "IncomingError"
    # A 1.0 error has no "name": read as it is.
    assert got["payload"] == {"class": "__main__.WorldFailure",
                              "message": "world fails once (param=123)", "code": 1000}
    got = handled["hello_publication"]
    assert got["kind"] == "IncomingNotification"
    assert got["payload"] == {"param": "hello publication"}
    assert got["headers"]["source"] == "test_hello.hello"
    assert got["headers"]["correlation_id"] == "123-456"
    assert_dead_letter_queues_empty(plain, unique("hello-q"), unique("world-q"))


def test_1_0_body_with_null_context_and_other_key_order_is_read(cluster, plain, unique):
    """``context`` may be null; readers depend on neither key order nor spacing."""
    hello_ex, client_ex = unique("hello-ex"), unique("client-ex")
    disc = discovery.LocalDiscovery()
    disc.register_remote_service("client", client_ex)
    Hello.set_discovery(disc)
    cluster.serve(unique("hello-q"), hello_ex, [Hello])
    answers = plain.spy(unique("answers"), [(client_ex, "client")])
    call = sample("call from RPCClient")
    headers = dict(reversed(list(sample_headers(call).items())), **{"x-user": "kept"})
    plain.publish(hello_ex, call["routing_key"],
                  b'{"context":null,  "payload" : {"param":"client-call"}}', headers)
    [answer] = plain.wait_for(answers, 1)
    assert answer.message_type == "response"
    assert answer.headers["request_id"] == headers["request_id"]
    assert answer.headers["x-user"] == "kept"  # a user header travels on to the answer
    assert body_of(answer) == {"payload": {"param": "hello response"},
                               "context": {"param": "client-call"}}
    assert SEEN.wait_for(1)["hello"]["context"] == {"param": "client-call"}


# -- what 2.0 puts on the wire -------------------------------------------------------------------

def test_2_0_messages_carry_exactly_the_documented_headers_and_body(cluster, plain, unique):
    front_ex, client_ex, events_ex = unique("front-ex"), unique("client-ex"), unique("events-ex")
    disc = discovery.LocalDiscovery()
    disc.register_remote_service("client_app", client_ex)
    disc.register_local_publisher("front", events_ex)
    Front.set_discovery(disc)
    cluster.serve(unique("front-q"), front_ex, [Front])
    spy = plain.spy(unique("spy"), [(front_ex, "#"), (client_ex, "#"), (events_ex, "#")])
    client_disc = discovery.LocalDiscovery()
    client_disc.register_remote_service("front", front_ex)
    client_disc.register_remote_service("client_app", client_ex)
    cli = cluster.client(client_disc, "client_app", headers={"x-trace": "t1"})

    assert cli.front.work(step=1).call(timeout=10) == {"done": 1}
    with pytest.raises(exceptions.RemoteError):
        cli.front.work(step="fail").call(correlation_id="corr-given", timeout=10)
    seen = plain.wait_for(spy, 5)
    assert len(seen) == 5, seen

    for message in seen:
        extra = {"x-trace"}
        if message.message_type == "request":
            # a 2.0 call names the exchange its answer goes to (1.0 ignores the header)
            assert message.headers.pop("x-tavrida-reply-exchange") == client_ex, message
            # and a blocking call's request expires with the call (see delivery.rst);
            # 1.0 ignores both the header and the property
            extra.add("x-tavrida-expires-at")
            assert isinstance(message.headers["x-tavrida-expires-at"], int), message
            assert 0 < int(message.properties["expiration"]) <= 10_000, message
        else:
            assert "expiration" not in message.properties, message
        assert set(message.headers) == TAVRIDA_HEADERS | extra, message
        assert all(isinstance(message.headers[name], str) for name in TAVRIDA_HEADERS), message
        assert message.headers["x-trace"] == "t1"
        assert HEX32.match(message.headers["message_id"]), message
        assert HEX32.match(message.headers["request_id"]), message
        assert message.properties.get("content_type") == "application/json"
        assert message.properties.get("content_encoding") == "utf-8"
        assert message.properties.get("delivery_mode") == 2
        body_of(message)

    given = [m for m in seen if m.headers["correlation_id"] == "corr-given"]
    request, notification, response = [m for m in seen if m not in given]
    failed_request, error = given
    # Order on the spy: the request, then the handler's notification before its response.
    assert [m.message_type for m in (request, notification, response)] == \
        ["request", "notification", "response"]
    assert [m.message_type for m in (failed_request, error)] == ["request", "error"]

    assert (request.exchange, request.routing_key) == (front_ex, "front.work")
    assert UUID36.match(request.headers["correlation_id"]), request.headers  # generated
    assert {k: request.headers[k] for k in ("source", "destination", "reply_to")} == \
        {"source": "client_app", "destination": "front.work", "reply_to": "client_app"}
    assert body_of(request) == {"payload": {"step": 1}, "context": {}}

    assert (response.exchange, response.routing_key) == (client_ex, "client_app")
    assert response.headers["request_id"] == request.headers["request_id"]
    assert response.headers["correlation_id"] == request.headers["correlation_id"]
    assert response.headers["message_id"] != request.headers["message_id"]  # 2.0: fresh ids
    assert {k: response.headers[k] for k in ("source", "destination", "reply_to")} == \
        {"source": "front.work", "destination": "client_app", "reply_to": ""}
    assert body_of(response) == {"payload": {"done": 1}, "context": {"step": 1}}

    assert (notification.exchange, notification.routing_key) == (events_ex, "front.work")
    assert notification.headers["correlation_id"] == request.headers["correlation_id"]
    assert notification.headers["request_id"] != request.headers["request_id"]
    assert {k: notification.headers[k] for k in ("source", "destination", "reply_to")} == \
        {"source": "front.work", "destination": "", "reply_to": ""}
    assert body_of(notification) == {"payload": {"step": 1}, "context": {"step": 1}}

    assert (error.exchange, error.routing_key) == (client_ex, "client_app")
    assert error.headers["request_id"] == failed_request.headers["request_id"]
    assert {k: error.headers[k] for k in ("source", "destination", "reply_to")} == \
        {"source": "front.work", "destination": "client_app", "reply_to": ""}
    assert body_of(error) == {
        "payload": {"class": f"{__name__}.Failure", "name": "Failure",
                    "message": "front refuses", "code": 13},
        "context": {"step": "fail"}}


# -- topology shared with 1.0 --------------------------------------------------------------------

def declare_1_0_topology(plain: PlainAMQP, queue: str, exchanges: List[str],
                         service: str) -> None:
    """What a 1.0 server declares: durable topic exchanges, a durable queue, no arguments."""
    for exchange in exchanges:
        plain.declare_exchange(exchange)
    plain.declare_queue(queue)
    plain.bind(queue, exchanges[0], f"{service}.#")


def hello_call_works(cluster: Running, hello_ex: str, client_ex: str) -> None:
    disc = discovery.LocalDiscovery()
    disc.register_remote_service("test_hello", hello_ex)
    disc.register_remote_service("client", client_ex)
    cli = cluster.client(disc, "client")
    assert cli.test_hello.hello(param=1).call(timeout=10) == {"param": "hello response"}


def test_1_0_topology_first_then_2_0_server(cluster, plain, unique):
    queue, hello_ex, client_ex = unique("hello-q"), unique("hello-ex"), unique("client-ex")
    declare_1_0_topology(plain, queue, [hello_ex, client_ex], "test_hello")
    disc = discovery.LocalDiscovery()
    disc.register_remote_service("client", client_ex)
    Hello.set_discovery(disc)
    cluster.serve(queue, hello_ex, [Hello])  # a 406 PRECONDITION_FAILED would raise here
    hello_call_works(cluster, hello_ex, client_ex)


def test_2_0_server_first_then_1_0_redeclaration(cluster, plain, unique):
    queue, hello_ex, client_ex = unique("hello-q"), unique("hello-ex"), unique("client-ex")
    disc = discovery.LocalDiscovery()
    disc.register_remote_service("client", client_ex)
    Hello.set_discovery(disc)
    cluster.serve(queue, hello_ex, [Hello])
    # A 406 would close the channel with PreconditionFailed here.
    declare_1_0_topology(plain, queue, [hello_ex, client_ex], "test_hello")
    assert plain.consumer_count(queue) == 1  # the 2.0 server still consumes it
    hello_call_works(cluster, hello_ex, client_ex)


# -- a 1.0 service answering a 2.0 blocking call -------------------------------------------------

class LegacyService:
    """A 1.0-style test_hello in a thread: answers each request as 1.0 did (headers only)."""

    def __init__(self, url: str, queue: str, exchange: str, reply_exchange: str) -> None:
        self.reply_exchange = reply_exchange
        self.conn = PlainAMQP(url)
        declare_1_0_topology(self.conn, queue, [exchange, reply_exchange], "test_hello")
        self.answered = 0
        self._stop = threading.Event()
        self.conn.channel.basic_consume(queue, callback=self._on_request)
        self.thread = threading.Thread(target=self._run, daemon=True, name="legacy")
        self.thread.start()

    def _on_request(self, message: Any) -> None:
        request = dict(message.properties["application_headers"])
        body = json.loads(message.body)
        context = dict(body["context"] or {})
        context.update(body["payload"])
        param = body["payload"]["param"]
        if param == "fail":
            kind = "error"
            payload = {"class": "legacy.LegacyFailure", "message": "legacy refuses", "code": 42}
        elif param == "fail-without-code":
            kind, payload = "error", {"class": "legacy.Other", "message": "no code"}
        else:
            kind, payload = "response", {"param": f"legacy says {param}"}
        headers = {"correlation_id": request["correlation_id"], "reply_to": "",
                   "source": request["destination"], "destination": request["reply_to"],
                   "request_id": request["request_id"], "message_type": kind,
                   "message_id": request["message_id"]}  # 1.0 keeps the request's message_id
        self.answered += 1  # counted first: the caller may check as soon as the answer is out
        # 1.0 routes answers by discovery: test_hello knows client_app's exchange.
        self.conn.publish(self.reply_exchange, request["reply_to"],
                          json.dumps({"payload": payload, "context": context}).encode(), headers)
        message.channel.basic_ack(message.delivery_tag)

    def _run(self) -> None:
        deadline = time.monotonic() + 4 * WAIT
        while not self._stop.is_set() and time.monotonic() < deadline:
            self.conn.drain(0.1)

    def close(self) -> None:
        self._stop.set()
        self.thread.join(WAIT)
        self.conn.close()


def test_1_0_reply_and_error_reach_a_2_0_call(cluster, amqp_url, unique):
    hello_ex, client_ex = unique("hello-ex"), unique("client-ex")
    legacy = LegacyService(amqp_url, unique("hello-q"), hello_ex, client_ex)
    try:
        disc = discovery.LocalDiscovery()
        disc.register_remote_service("test_hello", hello_ex)
        disc.register_remote_service("client_app", client_ex)
        cli = cluster.client(disc, "client_app")
        assert cli.test_hello.hello(param=5).call(timeout=10) == {"param": "legacy says 5"}
        with pytest.raises(exceptions.RemoteError) as info:
            cli.test_hello.hello(param="fail").call(timeout=10)
        assert info.value.remote_class == "legacy.LegacyFailure"
        assert info.value.remote_name == "LegacyFailure"  # derived: 1.0 sends no "name"
        assert info.value.remote_message == "legacy refuses"
        assert info.value.code == 42
        with pytest.raises(exceptions.RemoteError) as info:
            cli.test_hello.hello(param="fail-without-code").call(timeout=10)
        assert (info.value.remote_name, info.value.remote_message, info.value.code) == \
            ("Other", "no code", 1000)
        assert legacy.answered == 3
    finally:
        legacy.close()

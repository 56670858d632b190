"""The server: topology, dispatch, answers, bad input and dead letters.

Every test runs real servers on the in-memory broker and looks at what a
user would see: handler arguments, answers on the caller's exchange,
messages in ``<queue>.dead``, log lines.
"""

from __future__ import annotations

import json
import logging
import pickle

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tavrida import config, discovery, dispatcher, exceptions, messages, server, service
from tavrida.testing import HandlerFailed, MemoryCluster
from tavrida.transports.base import Binding, OutgoingEnvelope
from tavrida.transports.confirmation import Confirmation
from tavrida.transports.memory import MemoryTransport

DEAD_REASON = "x-tavrida-dead-reason"


class Boom(Exception):
    pass


class CodedBoom(Exception):
    code = 4242


class Retry(exceptions.BaseNackableException):
    message_template = "try again"


def serve(cluster, *classes, remotes=None, publishers=None, local=None, **kwargs):
    """Start a server for ``classes`` whose discovery knows ``client`` and ``remotes``."""
    disc = discovery.LocalDiscovery()
    disc.register_remote_service("client", "client_exchange")
    for name, exchange in (remotes or {}).items():
        disc.register_remote_service(name, exchange)
    for name, exchange in (publishers or {}).items():
        disc.register_remote_publisher(name, exchange)
    for name, exchange in (local or {}).items():
        disc.register_local_publisher(name, exchange)
    for cls in classes:
        cls.set_discovery(disc)
    name = classes[0].service_name()
    kwargs.setdefault("queue_name", f"{name}_queue")
    kwargs.setdefault("exchange_name", f"{name}_exchange")
    return cluster.add_server(list(classes), **kwargs)


def client_of(cluster, source="client", **remotes):
    disc = discovery.LocalDiscovery()
    for name, exchange in remotes.items():
        disc.register_remote_service(name, exchange)
    return cluster.client(disc, source=source)


def answers(spy):
    """(message_type, payload) of each answer the spy saw."""
    return [(d.headers["message_type"], json.loads(d.body)["payload"]) for d in spy.collect()]


# --------------------------------------------------------------------------- topology


def test_topology_binds_requests_and_subscriptions(cluster):
    @dispatcher.rpc_service("svc")
    class Svc(service.ServiceController):
        @dispatcher.rpc_method(service="svc", method="do")
        def do(self, request, proxy):
            pass

        @dispatcher.subscription_method(service="pub", method="event")
        def on_event(self, notification, proxy):
            pass

    serve(cluster, Svc, remotes={"other": "other_exchange"},
          publishers={"pub": "pub_notifications"}, local={"svc": "svc_notifications"})
    broker = cluster.broker
    assert set(broker.exchange_names()) == {"svc_exchange", "client_exchange", "other_exchange",
                                            "pub_notifications", "svc_notifications"}
    # the queue, its dead letters, and a delay queue per retry backoff step (0.5 to 4 s)
    assert set(broker.queue_names()) == {"svc_queue", "svc_queue.dead", "svc_queue.retry.500",
                                         "svc_queue.retry.1000", "svc_queue.retry.2000",
                                         "svc_queue.retry.4000"}
    assert set(broker.bindings()) == {Binding("svc_queue", "svc_exchange", "svc.#"),
                                      Binding("svc_queue", "pub_notifications", "pub.event.#")}


def test_service_that_only_subscribes_still_gets_its_bindings(cluster):
    got = []

    @dispatcher.rpc_service("listener")
    class Listener(service.ServiceController):
        @dispatcher.subscription_method(service="pub", method="event")
        def on_event(self, notification, proxy, value):
            got.append(value)

    serve(cluster, Listener, publishers={"pub": "pub_notifications"})
    assert cluster.broker.bindings() == [
        Binding("listener_queue", "pub_notifications", "pub.event.#")]
    disc = discovery.LocalDiscovery()
    disc.register_local_publisher("pub", "pub_notifications")
    cluster.client(disc, source="pub.event").publish(value=5)
    cluster.deliver()
    assert got == [5]


def test_service_that_only_makes_calls_gets_its_answers_binding(cluster):
    @dispatcher.rpc_service("caller")
    class Caller(service.ServiceController):
        @dispatcher.rpc_response_method(service="remote", method="m")
        def on_response(self, response, proxy):
            pass

    serve(cluster, Caller)
    assert cluster.broker.bindings() == [Binding("caller_queue", "caller_exchange", "caller.#")]


def test_subscribing_to_an_unknown_publisher_fails_at_start(cluster):
    @dispatcher.rpc_service("listener")
    class Listener(service.ServiceController):
        @dispatcher.subscription_method(service="nobody", method="event")
        def on_event(self, notification, proxy):
            pass

    with pytest.raises(exceptions.UnableToDiscover) as info:
        serve(cluster, Listener)
    assert "nobody" in str(info.value)


def test_two_classes_with_the_same_service_are_refused():
    @dispatcher.rpc_service("same")
    class First(service.ServiceController):
        pass

    @dispatcher.rpc_service("same")
    class Second(service.ServiceController):
        pass

    with pytest.raises(exceptions.DuplicatedServiceRegistration) as info:
        server.Server("memory://", "q", "ex", [First, Second])
    text = str(info.value)
    assert "same" in text and "First" in text and "Second" in text


def test_service_list_must_hold_declared_controllers():
    class NotAController:
        pass

    class Undeclared(service.ServiceController):
        pass

    with pytest.raises(exceptions.NeedToBeController) as info:
        server.Server("memory://", "q", "ex", [NotAController])
    assert "NotAController" in str(info.value)
    with pytest.raises(exceptions.ServiceIsNotRegister) as info:
        server.Server("memory://", "q", "ex", [Undeclared])
    assert "Undeclared" in str(info.value)
    with pytest.raises(exceptions.ServiceIsNotRegister):
        server.Server("memory://", "q", "ex", [])


@pytest.mark.parametrize("kwargs", [{"queue_name": ""}, {"exchange_name": ""},
                                    {"workers": -1}])
def test_server_refuses_bad_arguments(kwargs):
    @dispatcher.rpc_service("svc")
    class Svc(service.ServiceController):
        pass

    arguments = dict(config="memory://", queue_name="q", exchange_name="ex", service_list=[Svc])
    arguments.update(kwargs)
    with pytest.raises(exceptions.IncorrectAMQPConfig):
        server.Server(**arguments)


# --------------------------------------------------------------------------- dispatch


@pytest.fixture
def echo(cluster, broker):
    """Service ``svc`` with handlers that return what the test asks; answers spied."""
    state = {"calls": [], "result": None}

    @dispatcher.rpc_service("svc")
    class Svc(service.ServiceController):
        @dispatcher.rpc_method(service="svc", method="do")
        def do(self, request, proxy, value, optional="default"):
            state["calls"].append((value, optional, request))
            result = state["result"]
            if isinstance(result, BaseException):
                raise result
            return result(request) if callable(result) else result

    spy = broker.spy("client_exchange")
    srv = serve(cluster, Svc)
    cli = client_of(cluster, svc="svc_exchange")
    return state, cli, spy, srv


def test_payload_keys_become_keyword_arguments(cluster, echo):
    state, cli, spy, _ = echo
    cli.svc.do(value=1, extra="dropped").cast()
    cli.svc.do(value=2, optional="given").cast()
    cluster.deliver()
    assert [(value, optional) for value, optional, _ in state["calls"]] == [
        (1, "default"), (2, "given")]


def test_missing_parameter_is_an_error_reply_naming_it(cluster, echo, caplog):
    state, cli, spy, _ = echo
    cli.svc.do(other=1).call()
    cluster.deliver()  # the caller got an Error: not a test failure
    assert [failure.answered for failure in cluster.failures] == [True]
    assert isinstance(cluster.failures[0].exception, exceptions.WrongHandlerParameters)
    assert state["calls"] == []
    ((kind, payload),) = answers(spy)
    assert kind == "error"
    assert payload["class"] == "tavrida.exceptions.WrongHandlerParameters"
    assert payload["name"] == "WrongHandlerParameters"
    assert "value" in payload["message"]
    # the log says what is wrong, not only that something is
    assert "lacks required parameter(s) value" in caplog.text


@pytest.mark.parametrize("result, payload", [
    (None, {}),
    ({"answer": 42}, {"answer": 42}),
    (lambda request: request.make_response(made="by hand"), {"made": "by hand"}),
])
def test_handler_answers_become_responses(cluster, echo, result, payload):
    state, cli, spy, _ = echo
    state["result"] = result
    request = cli.svc.do(value=1).call()
    cluster.deliver()
    (delivery,) = spy.collect()
    assert delivery.headers["message_type"] == "response"
    assert delivery.headers["request_id"] == request.request_id
    assert json.loads(delivery.body)["payload"] == payload


def test_handler_may_answer_with_an_error(cluster, echo):
    state, cli, spy, _ = echo
    state["result"] = lambda request: request.make_error(CodedBoom("refused"))
    cli.svc.do(value=1).call()
    cluster.deliver()
    assert answers(spy) == [("error", {"class": messages.get_fqcn(CodedBoom),
                                       "name": "CodedBoom", "message": "refused",
                                       "code": 4242})]


@pytest.mark.parametrize("result", [42, "text", [1, 2], object()])
def test_any_other_answer_is_an_error_reply(cluster, echo, result):
    state, cli, spy, _ = echo
    state["result"] = result
    cli.svc.do(value=1).call()
    cluster.deliver()  # the caller got an Error: not a test failure
    assert [failure.answered for failure in cluster.failures] == [True]
    ((kind, payload),) = answers(spy)
    assert kind == "error"
    assert payload["class"] == "tavrida.exceptions.WrongResponse"
    assert type(result).__name__ in payload["message"]


@pytest.mark.parametrize("exc, code", [(Boom("it broke"), 1000), (CodedBoom("it broke"), 4242)])
def test_exception_in_a_called_handler_is_an_error_reply(cluster, echo, exc, code):
    state, cli, spy, _ = echo
    state["result"] = exc
    request = cli.svc.do(value=1).call(correlation_id="corr-9")
    cluster.deliver()  # the caller got an Error: not a test failure
    assert [failure.answered for failure in cluster.failures] == [True]
    assert cluster.failures[0].exception is exc
    (delivery,) = spy.collect()
    assert delivery.headers["message_type"] == "error"
    assert delivery.headers["request_id"] == request.request_id
    assert delivery.headers["correlation_id"] == "corr-9"
    assert json.loads(delivery.body)["payload"] == {
        "class": messages.get_fqcn(exc), "name": type(exc).__name__, "message": "it broke",
        "code": code}
    assert cluster.dead_letters("svc_queue") == []


def test_handler_answers_to_a_cast_are_not_sent(cluster, echo):
    state, cli, spy, _ = echo
    state["result"] = {"answer": 1}
    cli.svc.do(value=1).cast()
    cluster.deliver()
    assert len(state["calls"]) == 1
    assert spy.collect() == []


def test_cast_whose_handler_raises_is_dead_lettered(cluster, echo, caplog):
    state, cli, spy, _ = echo
    state["result"] = Boom("cast failed")
    request = cli.svc.do(value=1).cast()
    with pytest.raises(HandlerFailed):
        cluster.deliver()
    ((headers, body),) = cluster.dead_letters("svc_queue")
    assert headers[DEAD_REASON] == f"handler do raised {messages.get_fqcn(Boom)}: cast failed"
    assert headers["x-tavrida-original-queue"] == "svc_queue"
    assert headers["x-tavrida-original-exchange"] == "svc_exchange"
    assert headers["x-tavrida-original-routing-key"] == "svc.do"
    assert headers["request_id"] == request.request_id
    assert json.loads(body) == {"payload": {"value": 1}, "context": {}}
    assert spy.collect() == []
    assert "cast failed" in caplog.text


def test_answer_that_cannot_be_routed_dead_letters_the_request(cluster, echo):
    state, cli, spy, _ = echo
    cli.svc.do(value=1).call(reply_to="stranger")
    cluster.deliver()
    assert len(state["calls"]) == 1
    ((headers, _),) = cluster.dead_letters("svc_queue")
    assert "answer not sent" in headers[DEAD_REASON]
    assert "stranger" in headers[DEAD_REASON]


def test_answer_publish_failure_requeues_then_dead_letters(cluster, echo, broker):
    state, cli, spy, srv = echo
    # the caller's exchange vanished: the answer cannot be published
    srv.transport.delete(exchanges=["client_exchange"])
    cli.svc.do(value=1).call()
    cluster.deliver()
    # at-least-once: the handler ran again on the redelivery, then gave up
    assert len(state["calls"]) == 2
    ((headers, _),) = cluster.dead_letters("svc_queue")
    assert headers[DEAD_REASON].startswith("failed twice: tavrida.exceptions.PublishFailed")
    assert broker.messages("svc_queue") == []


class FlakyAnswers(MemoryTransport):
    """The broker refuses the next ``failures`` answers to the client (broker trouble)."""

    failures = 0

    def publish(self, envelope):
        if envelope.exchange == "client_exchange" and self.failures:
            self.failures -= 1
            return Confirmation.failed(envelope, exceptions.PublishFailed(
                exchange=envelope.exchange, routing_key=envelope.routing_key,
                reason="the broker is unwell"))
        return super().publish(envelope)


def test_a_call_that_failed_twice_gets_an_error_not_a_dead_letter(cluster, broker):
    calls = []

    @dispatcher.rpc_service("svc")
    class Svc(service.ServiceController):
        @dispatcher.rpc_method(service="svc", method="do")
        def do(self, request, proxy):
            calls.append(request.message_id)
            return {"done": True}

    spy = broker.spy("client_exchange")
    transport = FlakyAnswers(cluster.config)
    transport.failures = 2  # the answer of both runs
    serve(cluster, Svc, transport=transport)
    request = client_of(cluster, svc="svc_exchange").svc.do().call()
    cluster.deliver()
    assert len(calls) == 2  # requeued once, as before
    ((kind, payload),) = answers(spy)
    assert kind == "error" and payload["class"] == "tavrida.exceptions.PublishFailed"
    assert "the broker is unwell" in payload["message"]
    assert spy.collect()[0].headers["request_id"] == request.request_id
    assert cluster.dead_letters("svc_queue") == []
    assert broker.messages("svc_queue") == []


def test_nackable_exception_runs_the_message_again_after_its_backoff(cluster, echo):
    state, cli, spy, _ = echo
    tries = []

    def result(request):
        tries.append(request.message_id)
        if len(tries) == 1:
            raise Retry()
        return {"done": len(tries)}

    state["result"] = result
    cli.svc.do(value=1).call()
    cluster.deliver()
    assert len(tries) == 2
    assert tries[0] == tries[1]  # the same message, published again (deliver() waited)
    assert answers(spy) == [("response", {"done": 2})]
    assert cluster.dead_letters("svc_queue") == []


def test_server_accepts_a_url(cluster):
    @dispatcher.rpc_service("svc")
    class Svc(service.ServiceController):
        pass

    srv = server.Server(f"memory://{cluster.name}", "q", "ex", [Svc])
    assert srv.config.is_memory
    srv.start()
    try:
        assert "q" in cluster.broker.queue_names()
    finally:
        srv.close()


# --------------------------------------------------------------------------- chains


def test_chain_of_three_services_carries_context_and_correlation_id(cluster, broker):
    seen = {}

    @dispatcher.rpc_service("a")
    class A(service.ServiceController):
        @dispatcher.rpc_method(service="a", method="start")
        def start(self, request, proxy, x):
            seen["a"] = request
            proxy.b.middle(y=2).call()

        @dispatcher.rpc_response_method(service="b", method="middle")
        def on_b(self, response, proxy, z=None):
            seen["a_response"] = response

    @dispatcher.rpc_service("b")
    class B(service.ServiceController):
        @dispatcher.rpc_method(service="b", method="middle")
        def middle(self, request, proxy, y):
            seen["b"] = request
            proxy.c.end(z=3).call()
            return {"z": "from b"}

        @dispatcher.rpc_response_method(service="c", method="end")
        def on_c(self, response, proxy, w):
            seen["b_response"] = response

    @dispatcher.rpc_service("c")
    class C(service.ServiceController):
        @dispatcher.rpc_method(service="c", method="end")
        def end(self, request, proxy, z):
            seen["c"] = request
            return {"w": 4}

    spy = broker.spy("a_exchange", "b_exchange", "c_exchange")
    serve(cluster, A, remotes={"b": "b_exchange"})
    serve(cluster, B, remotes={"a": "a_exchange", "c": "c_exchange"})
    serve(cluster, C, remotes={"b": "b_exchange"})
    client_of(cluster, a="a_exchange").a.start(x=1).cast(correlation_id="chain-7")
    cluster.deliver()

    assert seen["a"].context == {"x": 1}
    assert seen["b"].context == {"x": 1, "y": 2}
    assert seen["c"].context == {"x": 1, "y": 2, "z": 3}
    assert seen["b_response"].payload == {"w": 4}
    assert seen["b_response"].context == {"x": 1, "y": 2, "z": 3, "w": 4}
    assert seen["a_response"].context == {"x": 1, "y": 2, "z": "from b"}
    for name in ("a", "b", "c", "b_response", "a_response"):
        assert seen[name].correlation_id == "chain-7"
    # request_id pairs each request with its response, and differs between pairs
    assert seen["b_response"].request_id == seen["c"].request_id
    assert seen["a_response"].request_id == seen["b"].request_id
    assert len({seen["a"].request_id, seen["b"].request_id, seen["c"].request_id}) == 3
    assert {d.headers["correlation_id"] for d in spy.collect()} == {"chain-7"}


def test_publish_reaches_subscribers_in_two_servers(cluster):
    got = []

    @dispatcher.rpc_service("hello")
    class Hello(service.ServiceController):
        @dispatcher.rpc_method(service="hello", method="hi")
        def hi(self, request, proxy, param):
            proxy.publish(param=f"published {param}")

    def subscriber(name):
        @dispatcher.rpc_service(name)
        class Subscriber(service.ServiceController):
            @dispatcher.subscription_method(service="hello", method="hi")
            def on_hi(self, notification, proxy, param):
                got.append((name, param, notification.correlation_id,
                            str(notification.source)))

        return Subscriber

    serve(cluster, Hello, local={"hello": "hello_notifications"})
    serve(cluster, subscriber("sub1"), publishers={"hello": "hello_notifications"})
    serve(cluster, subscriber("sub2"), publishers={"hello": "hello_notifications"})
    client_of(cluster, hello="hello_exchange").hello.hi(param=1).cast(correlation_id="c1")
    cluster.deliver()
    assert sorted(got) == [("sub1", "published 1", "c1", "hello.hi"),
                           ("sub2", "published 1", "c1", "hello.hi")]


def test_two_subscribers_in_one_server_both_get_the_notification(cluster):
    got = []

    @dispatcher.rpc_service("sub1")
    class Sub1(service.ServiceController):
        @dispatcher.subscription_method(service="pub", method="event")
        def on_event(self, notification, proxy, n):
            got.append(("sub1", n))

    @dispatcher.rpc_service("sub2")
    class Sub2(service.ServiceController):
        @dispatcher.subscription_method(service="pub", method="event")
        def on_event(self, notification, proxy, n):
            got.append(("sub2", n))

    serve(cluster, Sub1, Sub2, publishers={"pub": "pub_notifications"})
    disc = discovery.LocalDiscovery()
    disc.register_local_publisher("pub", "pub_notifications")
    cluster.client(disc, source="pub.event").publish(n=1)
    cluster.deliver()
    assert sorted(got) == [("sub1", 1), ("sub2", 1)]


def test_notification_nobody_subscribed_to_is_dead_lettered(cluster, broker):
    @dispatcher.rpc_service("listener")
    class Listener(service.ServiceController):
        @dispatcher.subscription_method(service="pub", method="event")
        def on_event(self, notification, proxy):
            pass

    serve(cluster, Listener, publishers={"pub": "pub_notifications"})
    broker.publish("pub_notifications", "pub.event.sub",
                   broker.body({}), broker.headers("", source="pub.other",
                                                   message_type="notification"))
    cluster.deliver()
    ((headers, _),) = broker.dead("listener_queue")
    assert "No subscription handler for pub.other" in headers[DEAD_REASON]


def test_competing_consumers_share_the_queue(cluster):
    handled_by = []

    @dispatcher.rpc_service("worker")
    class Worker(service.ServiceController):
        @dispatcher.rpc_method(service="worker", method="job")
        def job(self, request, proxy, n):
            handled_by.append((id(self), n))

    first = serve(cluster, Worker)
    second = serve(cluster, Worker)
    cli = client_of(cluster, worker="worker_exchange")
    for n in range(6):
        cli.worker.job(n=n).cast()
    cluster.deliver()
    assert sorted(n for _, n in handled_by) == list(range(6))
    assert len({who for who, _ in handled_by}) == 2
    assert first.handled > 0 and second.handled > 0
    assert first.handled + second.handled == 6


# --------------------------------------------------------------------------- bad input


@pytest.fixture
def target(cluster, broker):
    """Service ``svc`` (queue svc_queue, max body 300 bytes) answering callers named
    ``caller`` on ``caller_exchange``, which a spy watches."""
    handled = []

    @dispatcher.rpc_service("svc")
    class Svc(service.ServiceController):
        @dispatcher.rpc_method(service="svc", method="do")
        def do(self, request, proxy, value):
            handled.append(value)

    spy = broker.spy("caller_exchange")
    serve(cluster, Svc, remotes={"caller": "caller_exchange"}, max_body_size=300)

    def good_message_is_handled():
        broker.publish("svc_exchange", "svc.do", broker.body({"value": "after"}),
                       broker.headers("svc.do"))
        cluster.deliver(raise_errors=False)
        return handled[-1:] == ["after"]

    return handled, spy, good_message_is_handled


def unpickle_trap(path):
    class Trap:
        def __reduce__(self):
            return (open, (path, "w"))

    return Trap()


GOOD = b'{"payload": {"value": 1}, "context": {}}'

# (case id, header changes, body, content_type, reason in log and dead letter, answerable:
# a call's caller can be sent an Error)
BAD_INPUT = [
    ("missing header", {"source": None}, GOOD, None, "missing header(s): source", True),
    ("structured header", {"request_id": {"id": 12}}, GOOD, None,
     "header 'request_id' must be text, got dict", False),
    ("list header", {"correlation_id": [1, 2]}, GOOD, None,
     "header 'correlation_id' must be text, got list", False),
    ("bytes header not utf-8", {"source": b"\xff"}, GOOD, None,
     "header 'source' is not valid UTF-8", True),
    ("unknown message_type", {"message_type": "command"}, GOOD, None,
     "unknown message_type 'command'", False),
    ("bad entry point", {"destination": "svc.do.now"}, GOOD, None,
     "header 'destination' is not an entry point", False),
    ("body not json", {}, b"{oops", None, "body is not JSON", True),
    ("body not utf-8", {}, b'{"payload": {"value": "\xff"}}', None,
     "body is not valid UTF-8", True),
    ("payload missing", {}, b'{"context": {}}', None, 'body has no "payload" object', True),
    ("payload not an object", {}, b'{"payload": [1], "context": {}}', None,
     'body has no "payload" object', True),
    ("oversized body", {}, b'{"payload": {"value": "' + b"x" * 400 + b'"}}', None,
     "exceeds the limit of 300 bytes", True),
    ("pickle content type", {}, None, "application/x-python-serialize",
     "content type 'application/x-python-serialize' refused", True),
    ("unknown service", {"destination": "other.do"}, GOOD, None,
     "No local service other handles this message", True),
    ("no handler", {"destination": "svc.nothing"}, GOOD, None,
     "No request handler for svc.nothing", True),
    ("wrong handler parameters", {}, b'{"payload": {"valeu": 1}, "context": {}}', None,
     "lacks required parameter(s) value", True),
]


def bad_message(broker, tmp_path, changes, body, reply_to):
    headers = broker.headers("svc.do", reply_to=reply_to, source="caller.x")
    for name, value in changes.items():
        if value is None:
            del headers[name]
        else:
            headers[name] = value
    if body is None:  # a pickle that would leave a file behind if anybody unpickled it
        body = pickle.dumps(unpickle_trap(str(tmp_path / "unpickled")))
    return headers, body


@pytest.mark.parametrize("case, changes, body, content_type, reason, readable", BAD_INPUT,
                         ids=[case[0] for case in BAD_INPUT])
def test_bad_cast_is_logged_dead_lettered_and_the_server_goes_on(
        cluster, broker, target, tmp_path, caplog, case, changes, body, content_type, reason,
        readable):
    handled, spy, good_message_is_handled = target
    headers, body = bad_message(broker, tmp_path, changes, body, reply_to="")
    broker.publish("svc_exchange", "svc.do", body, headers, content_type=content_type)
    with caplog.at_level(logging.WARNING):
        cluster.deliver(raise_errors=False)
    assert handled == []
    assert reason in caplog.text
    ((dead_headers, dead_body),) = broker.dead("svc_queue")
    assert reason in dead_headers[DEAD_REASON]
    assert dead_body == body  # the original bytes, for an operator to replay
    assert {k: v for k, v in dead_headers.items() if not k.startswith("x-tavrida-")} == headers
    assert spy.collect() == []
    assert not (tmp_path / "unpickled").exists()
    assert good_message_is_handled()


@pytest.mark.parametrize("case, changes, body, content_type, reason, readable", BAD_INPUT,
                         ids=[case[0] for case in BAD_INPUT])
def test_bad_call_gets_an_error_reply_when_its_headers_are_readable(
        cluster, broker, target, tmp_path, caplog, case, changes, body, content_type, reason,
        readable):
    handled, spy, good_message_is_handled = target
    headers, body = bad_message(broker, tmp_path, changes, body, reply_to="caller")
    broker.publish("svc_exchange", "svc.do", body, headers, content_type=content_type)
    with caplog.at_level(logging.WARNING):
        cluster.deliver(raise_errors=False)
    assert handled == []
    assert reason in caplog.text
    if readable:
        (error,) = spy.collect()
        assert error.routing_key == "caller"
        assert error.headers["message_type"] == "error"
        assert error.headers["request_id"] == headers["request_id"]
        assert error.headers["correlation_id"] == headers["correlation_id"]
        assert error.headers["destination"] == "caller"
        payload = json.loads(error.body)["payload"]
        assert set(payload) == {"class", "name", "message", "code"}
        assert reason in payload["message"]
        assert broker.dead("svc_queue") == []
    else:
        assert spy.collect() == []
        ((dead_headers, _),) = broker.dead("svc_queue")
        assert reason in dead_headers[DEAD_REASON]
    assert not (tmp_path / "unpickled").exists()
    assert good_message_is_handled()


def test_bad_call_from_an_unknown_caller_is_dead_lettered(cluster, broker, target):
    handled, spy, good_message_is_handled = target
    broker.publish("svc_exchange", "svc.do", b"{oops",
                   broker.headers("svc.do", reply_to="stranger", source="stranger.x"))
    cluster.deliver()
    ((dead_headers, _),) = broker.dead("svc_queue")
    assert "body is not JSON" in dead_headers[DEAD_REASON]
    assert good_message_is_handled()


def test_null_context_is_accepted(cluster, broker, target):
    handled, spy, _ = target
    broker.publish("svc_exchange", "svc.do", b'{"payload": {"value": 7}, "context": null}',
                   broker.headers("svc.do"))
    cluster.deliver()
    assert handled == [7]
    assert broker.dead("svc_queue") == []


def test_body_within_the_limit_is_accepted(cluster, broker, target):
    handled, spy, _ = target
    body = b'{"payload": {"value": "' + b"x" * 250 + b'"}}'
    assert len(body) <= 300
    broker.publish("svc_exchange", "svc.do", body, broker.headers("svc.do"))
    cluster.deliver()
    assert handled == ["x" * 250]


def test_handler_result_that_is_not_json_is_an_error_reply_naming_the_field(cluster, echo):
    state, cli, spy, _ = echo
    state["result"] = {"ok": 1, "when": complex(2026, 1), "items": [1, {2, 3}]}
    cli.svc.do(value=1).call()
    cluster.deliver()
    ((kind, payload),) = answers(spy)
    assert kind == "error"
    assert payload == {
        "class": "tavrida.exceptions.UnsendableAnswer", "name": "UnsendableAnswer",
        "message": "The answer of svc.do could not be sent: answer field 'when': complex is "
                   "not JSON-serialisable", "code": 1000}
    assert cluster.dead_letters("svc_queue") == []  # the caller knows: nothing to keep
    assert cluster.broker.queue_size("svc_queue") == 0  # acked


def test_error_answer_that_is_not_json_is_replaced_by_one_that_is(cluster, echo):
    state, cli, spy, _ = echo
    state["result"] = lambda request: messages.Error.create_by_request(
        request, {"class": "x.Refused", "message": "no", "code": 7, "detail": [object()]})
    cli.svc.do(value=1).call()
    cluster.deliver()
    ((kind, payload),) = answers(spy)
    assert kind == "error" and payload["name"] == "UnsendableAnswer"
    assert "answer field 'detail[0]': object is not JSON-serialisable" in payload["message"]


def test_handler_raising_an_exception_that_cannot_be_shown_is_still_answered(cluster, echo):
    class Unprintable(Exception):
        code = property(lambda self: 1 / 0)

        def __str__(self):
            raise RuntimeError("no str")

    state, cli, spy, _ = echo
    state["result"] = Unprintable(object())
    cli.svc.do(value=1).call()
    cluster.deliver()
    ((kind, payload),) = answers(spy)
    assert kind == "error" and payload["name"] == "Unprintable" and payload["code"] == 1000
    assert payload["message"].startswith("Unprintable(<object object")


def test_response_without_a_response_handler_is_dead_lettered_not_answered(cluster, broker):
    @dispatcher.rpc_service("caller")
    class Caller(service.ServiceController):
        @dispatcher.rpc_response_method(service="remote", method="known")
        def on_known(self, response, proxy):
            pass

    spy = broker.spy("client_exchange", "caller_exchange")
    serve(cluster, Caller)
    headers = broker.headers("caller", source="remote.unknown", message_type="response")
    broker.publish("caller_exchange", "caller", broker.body({"x": 1}), headers)
    cluster.deliver()
    ((dead_headers, _),) = broker.dead("caller_queue")
    assert "No response handler for remote.unknown" in dead_headers[DEAD_REASON]
    assert len(spy.collect()) == 1  # only the response itself: nothing answered it


def test_run_serves_until_stop_with_worker_threads(cluster):
    import threading

    done = threading.Event()
    handled = []

    @dispatcher.rpc_service("pool")
    class Pool(service.ServiceController):
        @dispatcher.rpc_method(service="pool", method="job")
        def job(self, request, proxy, n):
            handled.append((n, threading.current_thread().name))
            if len(handled) == 4:
                done.set()

    Pool.set_discovery(discovery.LocalDiscovery())
    srv = server.Server(cluster.config, "pool_queue", "pool_exchange", [Pool], workers=2)
    srv.start()
    runner = threading.Thread(target=srv.run)
    runner.start()
    try:
        cli = client_of(cluster, pool="pool_exchange")
        for n in range(4):
            cli.pool.job(n=n).cast()
        assert done.wait(5)
    finally:
        srv.stop()
        runner.join(5)
    assert not runner.is_alive()
    assert sorted(n for n, _ in handled) == [0, 1, 2, 3]
    assert all(name.startswith("tavrida-pool_queue") for _, name in handled)
    # every message was acked before the connection closed
    assert cluster.broker.messages("pool_queue") == []
    assert srv.transport.closed


def test_run_in_the_main_thread_restores_signal_handlers(cluster):
    import signal
    import threading

    @dispatcher.rpc_service("main")
    class Main(service.ServiceController):
        @dispatcher.rpc_method(service="main", method="stop")
        def stop(self, request, proxy):
            threading.Thread(target=srv.stop).start()

    Main.set_discovery(discovery.LocalDiscovery())
    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    with server.Server(cluster.config, "main_queue", "main_exchange", [Main]) as srv:
        srv.start()
        client_of(cluster, main="main_exchange").main.stop().cast()
        watchdog = threading.Timer(5, srv.stop)  # a broken stop() fails, never hangs
        watchdog.start()
        try:
            srv.run()
        finally:
            watchdog.cancel()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert srv.handled == 1
    assert srv.transport.closed


_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=10),
                    st.binary(max_size=10))
_header_values = st.one_of(_scalars, st.lists(_scalars, max_size=2), st.sampled_from(
    ["request", "response", "error", "notification", "svc", "svc.do", "caller", "caller.x",
     "", "a.b.c"]))


@settings(max_examples=100, derandomize=True, database=None, deadline=None,
          suppress_health_check=list(HealthCheck))
@given(headers=st.dictionaries(st.sampled_from(list(messages.TAVRIDA_HEADERS) + ["x-user"]),
                               _header_values),
       body=st.one_of(st.binary(max_size=40), st.sampled_from(
           [GOOD, b'{"payload": {}}', b'{"payload": {"value": 1}, "context": null}'])),
       content_type=st.sampled_from([None, "application/json", "application/x-python-serialize",
                                     "text/x"]))
def test_server_survives_any_message(headers, body, content_type):
    """Whatever arrives is handled, answered or dead-lettered; nothing stays or stops the
    server."""
    handled = []

    @dispatcher.rpc_service("svc")
    class Svc(service.ServiceController):
        @dispatcher.rpc_method(service="svc", method="do")
        def do(self, request, proxy, value):
            handled.append(value)

        @dispatcher.rpc_response_method(service="svc", method="do")
        def on_response(self, response, proxy):
            handled.append("response")

    with MemoryCluster() as cluster:
        serve(cluster, Svc, remotes={"caller": "caller_exchange", "svc": "svc_exchange"})
        srv = cluster.servers[0]
        srv.transport.publish(OutgoingEnvelope("svc_exchange", "svc.do", body, headers,
                                               content_type=content_type))
        cluster.deliver(raise_errors=False)
        assert cluster.broker.messages("svc_queue") == []
        assert srv.handled == 1
        assert len(cluster.dead_letters("svc_queue")) <= 1
        srv.transport.publish(OutgoingEnvelope(
            "svc_exchange", "svc.do", b'{"payload": {"value": "next"}}',
            {"correlation_id": "c", "request_id": "r", "message_id": "m",
             "message_type": "request", "source": "caller.x", "destination": "svc.do"}))
        cluster.deliver()
        assert handled[-1] == "next"


def test_an_answer_no_queue_takes_dead_letters_the_request(broker):
    """The caller's reply queue is gone (it gave up): the answer is Unroutable, the
    request goes to the dead-letter queue with the reason, and is acked."""
    with MemoryCluster(strict_routing=True) as strict:

        @dispatcher.rpc_service("lone")
        class Lone(service.ServiceController):
            @dispatcher.rpc_method(service="lone", method="do")
            def do(self, request, proxy):
                return {"done": True}

        serve(strict, Lone)  # declares client_exchange; nothing is bound to it
        cli = client_of(strict, lone="lone_exchange")
        cli.lone.do().call()
        strict.deliver()
        ((headers, _),) = strict.dead_letters("lone_queue")
        assert "answer not sent" in headers[DEAD_REASON]
        assert "client_exchange" in headers[DEAD_REASON]
        assert strict.broker.messages("lone_queue") == []


def test_server_stop_interrupts_the_transport():
    """Stopping wakes the loop and stops reconnect attempts (see Transport.interrupt)."""
    calls = []

    class Recording(MemoryTransport):
        def interrupt(self):
            calls.append("interrupt")
            super().interrupt()

    @dispatcher.rpc_service("quiet")
    class Quiet(service.ServiceController):
        pass

    srv = server.Server("memory://", "quiet_queue", "quiet_exchange", [Quiet],
                        transport=Recording(config.ConnectionConfig.from_url("memory://")))
    srv.start()
    srv.stop()
    srv.run()  # returns at once: already stopping
    assert calls == ["interrupt"]

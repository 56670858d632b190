"""The test helpers users get: MemoryCluster.deliver, captures, dead letters."""

from __future__ import annotations

import time

import pytest

from tavrida import discovery, dispatcher, exceptions, messages, service
from tavrida.middleware import Middleware
from tavrida.testing import (
    Capture,
    HandlerFailed,
    HandlerResult,
    MemoryCluster,
    RecordingSender,
    call_handler,
)
from tavrida.transports.base import Topology
from tavrida.transports.memory import MemoryBroker, MemoryTransport


class Kaput(Exception):
    pass


def start(cluster, cls, **remotes):
    disc = discovery.LocalDiscovery()
    for name, exchange in remotes.items():
        disc.register_remote_service(name, exchange)
    cls.set_discovery(disc)
    return cluster.add_server([cls])


def client(cluster, **remotes):
    disc = discovery.LocalDiscovery()
    for name, exchange in remotes.items():
        disc.register_remote_service(name, exchange)
    return cluster.client(disc, source="tester.run")


@pytest.fixture
def fragile(cluster):
    """Service ``fragile``: ``break`` raises Kaput, ``ok`` returns a dict."""
    @dispatcher.rpc_service("fragile")
    class Fragile(service.ServiceController):
        @dispatcher.rpc_method(service="fragile", method="break_")
        def break_(self, request, proxy, why):
            raise Kaput(why)

        @dispatcher.rpc_method(service="fragile", method="ok")
        def ok(self, request, proxy):
            return {"fine": True}

    start(cluster, Fragile, tester="tester_exchange")
    return client(cluster, fragile="fragile_exchange")


def test_deliver_reraises_a_handler_error_as_handler_failed(cluster, fragile):
    fragile.fragile.break_(why="on purpose").cast()
    with pytest.raises(HandlerFailed) as info:
        cluster.deliver()
    assert isinstance(info.value, AssertionError)
    assert type(info.value.__cause__) is Kaput
    assert str(info.value.__cause__) == "on purpose"
    assert "on purpose" in str(info.value)
    # the error was reported once; the cluster is usable again
    fragile.fragile.ok().cast()
    assert cluster.deliver() == 1


def test_a_called_handler_raising_is_an_error_answer_not_a_test_failure(cluster, fragile):
    fragile.fragile.break_(why="called").call()
    assert cluster.deliver() == 1
    assert [e.payload["message"] for e in cluster.sent_by("fragile").errors] == ["called"]
    [failure] = cluster.failures
    assert failure.answered and type(failure.exception) is Kaput
    assert failure.message.payload == {"why": "called"}


def test_a_call_whose_error_answer_cannot_be_sent_fails_the_test(cluster):
    @dispatcher.rpc_service("lonely")
    class Lonely(service.ServiceController):
        @dispatcher.rpc_method(service="lonely", method="fail")
        def fail(self, request, proxy):
            raise Kaput("nobody hears this")

    start(cluster, Lonely)  # its discovery does not know the caller: the Error cannot go
    client(cluster, lonely="lonely_exchange").lonely.fail().call()
    with pytest.raises(HandlerFailed) as info:
        cluster.deliver()
    assert str(info.value.__cause__) == "nobody hears this"
    assert "answer not sent" in cluster.dead_letters("lonely_queue")[0][0][
        "x-tavrida-dead-reason"]


def test_the_callers_error_handler_runs(cluster, fragile):
    seen = []

    @dispatcher.rpc_service("caller")
    class Caller(service.ServiceController):
        @dispatcher.rpc_method(service="caller", method="go")
        def go(self, request, proxy):
            proxy.fragile.break_(why="deep").call()

        @dispatcher.rpc_error_method(service="fragile", method="break_")
        def on_error(self, error, proxy):
            seen.append(error.payload["message"])

    start(cluster, Caller, fragile="fragile_exchange")
    cluster.servers[0].controllers[0].postprocessor.discovery.register_remote_service(
        "caller", "caller_exchange")
    client(cluster, caller="caller_exchange").caller.go().cast()
    assert cluster.deliver() == 3
    assert seen == ["deep"]


def test_expect_errors_lets_named_failures_through(cluster, fragile):
    fragile.fragile.break_(why="expected").cast()
    assert cluster.deliver(expect_errors=Kaput) == 1
    assert [str(f.exception) for f in cluster.failures] == ["expected"]
    assert not cluster.failures[0].answered
    fragile.fragile.break_(why="not this kind").cast()
    with pytest.raises(HandlerFailed):
        cluster.deliver(expect_errors=(KeyError, ValueError))


def test_deliver_can_leave_errors_to_the_test(cluster, fragile):
    fragile.fragile.break_(why="quietly").cast()
    assert cluster.deliver(raise_errors=False) == 1
    ((headers, _),) = cluster.dead_letters("fragile_queue")
    assert "quietly" in headers["x-tavrida-dead-reason"]


def test_bad_messages_are_not_handler_failures(cluster, fragile, broker):
    broker.publish("fragile_exchange", "fragile.ok", b"not json", broker.headers("fragile.ok"))
    assert cluster.deliver() == 1
    assert len(cluster.dead_letters("fragile_queue")) == 1


def test_deliver_counts_messages_and_returns_when_idle(cluster, fragile):
    assert cluster.deliver() == 0
    for _ in range(3):
        fragile.fragile.ok().cast()
    assert cluster.deliver() == 3
    assert cluster.deliver() == 0


def test_deliver_times_out_on_a_ping_pong_loop(cluster):
    rounds = []

    @dispatcher.rpc_service("ping")
    class Ping(service.ServiceController):
        @dispatcher.rpc_method(service="ping", method="ping")
        def ping(self, request, proxy, n):
            rounds.append(n)
            proxy.pong.pong(n=n + 1).call()

        @dispatcher.rpc_response_method(service="pong", method="pong")
        def on_pong(self, response, proxy, n):
            proxy.pong.pong(n=n + 1).call()

    @dispatcher.rpc_service("pong")
    class Pong(service.ServiceController):
        @dispatcher.rpc_method(service="pong", method="pong")
        def pong(self, request, proxy, n):
            rounds.append(n)
            return {"n": n + 1}

    start(cluster, Ping, pong="pong_exchange")
    start(cluster, Pong, ping="ping_exchange")
    client(cluster, ping="ping_exchange").ping.ping(n=0).cast()
    with pytest.raises(TimeoutError) as info:
        cluster.deliver(timeout=0.2)
    assert "still busy" in str(info.value)
    assert len(rounds) > 10


def test_sent_by_captures_what_each_service_sent(cluster, fragile):
    fragile.fragile.ok().call()
    fragile.fragile.break_(why="x").call()
    cluster.deliver(raise_errors=False)
    sent = cluster.sent_by("fragile")
    assert isinstance(sent, Capture)
    assert [m.payload for m in sent.responses] == [{"fine": True}]
    assert [m.payload["name"] for m in sent.errors] == ["Kaput"]
    assert sent.requests == [] and sent.notifications == []
    assert [m.message_type for m in sent.all] == ["response", "error"]
    # a client is captured under its source's service name
    assert [str(m.destination) for m in cluster.sent_by("tester").requests] == [
        "fragile.ok", "fragile.break_"]
    sent.clear()
    assert sent.all == []


def test_capture_sees_notifications_and_requests(cluster):
    @dispatcher.rpc_service("talker")
    class Talker(service.ServiceController):
        @dispatcher.rpc_method(service="talker", method="talk")
        def talk(self, request, proxy):
            proxy.publish(said="hi")
            proxy.other.listen().cast()

    disc = discovery.LocalDiscovery()
    disc.register_local_publisher("talker", "talker_notifications")
    disc.register_remote_service("other", "other_exchange")
    Talker.set_discovery(disc)
    cluster.add_server([Talker])
    client(cluster, talker="talker_exchange").talker.talk().cast()
    cluster.deliver()
    sent = cluster.sent_by("talker")
    assert [m.payload for m in sent.notifications] == [{"said": "hi"}]
    assert [str(m.destination) for m in sent.requests] == ["other.listen"]


def test_clusters_are_isolated():
    @dispatcher.rpc_service("iso")
    class Iso(service.ServiceController):
        @dispatcher.rpc_method(service="iso", method="m")
        def m(self, request, proxy):
            pass

    with MemoryCluster() as first, MemoryCluster() as second:
        assert first.broker is not second.broker
        start(first, Iso)
        start(second, Iso)
        client(first, iso="iso_exchange").iso.m().cast()
        assert second.deliver() == 0
        assert first.deliver() == 1
    # closing drops the broker: the next one of that name starts empty
    assert MemoryBroker.get(first.name).queue_names() == []
    MemoryBroker.reset(first.name)


# -- blocking calls inside a cluster ------------------------------------------------------


def blocking_client(cluster, **remotes):
    return client(cluster, tester="tester_exchange", **remotes)


def test_a_blocking_call_runs_the_servers_in_the_calling_thread(cluster, fragile):
    cli = blocking_client(cluster, fragile="fragile_exchange")
    assert cli.fragile.ok().call(timeout=5) == {"fine": True}
    with pytest.raises(exceptions.RemoteError) as info:
        cli.fragile.break_(why="remote").call(timeout=5)
    assert (info.value.remote_name, info.value.remote_message) == ("Kaput", "remote")
    assert [f.answered for f in cluster.failures] == [True]
    assert cluster.deliver() == 0  # the answered failure is not raised later either


def test_a_blocking_call_follows_a_transfer_through_two_services(cluster):
    order = []

    @dispatcher.rpc_service("front")
    class Front(service.ServiceController):
        @dispatcher.rpc_method(service="front", method="ask")
        def ask(self, request, proxy, q):
            order.append("front")
            proxy.back.answer(extra=1).transfer(request)

    @dispatcher.rpc_service("back")
    class Back(service.ServiceController):
        @dispatcher.rpc_method(service="back", method="answer")
        def answer(self, request, proxy, q, extra):
            order.append("back")
            proxy.publish(answered=q)
            return {"a": q * 2 + extra}

    start(cluster, Front, back="back_exchange")
    disc = discovery.LocalDiscovery()
    disc.register_remote_service("tester", "tester_exchange")
    disc.register_local_publisher("back", "back_notifications")
    Back.set_discovery(disc)
    cluster.add_server([Back])
    cli = blocking_client(cluster, front="front_exchange")
    assert cli.front.ask(q=20).call(timeout=5) == {"a": 41}
    assert order == ["front", "back"]
    assert [m.payload for m in cluster.sent_by("back").notifications] == [{"answered": 20}]


def test_a_blocking_call_nobody_answers_times_out(cluster):
    cli = blocking_client(cluster, nobody="nobody_exchange")
    MemoryTransport(cluster.config).declare(Topology.build(["nobody_exchange"]))
    began = time.monotonic()
    with pytest.raises(exceptions.CallTimeout):
        cli.nobody.hello().call(timeout=0.3)
    assert time.monotonic() - began < 0.3 + 3


def test_a_blocking_call_reports_an_unanswered_failure_downstream(cluster, fragile):
    @dispatcher.rpc_service("relay")
    class Relay(service.ServiceController):
        @dispatcher.rpc_method(service="relay", method="go")
        def go(self, request, proxy):
            proxy.fragile.break_(why="side effect").cast()
            return {"relayed": True}

    start(cluster, Relay, fragile="fragile_exchange", tester="tester_exchange")
    cli = blocking_client(cluster, relay="relay_exchange")
    # The call returns as soon as its answer is there: the cast is still queued...
    assert cli.relay.go().call(timeout=5) == {"relayed": True}
    # ...and its failure is reported by the next delivery, deterministically.
    with pytest.raises(HandlerFailed) as info:
        cluster.deliver()
    assert str(info.value.__cause__) == "side effect"
    # a failure met while a blocking call waits is raised by that call
    proxy = blocking_client(cluster, fragile="fragile_exchange", relay="relay_exchange")
    proxy.fragile.break_(why="while waiting").cast()
    with pytest.raises(HandlerFailed) as info:
        proxy.relay.go().call(timeout=5)
    assert str(info.value.__cause__) == "while waiting"


# -- call_handler -------------------------------------------------------------------------


class Upper(Middleware):
    def process(self, message):
        if isinstance(message, messages.Response):
            message.payload["shout"] = True
        return message


@dispatcher.rpc_service("greeter")
class Greeter(service.ServiceController):
    def __init__(self, postprocessor):
        super().__init__(postprocessor)
        self.add_outgoing_middleware(Upper())
        self.seen = []

    @dispatcher.rpc_method(service="greeter", method="greet")
    def greet(self, request, proxy, name, punctuation="!"):
        if not name:
            raise ValueError("no name")
        proxy.mailer.send(to=name).cast()
        proxy.publish(greeted=name)
        self.seen.append((request.correlation_id, request.context.get("lang")))
        return {"text": f"hello {name}{punctuation}"}

    @dispatcher.rpc_response_method(service="mailer", method="send")
    def sent(self, response, proxy, ok):
        self.seen.append(("sent", ok))

    @dispatcher.rpc_error_method(service="mailer", method="send")
    def not_sent(self, error, proxy):
        raise Kaput(error.payload["message"])

    @dispatcher.subscription_method(service="mailer", method="send")
    @dispatcher.rpc_method(service="greeter", method="twice")
    def twice(self, message, proxy, **payload):
        self.seen.append((message.message_type, payload))


def test_call_handler_answers_and_records_what_was_sent():
    result = call_handler(Greeter, "greet", name="ann", context={"lang": "en"},
                          correlation_id="c-1")
    assert isinstance(result, HandlerResult)
    assert result.response == {"text": "hello ann!", "shout": True}
    assert result.error is None and result.exception is None
    assert result.answer.correlation_id == "c-1"
    assert [(str(m.destination), m.payload) for m in result.sent.requests] == [
        ("mailer.send", {"to": "ann"})]
    assert [m.payload for m in result.sent.notifications] == [{"greeted": "ann"}]
    assert result.sent.requests[0].correlation_id == "c-1"
    assert result.controller.seen == [("c-1", "en")]


def test_call_handler_turns_a_raise_into_the_error_a_caller_gets():
    result = call_handler(Greeter, "greet", {"name": ""})
    assert result.response is None
    assert result.error == {"class": "builtins.ValueError", "name": "ValueError",
                            "message": "no name", "code": 1000}
    assert isinstance(result.exception, ValueError)
    assert result.sent.all == []


class BreaksOnErrors(Middleware):
    def process(self, message):
        if isinstance(message, messages.Error):
            raise Kaput("middleware broke")
        return message


def test_call_handler_answers_as_the_server_when_a_middleware_fails_on_the_error():
    greeter = Greeter(RecordingSender(Greeter.get_discovery(), "greeter"))
    greeter.add_outgoing_middleware(BreaksOnErrors())
    result = call_handler(greeter, "greet", {"name": ""})
    assert isinstance(result.exception, ValueError)
    assert result.error is not None
    assert (result.error["name"], result.error["message"]) == ("Kaput", "middleware broke")


def test_call_handler_raises_what_no_error_answer_covers():
    with pytest.raises(HandlerFailed) as info:
        call_handler(Greeter, "greet", name="", cast=True)
    assert isinstance(info.value.__cause__, ValueError)
    result = call_handler(Greeter, "not_sent", payload={"class": "x.Y", "message": "down"},
                          expect_errors=Kaput)
    assert str(result.exception) == "down" and result.answer is None
    with pytest.raises(HandlerFailed) as info:  # the payload is checked as a server does
        call_handler(Greeter, "greet", cast=True, expect_errors=Kaput)
    assert isinstance(info.value.__cause__, exceptions.WrongHandlerParameters)


def test_call_handler_runs_answer_and_subscription_handlers():
    controller = Greeter(RecordingSender())
    assert call_handler(controller, "sent", ok=True).answer is None
    call_handler(controller, "twice", message_type="notification", n=1)
    call_handler(controller, "twice", message_type="request", n=2, cast=True)
    assert controller.seen == [("sent", True), ("notification", {"n": 1}),
                               ("request", {"n": 2})]
    with pytest.raises(ValueError, match="say which with message_type"):
        call_handler(Greeter, "twice")
    with pytest.raises(ValueError, match="is not a handler"):
        call_handler(Greeter, "nope")


def test_call_handler_payloads_go_through_the_wire_format():
    with pytest.raises(exceptions.IncorrectOutgoingMessage):
        call_handler(Greeter, "greet", name=object())

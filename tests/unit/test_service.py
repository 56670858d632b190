"""Service controllers: middlewares around handlers, discovery binding."""

from __future__ import annotations

import json

import pytest

from tavrida import discovery, dispatcher, exceptions, messages, middleware, service


class Recording(middleware.Middleware):
    """Notes its name and the message it saw, then returns ``result(message)``."""

    def __init__(self, name, log, result=None):
        self.name = name
        self.log = log
        self.result = result

    def process(self, message):
        self.log.append((self.name, message))
        return message if self.result is None else self.result(message)


@pytest.fixture
def build(cluster, broker):
    """build(incoming=[...], outgoing=[...], result=...) starts service ``svc`` with those
    middlewares; returns (log, client, spy of answers)."""

    def make(incoming=(), outgoing=(), result=None):
        log = []

        @dispatcher.rpc_service("svc")
        class Svc(service.ServiceController):
            def __init__(self, postprocessor):
                super().__init__(postprocessor)
                for mw in incoming:
                    self.add_incoming_middleware(mw(log))
                for mw in outgoing:
                    self.add_outgoing_middleware(mw(log))

            @dispatcher.rpc_method(service="svc", method="do")
            def do(self, request, proxy, value):
                log.append(("handler", request))
                if isinstance(result, BaseException):
                    raise result
                return result

        disc = discovery.LocalDiscovery()
        disc.register_remote_service("client", "client_exchange")
        Svc.set_discovery(disc)
        spy = broker.spy("client_exchange")
        cluster.add_server([Svc])
        cli_disc = discovery.LocalDiscovery()
        cli_disc.register_remote_service("svc", "svc_exchange")
        return log, cluster.client(cli_disc), spy

    return make


def names(log):
    return [name for name, _ in log]


def answer_of(spy):
    (delivery,) = spy.collect()
    return delivery.headers["message_type"], json.loads(delivery.body)["payload"]


def test_incoming_middlewares_run_in_order_before_the_handler(cluster, build):
    log, cli, spy = build(incoming=[lambda log: Recording("first", log),
                                    lambda log: Recording("second", log)],
                          result={"ok": 1})
    cli.svc.do(value=1).call()
    cluster.deliver()
    assert names(log) == ["first", "second", "handler"]
    assert isinstance(log[0][1], messages.IncomingRequestCall)
    assert answer_of(spy) == ("response", {"ok": 1})


def test_incoming_middleware_may_replace_the_message(cluster, build):
    def rewrite(message):
        message.payload["value"] = "rewritten"
        return message

    seen = []

    class Seen(middleware.Middleware):
        def process(self, message):
            seen.append(message.payload["value"])
            return message

    log, cli, spy = build(incoming=[lambda log: Recording("rewrite", log, rewrite),
                                    lambda log: Seen()])
    cli.svc.do(value=1).cast()
    cluster.deliver()
    assert seen == ["rewritten"]


@pytest.mark.parametrize("make_answer, expected", [
    (lambda request: request.make_response(short="circuit"), ("response", {"short": "circuit"})),
    (lambda request: request.make_error(ValueError("denied")),
     ("error", {"class": "builtins.ValueError", "name": "ValueError", "message": "denied",
                "code": 1000})),
])
def test_incoming_answer_short_circuits_a_call(cluster, build, make_answer, expected):
    log, cli, spy = build(incoming=[lambda log: Recording("gate", log, make_answer),
                                    lambda log: Recording("never", log)])
    request = cli.svc.do(value=1).call()
    cluster.deliver()
    assert names(log) == ["gate"]  # neither the next middleware nor the handler ran
    assert answer_of(spy) == expected
    assert spy.collect()[0].headers["request_id"] == request.request_id


def test_incoming_answer_to_a_cast_stops_without_sending(cluster, build):
    log, cli, spy = build(incoming=[
        lambda log: Recording("gate", log, lambda m: messages.Response.create_by_request(m, {}))])
    cli.svc.do(value=1).cast()
    cluster.deliver()
    assert names(log) == ["gate"]
    assert spy.collect() == []
    assert cluster.dead_letters("svc_queue") == []


@pytest.mark.parametrize("returned", [
    None, {"a": 1}, "text", messages.IncomingNotification({}, {}, {}),
    # a call turned into a cast would leave its caller without an answer
    messages.IncomingRequestCast({"destination": "svc.do"}, {}, {"value": 1}),
])
def test_incoming_middleware_returning_anything_else_is_an_error(cluster, build, returned):
    log, cli, spy = build(incoming=[lambda log: Recording("bad", log, lambda m: returned)])
    cli.svc.do(value=1).call()
    cluster.deliver()  # the caller got an Error: not a test failure
    assert [failure.answered for failure in cluster.failures] == [True]
    assert isinstance(cluster.failures[0].exception, exceptions.WrongResponse)
    assert names(log) == ["bad"]
    kind, payload = answer_of(spy)
    assert kind == "error"
    assert payload["class"] == "tavrida.exceptions.WrongResponse"
    assert "Recording" in payload["message"]


def test_exception_in_incoming_middleware_becomes_an_error(cluster, build):
    def explode(message):
        raise PermissionError("no entry")

    log, cli, spy = build(incoming=[lambda log: Recording("guard", log, explode)])
    cli.svc.do(value=1).call()
    cluster.deliver()  # the caller got an Error: not a test failure
    assert [failure.answered for failure in cluster.failures] == [True]
    assert names(log) == ["guard"]
    assert answer_of(spy) == ("error", {"class": "builtins.PermissionError",
                                        "name": "PermissionError", "message": "no entry",
                                        "code": 1000})


def test_outgoing_middlewares_see_the_response_in_order(cluster, build):
    def stamp(tag):
        def add(message):
            message.payload.setdefault("stamps", []).append(tag)
            return message
        return add

    log, cli, spy = build(outgoing=[lambda log: Recording("out1", log, stamp(1)),
                                    lambda log: Recording("out2", log, stamp(2))],
                          result={"ok": True})
    cli.svc.do(value=1).call()
    cluster.deliver()
    assert names(log) == ["handler", "out1", "out2"]
    assert isinstance(log[1][1], messages.Response)
    assert answer_of(spy) == ("response", {"ok": True, "stamps": [1, 2]})


def test_outgoing_middlewares_see_the_error(cluster, build):
    log, cli, spy = build(outgoing=[lambda log: Recording("out", log)],
                          result=KeyError("missing"))
    cli.svc.do(value=1).call()
    cluster.deliver()  # the caller got an Error: not a test failure
    assert [failure.answered for failure in cluster.failures] == [True]
    assert names(log) == ["handler", "out"]
    assert isinstance(log[1][1], messages.Error)
    kind, payload = answer_of(spy)
    assert (kind, payload["name"]) == ("error", "KeyError")


def test_outgoing_middleware_must_return_the_same_kind(cluster, build):
    def to_error(message):
        if isinstance(message, messages.Error):
            return message
        return messages.Error(message.headers, message.context, ValueError("swapped"))

    log, cli, spy = build(outgoing=[lambda log: Recording("swap", log, to_error)],
                          result={"ok": True})
    cli.svc.do(value=1).call()
    cluster.deliver()  # the caller got an Error: not a test failure
    assert [failure.answered for failure in cluster.failures] == [True]
    assert isinstance(cluster.failures[0].exception, exceptions.WrongResponse)
    kind, payload = answer_of(spy)
    assert kind == "error"
    assert "outgoing middleware Recording returned" in payload["message"]


def test_outgoing_middlewares_are_not_run_for_casts(cluster, build):
    log, cli, spy = build(outgoing=[lambda log: Recording("out", log)], result={"ok": True})
    cli.svc.do(value=1).cast()
    cluster.deliver()
    assert names(log) == ["handler"]


def test_get_discovery_defaults_to_an_empty_local_discovery():
    @dispatcher.rpc_service("lonely")
    class Lonely(service.ServiceController):
        pass

    disc = Lonely.get_discovery()
    assert isinstance(disc, discovery.LocalDiscovery)
    assert disc is Lonely.get_discovery()
    assert disc.get_all_exchanges() == {"remote": {}, "remote_publisher": {},
                                        "local_publisher": {}}


def test_discovery_is_per_class():
    @dispatcher.rpc_service("one")
    class One(service.ServiceController):
        pass

    @dispatcher.rpc_service("two")
    class Two(service.ServiceController):
        pass

    disc = discovery.LocalDiscovery()
    One.set_discovery(disc)
    assert One.get_discovery() is disc
    assert Two.get_discovery() is not disc


def test_set_discovery_refuses_other_objects():
    @dispatcher.rpc_service("svc")
    class Svc(service.ServiceController):
        pass

    with pytest.raises(exceptions.IncorrectAMQPConfig) as info:
        Svc.set_discovery({"svc": "exchange"})
    assert "AbstractDiscovery" in str(info.value)


def test_send_heartbeat_from_a_handler(cluster):
    beats = []

    @dispatcher.rpc_service("slow")
    class Slow(service.ServiceController):
        @dispatcher.rpc_method(service="slow", method="work")
        def work(self, request, proxy):
            self.send_heartbeat()
            beats.append(True)

    cluster.add_server([Slow])
    disc = discovery.LocalDiscovery()
    disc.register_remote_service("slow", "slow_exchange")
    cluster.client(disc).slow.work().cast()
    cluster.deliver()
    assert beats == [True]


def test_exception_in_outgoing_middleware_still_answers_the_call(cluster, build):
    def explode(message):
        raise RuntimeError("outgoing exploded")

    log, cli, spy = build(outgoing=[lambda log: Recording("out", log, explode)],
                          result={"ok": True})
    cli.svc.do(value=1).call()
    cluster.deliver()  # the caller got an Error: not a test failure
    assert [failure.answered for failure in cluster.failures] == [True]
    assert answer_of(spy) == ("error", {"class": "builtins.RuntimeError",
                                        "name": "RuntimeError", "message": "outgoing exploded",
                                        "code": 1000})
    assert cluster.dead_letters("svc_queue") == []


def test_base_middleware_passes_the_message_on(cluster, build):
    log, cli, spy = build(incoming=[lambda log: middleware.Middleware()],
                          outgoing=[lambda log: middleware.Middleware()], result={"ok": 1})
    cli.svc.do(value=1).call()
    cluster.deliver()
    assert names(log) == ["handler"]
    assert answer_of(spy) == ("response", {"ok": 1})


def test_outgoing_middlewares_do_not_see_proxy_calls(cluster):
    seen = []

    class Watch(middleware.Middleware):
        def process(self, message):
            seen.append(type(message).__name__)
            return message

    @dispatcher.rpc_service("caller")
    class Caller(service.ServiceController):
        def __init__(self, postprocessor):
            super().__init__(postprocessor)
            self.add_outgoing_middleware(Watch())

        @dispatcher.rpc_method(service="caller", method="go")
        def go(self, request, proxy):
            proxy.other.work().call()
            proxy.other.work().cast()

    disc = discovery.LocalDiscovery()
    disc.register_remote_service("other", "other_exchange")
    disc.register_remote_service("client", "client_exchange")
    Caller.set_discovery(disc)
    cluster.add_server([Caller])
    cli_disc = discovery.LocalDiscovery()
    cli_disc.register_remote_service("caller", "caller_exchange")
    cluster.client(cli_disc).caller.go().call()
    cluster.deliver()
    assert len(cluster.sent_by("caller").requests) == 2
    assert seen == ["Response"]  # only the answer to the client's call

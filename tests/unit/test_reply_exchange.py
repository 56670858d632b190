"""Answers to callers no discovery knows: the ``x-tavrida-reply-exchange`` header.

A 2.0 call names the exchange its answers go to; a 2.0 service uses it
when its discovery does not know the caller (discovery wins when it does).
The header describes one call: it is never copied into another message.
"""

from __future__ import annotations

import json

import pytest

from tavrida import discovery, dispatcher, service

REPLY = "x-tavrida-reply-exchange"  # the wire contract, spelled out


@pytest.fixture
def echo(cluster):
    """Service ``echo`` on ``echo_exchange``; its discovery knows only ``known``."""
    seen = []

    @dispatcher.rpc_service("echo")
    class Echo(service.ServiceController):
        @dispatcher.rpc_method(service="echo", method="say")
        def say(self, request, proxy, text):
            seen.append(request)
            proxy.other.note(text=text).call()  # a call of its own: a header of its own
            return {"said": text}

        @dispatcher.rpc_method(service="echo", method="strict")
        def strict(self, request, proxy, n):
            return {"n": n}

        @dispatcher.rpc_response_method(service="other", method="note")
        def on_note(self, response, proxy):
            pass

    disc = discovery.LocalDiscovery()
    disc.register_remote_service("known", "known_exchange")
    disc.register_remote_service("other", "other_exchange")
    Echo.set_discovery(disc)
    cluster.add_server([Echo], queue_name="echo_queue", exchange_name="echo_exchange")
    return seen


def call(broker, reply_to, method="say", body=None, **extra):
    headers = broker.headers(f"echo.{method}", reply_to=reply_to, source=f"{reply_to}.x",
                             **extra)
    broker.publish("echo_exchange", f"echo.{method}", body or broker.body({"text": "hi"}),
                   headers)
    return headers


def test_an_unknown_caller_is_answered_on_the_exchange_its_call_names(cluster, broker, echo):
    spy = broker.spy("script_replies")
    headers = call(broker, "script", **{REPLY: "script_replies"})
    cluster.deliver()
    (answer,) = spy.collect()
    assert answer.routing_key == "script"
    assert answer.headers["request_id"] == headers["request_id"]
    assert json.loads(answer.body)["payload"] == {"said": "hi"}
    # an answer names no reply exchange; the handler saw the header on its request
    assert REPLY not in answer.headers
    assert echo[0].reply_exchange == "script_replies"
    assert broker.dead("echo_queue") == []


def test_discovery_wins_over_the_header(cluster, broker, echo):
    named, registered = broker.spy("elsewhere"), broker.spy("known_exchange")
    call(broker, "known", **{REPLY: "elsewhere"})
    cluster.deliver()
    assert named.collect() == []
    (answer,) = registered.collect()
    assert answer.routing_key == "known"


def test_without_header_or_discovery_the_call_is_dead_lettered_as_before(cluster, broker,
                                                                         echo):
    call(broker, "script")
    cluster.deliver(raise_errors=False)
    ((dead_headers, _),) = broker.dead("echo_queue")
    assert "answer not sent" in dead_headers["x-tavrida-dead-reason"]
    assert "script" in dead_headers["x-tavrida-dead-reason"]


def test_a_bad_call_from_an_unknown_caller_gets_its_error_there(cluster, broker, echo):
    spy = broker.spy("script_replies")
    call(broker, "script", method="strict", body=broker.body({"wrong": 1}),
         **{REPLY: "script_replies"})
    call(broker, "script", body=b"{not json", **{REPLY: "script_replies"})
    cluster.deliver(raise_errors=False)
    errors = spy.collect()
    assert [e.headers["message_type"] for e in errors] == ["error", "error"]
    reasons = [json.loads(e.body)["payload"]["message"] for e in errors]
    assert any("lacks required parameter(s) n" in reason for reason in reasons)
    assert any("body is not JSON" in reason for reason in reasons)
    assert broker.dead("echo_queue") == []


def test_a_reply_exchange_that_does_not_exist_dead_letters_the_call_once(cluster, broker,
                                                                          echo):
    call(broker, "script", **{REPLY: "nowhere"})
    cluster.deliver(raise_errors=False)
    assert len(echo) == 1  # the handler ran once: no retry that would run it again
    ((dead_headers, _),) = broker.dead("echo_queue")
    assert "answer not sent" in dead_headers["x-tavrida-dead-reason"]
    assert "nowhere" in dead_headers["x-tavrida-dead-reason"]


def test_the_header_is_not_carried_into_the_handlers_own_calls(cluster, broker, echo):
    spy = broker.spy("other_exchange")
    broker.spy("script_replies")
    call(broker, "script", **{REPLY: "script_replies", "x-user": "kept"})
    cluster.deliver(raise_errors=False)
    (request,) = spy.collect()
    assert request.headers["reply_to"] == "echo"
    assert request.headers[REPLY] == "echo_exchange"  # echo's own server exchange
    assert request.headers["x-user"] == "kept"


def test_casts_and_notifications_name_no_reply_exchange(cluster, broker):
    @dispatcher.rpc_service("caster")
    class Caster(service.ServiceController):
        @dispatcher.rpc_method(service="caster", method="go")
        def go(self, request, proxy):
            proxy.echo.say(text="x").cast()
            proxy.publish(event=1)

    disc = discovery.LocalDiscovery()
    disc.register_remote_service("echo", "echo_exchange")
    disc.register_local_publisher("caster", "caster_events")
    Caster.set_discovery(disc)
    cluster.add_server([Caster], queue_name="caster_queue", exchange_name="caster_exchange")
    spy = broker.spy("echo_exchange", "caster_events")
    cli_disc = discovery.LocalDiscovery()
    cli_disc.register_remote_service("caster", "caster_exchange")
    cluster.client(cli_disc, source="cli").caster.go().cast()
    cluster.deliver()
    sent = spy.collect()
    assert sorted(d.headers["message_type"] for d in sent) == ["notification", "request"]
    assert all(REPLY not in d.headers for d in sent)


def test_two_services_that_do_not_know_each_other_talk(cluster):
    """A handler's call and its answer, with no discovery entry for the caller."""
    answers = []

    @dispatcher.rpc_service("asker")
    class Asker(service.ServiceController):
        @dispatcher.rpc_method(service="asker", method="start")
        def start(self, request, proxy):
            proxy.teller.tell(q="?").call()

        @dispatcher.rpc_response_method(service="teller", method="tell")
        def on_tell(self, response, proxy, a):
            answers.append(a)

    @dispatcher.rpc_service("teller")
    class Teller(service.ServiceController):
        @dispatcher.rpc_method(service="teller", method="tell")
        def tell(self, request, proxy, q):
            return {"a": q + "!"}

    asker_disc = discovery.LocalDiscovery()
    asker_disc.register_remote_service("teller", "teller_exchange")
    Asker.set_discovery(asker_disc)
    Teller.set_discovery(discovery.LocalDiscovery())  # knows nobody
    cluster.add_server([Asker], queue_name="asker_queue", exchange_name="asker_exchange")
    cluster.add_server([Teller], queue_name="teller_queue", exchange_name="teller_exchange")
    cli_disc = discovery.LocalDiscovery()
    cli_disc.register_remote_service("asker", "asker_exchange")
    cluster.client(cli_disc, source="cli").asker.start().cast()
    cluster.deliver()
    assert answers == ["?!"]


def test_a_client_in_no_discovery_waits_on_the_default_reply_exchange(cluster, echo):
    disc = discovery.LocalDiscovery()
    disc.register_remote_service("echo", "echo_exchange")
    cli = cluster.client(disc, source="script")
    assert cli.sender.reply_exchange == "tavrida.replies"
    disc.register_remote_service("known", "known_exchange")
    assert cluster.client(disc, source="known").sender.reply_exchange == "known_exchange"


def test_transfer_carries_the_first_callers_reply_exchange(cluster, broker):
    @dispatcher.rpc_service("front")
    class Front(service.ServiceController):
        @dispatcher.rpc_method(service="front", method="forward")
        def forward(self, request, proxy, item):
            proxy.back.work().transfer(request)

    @dispatcher.rpc_service("back")
    class Back(service.ServiceController):
        @dispatcher.rpc_method(service="back", method="work")
        def work(self, request, proxy, item):
            return {"done": item}

    front_disc = discovery.LocalDiscovery()
    front_disc.register_remote_service("back", "back_exchange")
    front_disc.register_remote_service("script", "script_replies")  # front knows the caller
    Front.set_discovery(front_disc)
    Back.set_discovery(discovery.LocalDiscovery())  # back does not
    cluster.add_server([Front], queue_name="front_queue", exchange_name="front_exchange")
    cluster.add_server([Back], queue_name="back_queue", exchange_name="back_exchange")
    spy = broker.spy("script_replies")
    headers = broker.headers("front.forward", reply_to="script", source="script.x",
                             **{REPLY: "script_replies"})
    broker.publish("front_exchange", "front.forward", broker.body({"item": 7}), headers)
    cluster.deliver()
    # exactly one answer, the final service's: the forwarder does not answer too
    (answer,) = spy.collect()
    assert answer.headers["source"] == "back.work"
    assert json.loads(answer.body)["payload"] == {"done": 7}
    assert answer.headers["request_id"] == headers["request_id"]

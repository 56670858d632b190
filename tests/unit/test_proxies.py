"""Proxies: what ``proxy.<service>.<method>(...).call()/cast()`` and ``publish`` send."""

from __future__ import annotations

import json

import pytest

from tavrida import client, discovery, dispatcher, exceptions, messages, proxies, service
from tavrida.sender import Sender


@pytest.fixture
def setup(broker):
    """A proxy speaking for ``svc.method`` with a context, a correlation id and a header,
    and a spy on every exchange its discovery knows."""
    disc = discovery.LocalDiscovery()
    disc.register_remote_service("remote", "remote_exchange")
    disc.register_remote_service("svc", "svc_exchange")
    disc.register_local_publisher("svc", "svc_notifications")
    spy = broker.spy("remote_exchange", "svc_exchange", "svc_notifications")
    sender = Sender(broker.open_transport(), disc)
    proxy = proxies.RPCProxy(sender, "svc.method", {"ctx": 1}, "corr-1", {"x-h": "v"})
    return proxy, spy, sender


def only(spy):
    (delivery,) = spy.collect()
    return delivery, json.loads(delivery.body)


def test_call_sends_a_request_answered_to_the_callers_service(setup):
    proxy, spy, _ = setup
    request = proxy.remote.work(a=1).call()
    assert isinstance(request, messages.Request)
    delivery, body = only(spy)
    assert (delivery.exchange, delivery.routing_key) == ("remote_exchange", "remote.work")
    assert body == {"payload": {"a": 1}, "context": {"ctx": 1}}
    headers = delivery.headers
    assert headers["message_type"] == "request"
    assert headers["source"] == "svc.method"
    assert headers["destination"] == "remote.work"
    assert headers["reply_to"] == "svc"
    assert headers["correlation_id"] == "corr-1"
    assert headers["request_id"] == request.request_id
    assert headers["x-h"] == "v"


def test_call_arguments_override_the_proxy_defaults(setup):
    proxy, spy, _ = setup
    proxy.remote.work(a=1).call(correlation_id="corr-2", context={"other": 2},
                                reply_to="svc.answers", source="svc.elsewhere")
    delivery, body = only(spy)
    assert body["context"] == {"other": 2}
    assert delivery.headers["correlation_id"] == "corr-2"
    assert delivery.headers["reply_to"] == "svc.answers"
    assert delivery.headers["source"] == "svc.elsewhere"


def test_cast_expects_no_answer(setup):
    proxy, spy, _ = setup
    request = proxy.remote.work(a=1).cast(correlation_id="corr-3")
    delivery, body = only(spy)
    assert delivery.headers["reply_to"] == ""
    assert delivery.headers["correlation_id"] == "corr-3"
    assert body["payload"] == {"a": 1}
    assert request.reply_to.to_routing_key() == ""


def test_each_request_gets_its_own_request_id(setup):
    proxy, spy, _ = setup
    proxy.remote.work().cast()
    proxy.remote.work().cast()
    first, second = spy.collect()
    assert first.headers["request_id"] != second.headers["request_id"]
    assert first.headers["correlation_id"] == second.headers["correlation_id"] == "corr-1"


def test_transfer_forwards_payload_correlation_id_and_reply_to(setup):
    proxy, spy, _ = setup
    original = messages.IncomingRequestCall(
        {"correlation_id": "first", "request_id": "r" * 32, "message_id": "m" * 32,
         "reply_to": "caller", "source": "caller.x", "destination": "svc.method"},
        {"c": 1}, {"a": 1, "b": 2})
    proxy.remote.work(b=3).transfer(original)
    delivery, body = only(spy)
    assert body == {"payload": {"a": 1, "b": 3}, "context": {"c": 1}}
    assert delivery.headers["correlation_id"] == "first"
    assert delivery.headers["reply_to"] == "caller"
    assert delivery.headers["destination"] == "remote.work"
    # still the first caller's request: its answer must pair with it
    assert delivery.headers["request_id"] == "r" * 32
    assert delivery.headers["message_id"] != "m" * 32


def test_publish_goes_to_the_local_publisher_exchange(setup):
    proxy, spy, _ = setup
    notification = proxy.publish(event="happened")
    assert isinstance(notification, messages.Notification)
    delivery, body = only(spy)
    assert (delivery.exchange, delivery.routing_key) == ("svc_notifications", "svc.method")
    assert body == {"payload": {"event": "happened"}, "context": {"ctx": 1}}
    headers = delivery.headers
    assert headers["message_type"] == "notification"
    assert (headers["source"], headers["destination"], headers["reply_to"]) == (
        "svc.method", "", "")
    assert headers["correlation_id"] == "corr-1"
    assert headers["x-h"] == "v"


def test_publish_without_a_local_publisher_is_refused(broker):
    sender = Sender(broker.open_transport(), discovery.LocalDiscovery())
    proxy = proxies.RPCProxy(sender, "quiet.method")
    with pytest.raises(exceptions.PublisherEndpointNotFound) as info:
        proxy.publish(event=1)
    assert "quiet" in str(info.value)


def test_calling_an_unregistered_service_is_refused_naming_it(setup):
    proxy, spy, _ = setup
    with pytest.raises(exceptions.UnableToDiscover) as info:
        proxy.unknown_service.work().call()
    assert "unknown_service" in str(info.value)
    with pytest.raises(exceptions.UnableToDiscover):
        proxy.unknown_service.work().cast()
    assert spy.collect() == []


def test_payload_that_is_not_json_is_refused(setup):
    proxy, spy, _ = setup
    with pytest.raises(exceptions.IncorrectOutgoingMessage):
        proxy.remote.work(when=object()).cast()
    assert spy.collect() == []


@pytest.mark.parametrize("headers", [{"correlation_id": "x"}, {"source": "a.b", "ok": 1},
                                     {"message_type": "error", "reply_to": "a"}])
def test_tavrida_headers_are_reserved(setup, headers):
    proxy, _, sender = setup
    with pytest.raises(exceptions.ForbiddenHeaders) as info:
        proxies.RPCProxy(sender, "svc.method", headers=headers)
    for name in set(headers) & set(messages.TAVRIDA_HEADERS):
        assert name in str(info.value)
    with pytest.raises(exceptions.ForbiddenHeaders):
        proxy.add_headers(headers)


def test_add_headers_applies_to_later_messages(setup):
    proxy, spy, _ = setup
    proxy.add_headers({"x-more": "yes"})
    proxy.remote.work().cast()
    delivery, _ = only(spy)
    assert delivery.headers["x-more"] == "yes"
    assert delivery.headers["x-h"] == "v"


def test_dunder_lookups_are_not_service_names(setup):
    proxy, _, _ = setup
    with pytest.raises(AttributeError):
        proxy.__wrapped__  # noqa: B018
    with pytest.raises(AttributeError):
        proxy.remote.__wrapped__  # noqa: B018


def test_blocking_call_is_refused_from_a_handler_proxy(setup):
    proxy, spy, _ = setup
    with pytest.raises(exceptions.TavridaError) as info:
        proxy.remote.work().call(timeout=1)
    assert "RPCClient" in str(info.value)
    assert spy.collect() == []


def test_1_0_spelling_of_the_call_proxy():
    assert proxies.RCPCallProxy is proxies.RPCCallProxy


def test_handler_proxy_carries_the_handled_message_on(cluster, broker):
    """In a handler the proxy speaks for the handler's entry point and keeps the chain."""
    @dispatcher.rpc_service("front")
    class Front(service.ServiceController):
        @dispatcher.rpc_method(service="front", method="enter")
        def enter(self, request, proxy, item):
            proxy.back.store(item=item).call()
            proxy.back.log(item=item).cast()

    disc = discovery.LocalDiscovery()
    disc.register_remote_service("back", "back_exchange")
    Front.set_discovery(disc)
    spy = broker.spy("back_exchange")
    cluster.add_server([Front])
    cli_disc = discovery.LocalDiscovery()
    cli_disc.register_remote_service("front", "front_exchange")
    cluster.client(cli_disc, headers={"x-user": "ann"}).front.enter(item=5).cast(
        correlation_id="corr-5")
    cluster.deliver()
    call, cast = spy.collect()
    for delivery in (call, cast):
        assert delivery.headers["source"] == "front.enter"
        assert delivery.headers["correlation_id"] == "corr-5"
        assert delivery.headers["x-user"] == "ann"
        assert json.loads(delivery.body) == {"payload": {"item": 5}, "context": {"item": 5}}
    assert call.headers["reply_to"] == "front"
    assert cast.headers["reply_to"] == ""


@pytest.fixture
def relay(cluster, broker):
    """``front.forward`` transfers its request to ``back.work``; back answers the caller."""
    @dispatcher.rpc_service("front")
    class Front(service.ServiceController):
        @dispatcher.rpc_method(service="front", method="forward")
        def forward(self, request, proxy, item):
            proxy.back.work(hop="front").transfer(request)

    @dispatcher.rpc_service("back")
    class Back(service.ServiceController):
        @dispatcher.rpc_method(service="back", method="work")
        def work(self, request, proxy, item, hop):
            return {"done": item, "via": hop}

    front_disc = discovery.LocalDiscovery()
    front_disc.register_remote_service("back", "back_exchange")
    Front.set_discovery(front_disc)
    back_disc = discovery.LocalDiscovery()
    back_disc.register_remote_service("client", "client_exchange")
    Back.set_discovery(back_disc)
    cli_disc = discovery.LocalDiscovery()
    cli_disc.register_remote_service("front", "front_exchange")
    cli_disc.register_remote_service("client", "client_exchange")
    return Front, Back, cli_disc


def test_transferred_request_is_answered_to_the_first_caller(cluster, broker, relay):
    front, back, cli_disc = relay
    spy = broker.spy("client_exchange")
    cluster.add_server([front])
    cluster.add_server([back])
    request = cluster.client(cli_disc).front.forward(item=3).call(correlation_id="t-1")
    cluster.deliver()
    (answer,) = spy.collect()
    assert json.loads(answer.body)["payload"] == {"done": 3, "via": "front"}
    assert answer.headers["correlation_id"] == "t-1"
    assert answer.headers["destination"] == "client"
    # the first caller pairs the answer with its request by request_id
    assert answer.headers["request_id"] == request.request_id


def test_blocking_call_through_a_transfer_returns_the_final_answer(cluster, relay):
    import threading

    front, back, cli_disc = relay
    servers = [cluster.add_server([front]), cluster.add_server([back])]
    threads = [threading.Thread(target=srv.run) for srv in servers]
    for thread in threads:
        thread.start()
    try:
        with client.RPCClient(cluster.config, cli_disc, source="client") as cli:
            assert cli.front.forward(item=4).call(timeout=5) == {"done": 4, "via": "front"}
    finally:
        for srv in servers:
            srv.stop()
        for thread in threads:
            thread.join(5)


def test_service_names_a_service_like_an_attribute_would(setup):
    """``proxy.service(name[, method])`` is ``proxy.<name>[.<method>]``, for any name
    (``publish`` too) and typed as the client's attributes are."""
    proxy, spy, _ = setup
    proxy.service("remote").work(a=1).cast()
    proxy.service("remote", "work")(a=2).cast()
    assert [(d.routing_key, json.loads(d.body)["payload"]) for d in spy.collect()] == [
        ("remote.work", {"a": 1}), ("remote.work", {"a": 2})]

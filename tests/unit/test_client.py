"""RPCClient: calling services from a program that is not a service (both 1.0 forms)."""

from __future__ import annotations

import json

import pytest

from tavrida import client, discovery, dispatcher, exceptions, service


@pytest.fixture
def hello(cluster):
    """Service test_hello on test_exchange; answers to ``client_app`` go to client_exchange."""
    got = []

    @dispatcher.rpc_service("test_hello")
    class Hello(service.ServiceController):
        @dispatcher.rpc_method(service="test_hello", method="hello")
        def handler(self, request, proxy, param):
            got.append((param, request))
            return {"echo": param}

    disc = discovery.LocalDiscovery()
    disc.register_remote_service("client_app", "client_exchange")
    Hello.set_discovery(disc)
    cluster.add_server([Hello], queue_name="test_service", exchange_name="test_exchange")
    return got


@pytest.fixture
def disc():
    disc = discovery.LocalDiscovery()
    disc.register_remote_service(service_name="test_hello", exchange_name="test_exchange")
    return disc


def test_service_attribute_form_casts(cluster, hello, disc):
    with client.RPCClient(config=cluster.config, discovery=disc, source="client_app") as cli:
        request = cli.test_hello.hello(param=123).cast(correlation_id="123-456")
        cluster.deliver()
    ((param, received),) = hello
    assert param == 123
    assert received.correlation_id == "123-456"
    assert received.request_id == request.request_id
    assert received.source.to_routing_key() == "client_app"
    assert received.reply_to.to_routing_key() == ""


def test_service_argument_form_casts(cluster, hello, disc):
    with client.RPCClient(config=cluster.config, service="test_hello", discovery=disc,
                          source="client_app") as cli:
        cli.hello(param=123).cast()
        cluster.deliver()
    ((param, received),) = hello
    assert param == 123
    assert received.destination == "test_hello.hello"
    assert len(received.correlation_id) == 36  # generated, as 1.0 spells it


def test_client_takes_a_url(cluster, hello, disc):
    with client.RPCClient(f"memory://{cluster.name}", disc, source="client_app") as cli:
        cli.test_hello.hello(param="by url").cast()
        cluster.deliver()
    assert [param for param, _ in hello] == ["by url"]


@pytest.mark.parametrize("service_name", [None, "test_hello"])
def test_call_gets_its_answer_on_the_sources_exchange(cluster, broker, hello, disc,
                                                      service_name):
    spy = broker.spy("client_exchange")
    cli = cluster.client(disc, source="client_app", service=service_name)
    method = cli.hello if service_name else cli.test_hello.hello
    request = method(param=7).call(correlation_id="c-7")
    cluster.deliver()
    ((param, received),) = hello
    assert received.reply_to.to_routing_key() == "client_app"
    (answer,) = spy.collect()
    assert answer.routing_key == "client_app"
    assert answer.headers["message_type"] == "response"
    assert answer.headers["request_id"] == request.request_id
    assert answer.headers["correlation_id"] == "c-7"
    assert json.loads(answer.body)["payload"] == {"echo": 7}


def test_source_with_a_method_answers_to_its_service(cluster, broker, hello, disc):
    spy = broker.spy("client_exchange")
    cli = cluster.client(disc, source="client_app.script")
    cli.test_hello.hello(param=1).call()
    cluster.deliver()
    ((_, received),) = hello
    assert received.source == "client_app.script"
    assert received.reply_to.to_routing_key() == "client_app"
    assert len(spy.collect()) == 1


def test_headers_and_context_are_sent(cluster, broker, hello, disc):
    spy = broker.spy("test_exchange")
    cli = cluster.client(disc, source="client_app", headers={"x-tenant": "acme"},
                         context={"trace": "t-1"})
    cli.add_headers({"x-extra": 2})
    cli.test_hello.hello(param=1).cast()
    cluster.deliver()
    ((_, received),) = hello
    assert received.headers["x-tenant"] == "acme"
    assert received.headers["x-extra"] == 2
    assert received.context == {"trace": "t-1", "param": 1}
    (delivery,) = spy.collect()
    assert delivery.headers["x-tenant"] == "acme"
    assert json.loads(delivery.body)["context"] == {"trace": "t-1"}


@pytest.mark.parametrize("headers", [{"correlation_id": "mine"}, {"reply_to": "x", "ok": 1},
                                     {"message_id": "1", "request_id": "2"}])
def test_reserved_headers_are_refused(cluster, disc, headers):
    with pytest.raises(exceptions.ForbiddenHeaders) as info:
        cluster.client(disc, source="client_app", headers=headers)
    for name in headers:
        if name != "ok":
            assert name in str(info.value)
    cli = cluster.client(disc, source="client_app")
    with pytest.raises(exceptions.ForbiddenHeaders):
        cli.add_headers(headers)


def test_unregistered_service_is_refused_naming_it(cluster, hello, disc):
    cli = cluster.client(disc, source="client_app")
    with pytest.raises(exceptions.UnableToDiscover) as info:
        cli.test_world.world(param=1).cast()
    assert "test_world" in str(info.value)
    cli = cluster.client(disc, source="client_app", service="test_world")
    with pytest.raises(exceptions.UnableToDiscover):
        cli.world(param=1).call()
    cluster.deliver()
    assert hello == []


def test_publish_needs_a_local_publisher(cluster, disc):
    cli = cluster.client(disc, source="client_app")
    with pytest.raises(exceptions.PublisherEndpointNotFound) as info:
        cli.publish(event=1)
    assert "client_app" in str(info.value)


def test_publish_reaches_subscribers(cluster):
    got = []

    @dispatcher.rpc_service("listener")
    class Listener(service.ServiceController):
        @dispatcher.subscription_method(service="feed", method="news")
        def on_news(self, notification, proxy, headline):
            got.append((headline, notification.correlation_id))

    listener_disc = discovery.LocalDiscovery()
    listener_disc.register_remote_publisher("feed", "feed_notifications")
    Listener.set_discovery(listener_disc)
    cluster.add_server([Listener])
    disc = discovery.LocalDiscovery()
    disc.register_local_publisher("feed", "feed_notifications")
    cluster.client(disc, source="feed.news").publish(correlation_id="n-1", headline="hi")
    cluster.deliver()
    assert got == [("hi", "n-1")]


def test_private_names_are_not_services(cluster, disc):
    cli = cluster.client(disc, source="client_app")
    with pytest.raises(AttributeError):
        cli._anything  # noqa: B018


def test_closed_client_cannot_send(cluster, hello, disc):
    cli = client.RPCClient(cluster.config, disc, source="client_app")
    cli.close()
    assert cli.transport.closed
    with pytest.raises(exceptions.PublishFailed):
        cli.test_hello.hello(param=1).cast()


def test_call_without_a_source_is_refused_not_sent_as_a_cast(cluster, broker, hello, disc):
    """A call needs somewhere to send the answer: without a source (and no reply_to) it
    would go out with an empty reply_to, i.e. as a cast whose answer never comes."""
    spy = broker.spy("test_exchange")
    cli = cluster.client(disc, source="")
    with pytest.raises(exceptions.IncorrectOutgoingMessage) as info:
        cli.test_hello.hello(param=1).call()
    assert "reply_to" in str(info.value)
    assert spy.collect() == []
    # with an explicit reply_to it is a call
    cli.test_hello.hello(param=1).call(reply_to="client_app")
    cluster.deliver()
    (delivery,) = spy.collect()
    assert delivery.headers["reply_to"] == "client_app"


def test_a_service_is_not_callable_and_a_method_has_no_attributes(cluster, disc):
    """``cli.<name>`` is typed as one class for both forms; the wrong use still fails."""
    cli = cluster.client(disc, source="client_app")
    with pytest.raises(TypeError, match="test_hello is a service"):
        cli.test_hello(param=1)
    one = cluster.client(disc, source="client_app", service="test_hello")
    with pytest.raises(AttributeError, match="test_hello.hello is a method"):
        one.hello.other  # noqa: B018



def test_a_kept_proxy_sends_headers_added_after_it_was_first_used(cluster, hello, disc):
    # cli.<service>.<method> is kept on first use (no __getattr__ the next time): it
    # must still see what changes on the client afterwards, and send each call afresh.
    with client.RPCClient(config=cluster.config, discovery=disc, source="client_app") as cli:
        assert cli.test_hello is cli.test_hello
        assert cli.test_hello.hello is cli.test_hello.hello
        first = cli.test_hello.hello(param=1).cast()
        cli.add_headers({"x-tenant": "t1"})
        second = cli.test_hello.hello(param=2).cast()
        cluster.deliver()
    (p1, r1), (p2, r2) = hello
    assert (p1, p2) == (1, 2)
    assert first.request_id != second.request_id
    assert "x-tenant" not in r1.headers
    assert r2.headers["x-tenant"] == "t1"

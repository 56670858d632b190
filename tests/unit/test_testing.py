"""The test helpers users get: MemoryCluster.deliver, captures, dead letters."""

from __future__ import annotations

import pytest

from tavrida import discovery, dispatcher, service
from tavrida.testing import Capture, HandlerFailed, MemoryCluster
from tavrida.transports.memory import MemoryBroker


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


def test_deliver_reraises_for_calls_too(cluster, fragile):
    fragile.fragile.break_(why="called").call()
    with pytest.raises(HandlerFailed):
        cluster.deliver()
    # ...and the caller still got its Error
    assert [e.payload["message"] for e in cluster.sent_by("fragile").errors] == ["called"]


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

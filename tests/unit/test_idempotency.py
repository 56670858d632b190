"""The idempotency middleware: handlers see each message once."""

import pytest

from tavrida import discovery, dispatcher, idempotency, service

CALLS = []


@dispatcher.rpc_service("once")
class Once(service.ServiceController):

    def __init__(self, postprocessor):
        super().__init__(postprocessor)
        self.dedup = idempotency.IdempotencyMiddleware(max_entries=3)
        self.add_incoming_middleware(self.dedup)

    @dispatcher.rpc_method(service="once", method="count")
    def count(self, request, proxy, n):
        CALLS.append(n)
        return {"n": n, "calls": len(CALLS)}


@pytest.fixture
def setup(cluster):
    CALLS.clear()
    disc = discovery.LocalDiscovery()
    disc.register_remote_service("once", "once_exchange")
    disc.register_remote_service("client", "client_exchange")
    Once.set_discovery(disc)
    srv = cluster.add_server([Once], "once_queue", "once_exchange")
    spy = cluster.broker
    cluster.client(disc, source="client")
    return cluster, srv, spy, disc


def republish(cluster, queue_headers_body):
    """Publish a copy of a captured request: what a redelivery looks like."""
    from tavrida.transports.base import OutgoingEnvelope

    headers, body = queue_headers_body
    transport = cluster.clients[0].transport
    transport.publish(OutgoingEnvelope("once_exchange", headers["destination"], body, headers))


def capture_requests(cluster):
    from tavrida.transports.base import Binding, Topology

    transport = cluster.clients[0].transport
    transport.declare(Topology.build(["once_exchange"], ["spy"],
                                     [Binding("spy", "once_exchange", "#")]))


def test_a_redelivered_cast_reaches_the_handler_once(setup):
    cluster, srv, broker, _ = setup
    capture_requests(cluster)
    cluster.clients[0].once.count(n=1).cast()
    cluster.deliver()
    [copy] = broker.messages("spy")
    republish(cluster, copy)
    republish(cluster, copy)
    cluster.deliver()
    assert CALLS == [1]
    assert srv.controllers[0].dedup.duplicates == 2


def test_a_redelivered_call_gets_the_same_answer_again(setup):
    cluster, srv, broker, _ = setup
    capture_requests(cluster)
    cluster.clients[0].once.count(n=5).call()
    cluster.deliver()
    [copy] = broker.messages("spy")
    republish(cluster, copy)
    cluster.deliver()
    answers = cluster.sent_by("once").responses
    assert CALLS == [5]
    assert [a.payload for a in answers] == [{"n": 5, "calls": 1}] * 2
    assert answers[0].request_id == answers[1].request_id


def test_distinct_messages_all_run_and_memory_is_bounded(setup):
    cluster, srv, _, _ = setup
    for n in range(5):
        cluster.clients[0].once.count(n=n).cast()
    cluster.deliver()
    assert CALLS == [0, 1, 2, 3, 4]
    assert len(srv.controllers[0].dedup._handled) == 3


def test_max_entries_must_be_positive():
    with pytest.raises(ValueError):
        idempotency.IdempotencyMiddleware(max_entries=0)

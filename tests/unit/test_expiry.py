"""A blocking call's request expires with the call: nobody runs it once its caller gave up.

On the in-memory transport (which, like Redis, has no per-message TTL): the
server checks ``x-tavrida-expires-at`` and drops a request that is past it,
logged and acked, never run.
"""

from __future__ import annotations

import logging
import time

import pytest

from tavrida import discovery, dispatcher, exceptions, messages, service
from tavrida.sender import Sender
from tavrida.transports.memory import MemoryTransport

EXPIRES = messages.EXPIRES_AT_HEADER


@pytest.fixture
def svc(cluster, broker):
    """Service ``svc`` (not drained until the test says so) and a client that can block."""
    runs = []

    @dispatcher.rpc_service("svc")
    class Svc(service.ServiceController):
        @dispatcher.rpc_method(service="svc", method="do")
        def do(self, request, proxy, value):
            runs.append(value)
            proxy.other.hop(value=value).cast()
            return {"value": value}

    disc = discovery.LocalDiscovery()
    disc.register_remote_service("client", "client_exchange")
    disc.register_remote_service("svc", "svc_exchange")
    disc.register_remote_service("other", "other_exchange")
    Svc.set_discovery(disc)
    requests = broker.spy("svc_exchange")
    hops = broker.spy("other_exchange")
    cluster.add_server([Svc], "svc_queue", "svc_exchange")
    # A plain connection: its blocking calls do not run the cluster's servers meanwhile.
    cli = cluster.client(disc, source="client", transport=MemoryTransport(cluster.config))
    return runs, cli, requests, hops


def test_a_request_whose_caller_timed_out_is_dropped_not_run(cluster, broker, svc, caplog):
    runs, cli, requests, _ = svc
    began = time.time()
    with pytest.raises(exceptions.CallTimeout):
        cli.svc.do(value=1).call(timeout=0.2)  # nobody drains the server meanwhile
    (sent,) = requests.collect()
    assert began + 0.199 <= sent.headers[EXPIRES] / 1000 <= time.time()  # when it gave up
    caplog.set_level(logging.WARNING, logger="tavrida.server")
    cluster.deliver()
    assert runs == []  # the service came back after the caller gave up: not run
    assert broker.messages("svc_queue") == [] and broker.dead("svc_queue") == []  # acked
    (line,) = [r.getMessage() for r in caplog.records if "caller gave up" in r.getMessage()]
    assert "svc.do" in line and sent.headers["correlation_id"] in line


def test_a_request_still_awaited_runs_and_its_header_goes_no_further(cluster, broker, svc):
    runs, _, _, hops = svc
    broker.publish("svc_exchange", "svc.do", broker.body({"value": 2}),
                   broker.headers("svc.do", **{EXPIRES: int((time.time() + 60) * 1000)}))
    cluster.deliver()
    assert runs == [2]
    (hop,) = hops.collect()
    assert EXPIRES not in hop.headers  # x-tavrida-* headers describe one message only


@pytest.mark.parametrize("value", ["soon", b"\xff", None, [1], float("nan")])
def test_an_unreadable_expiry_is_no_expiry(cluster, broker, svc, value):
    runs, _, _, _ = svc
    broker.publish("svc_exchange", "svc.do", broker.body({"value": 3}),
                   broker.headers("svc.do", **{EXPIRES: value}))
    cluster.deliver()
    assert runs == [3]


@pytest.mark.parametrize("value", [lambda: int((time.time() - 1) * 1000),
                                   lambda: str(int((time.time() - 1) * 1000)),
                                   lambda: str(int((time.time() - 1) * 1000)).encode()])
def test_a_past_expiry_in_any_spelling_drops_the_request(cluster, broker, svc, value):
    runs, _, _, _ = svc
    broker.publish("svc_exchange", "svc.do", broker.body({"value": 4}),
                   broker.headers("svc.do", **{EXPIRES: value()}))
    cluster.deliver()
    assert runs == []


def test_only_blocking_calls_expire(cluster, svc):
    runs, cli, requests, _ = svc
    cli.svc.do(value=5).cast()
    cli.svc.do(value=6).call()  # answered to a response handler, whenever it comes
    assert [EXPIRES in d.headers for d in requests.collect()] == [False, False]


def test_the_envelope_of_an_expiring_request_carries_its_ttl():
    disc = discovery.LocalDiscovery()
    disc.register_remote_service("svc", "svc_exchange")
    sender = Sender(None, disc)
    request = messages.Request({"source": "client", "destination": "svc.do"}, {}, {})
    assert sender.envelope(request).expiration is None
    request.expires_at = time.time() + 30
    envelope = sender.envelope(request)
    assert 29 < envelope.expiration <= 30
    assert envelope.headers[EXPIRES] == int(request.expires_at * 1000)
    request.expires_at = time.time() - 5
    assert sender.envelope(request).expiration == 0
    request.expires_at = float("inf")  # call(timeout=inf): waits for ever, never expires
    envelope = sender.envelope(request)
    assert envelope.expiration is None and EXPIRES not in envelope.headers


def test_late_by_reads_the_header():
    now = 1_000_000.0
    assert messages.late_by({EXPIRES: 999_999_000}, now) == pytest.approx(1.0)
    assert messages.late_by({EXPIRES: 1_000_001_000}, now) is None
    assert messages.late_by({}, now) is None

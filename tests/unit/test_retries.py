"""Retries: a handler asking for one (NackableException) runs again, a bounded number of times.

On the in-memory transport, with real servers: what the handler sees on each
run, what is in ``<queue>.dead`` at the end, what the caller gets, what is
logged, and that a stop neither waits for nor loses a pending retry.
"""

from __future__ import annotations

import logging
import time

import pytest
from test_server import DEAD_REASON, Retry, answers, client_of, serve

from tavrida import exceptions, idempotency, retries, server
from tavrida.config_file import ConfigError, ServiceConfig
from tavrida.testing import HandlerFailed
from tavrida.transports.memory import MemoryTransport

ATTEMPTS = "x-tavrida-attempts"


@pytest.fixture
def poison(cluster):
    """Service ``svc`` whose handlers raise Retry until ``state["ok_from"]`` runs."""
    from tavrida import dispatcher, service

    state = {"runs": [], "ok_from": None}

    @dispatcher.rpc_service("svc")
    class Svc(service.ServiceController):
        @dispatcher.rpc_method(service="svc", method="do")
        def do(self, request, proxy, value):
            state["runs"].append((request.message_id, request.headers.get(ATTEMPTS)))
            if state["ok_from"] is None or len(state["runs"]) < state["ok_from"]:
                raise Retry()
            return {"runs": len(state["runs"])}

    def start(**kwargs):
        kwargs.setdefault("retry_backoff", 0.01)
        srv = serve(cluster, Svc, **kwargs)
        return srv, client_of(cluster, svc="svc_exchange")

    return state, start


def test_a_poison_cast_runs_max_attempts_times_then_is_dead_lettered(cluster, poison,
                                                                      caplog):
    state, start = poison
    srv, cli = start(max_attempts=4)
    caplog.set_level(logging.WARNING, logger="tavrida")
    cli.svc.do(value=1).cast()
    with pytest.raises(HandlerFailed) as info:  # the last run counts as a handler failure
        cluster.deliver()
    assert isinstance(info.value.__cause__, Retry)
    # exactly max_attempts runs of the same message, each told how many came before
    assert [attempts for _, attempts in state["runs"]] == [None, 1, 2, 3]
    assert len({message_id for message_id, _ in state["runs"]}) == 1
    ((headers, body),) = cluster.dead_letters("svc_queue")
    assert headers[ATTEMPTS] == 4
    assert headers[DEAD_REASON] == ("handler do asked for a retry: test_server.Retry: try again "
                                    "(gave up after 4 attempts)")
    # where it was first published, not the default exchange the retries went through
    assert headers["x-tavrida-original-exchange"] == "svc_exchange"
    assert headers["x-tavrida-original-routing-key"] == "svc.do"
    assert headers["x-tavrida-original-queue"] == "svc_queue"
    assert cluster.broker.messages("svc_queue") == []
    assert srv.pending_retries == 0
    # one line per attempt, never one per spin
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 4, [r.getMessage() for r in lines]
    assert "attempt 1 of 4" in lines[0].getMessage()


def test_a_retry_that_succeeds_answers_the_call_once(cluster, broker, poison):
    state, start = poison
    spy = broker.spy("client_exchange")
    start(max_attempts=5)
    state["ok_from"] = 3
    cli = client_of(cluster, svc="svc_exchange")
    cli.svc.do(value=1).call()
    cluster.deliver()
    assert len(state["runs"]) == 3
    assert answers(spy) == [("response", {"runs": 3})]
    assert cluster.dead_letters("svc_queue") == []


def test_a_call_that_never_succeeds_gets_an_error_after_max_attempts(cluster, broker, poison):
    state, start = poison
    spy = broker.spy("client_exchange")
    start(max_attempts=2)
    client_of(cluster, svc="svc_exchange").svc.do(value=1).call()
    cluster.deliver()  # no HandlerFailed: an Error answer told the caller
    assert len(state["runs"]) == 2
    assert isinstance(cluster.failures[-1].exception, Retry) and cluster.failures[-1].answered
    ((kind, payload),) = answers(spy)
    assert (kind, payload["class"]) == ("error", "test_server.Retry")
    assert cluster.dead_letters("svc_queue") == []  # answered: the caller has its error


def test_max_attempts_one_never_retries(cluster, poison):
    state, start = poison
    _, cli = start(max_attempts=1)
    cli.svc.do(value=1).cast()
    with pytest.raises(HandlerFailed):
        cluster.deliver()
    assert len(state["runs"]) == 1
    assert len(cluster.dead_letters("svc_queue")) == 1


def test_retry_backoff_zero_retries_at_once(cluster, poison):
    state, start = poison
    srv, cli = start(max_attempts=3, retry_backoff=0)
    cli.svc.do(value=1).cast()
    with pytest.raises(HandlerFailed):
        cluster.deliver()
    assert len(state["runs"]) == 3
    assert srv.pending_retries == 0


def test_the_idempotency_middleware_lets_retries_through(cluster, poison):
    state, start = poison
    srv, cli = start(max_attempts=5)
    srv.controllers[0].add_incoming_middleware(idempotency.IdempotencyMiddleware())
    state["ok_from"] = 2
    cli.svc.do(value=1).cast()
    cluster.deliver()
    assert len(state["runs"]) == 2  # the retry has the same message_id and still runs


def test_a_waiting_retry_is_in_the_broker_not_the_server(cluster, poison):
    # prefetch_count=1 and a 10 s backoff: the next message is handled at once,
    # the retry waits in the broker's delay queue and runs when its delay is over.
    state, start = poison
    srv, cli = start(max_attempts=5, retry_backoff=10, prefetch_count=1)
    state["ok_from"] = 2
    cli.svc.do(value="retried").cast()
    cli.svc.do(value="next").cast()
    srv.drain(0)
    srv.drain(0)
    assert [attempts for _, attempts in state["runs"]] == [None, None]  # "next" ran too
    assert srv.pending_retries == 0
    assert cluster.broker.messages("svc_queue") == []
    ((headers, body),) = cluster.broker.messages("svc_queue.retry.10000")
    assert headers[ATTEMPTS] == 1 and b'"value":"retried"' in body
    assert cluster.broker.advance(9.9) == 0 and not srv.drain(0)  # not yet due
    assert cluster.broker.advance(0.1) == 1
    srv.drain(0)
    assert [attempts for _, attempts in state["runs"]] == [None, None, 1]
    assert cluster.broker.queue_size("svc_queue.retry.10000") == 0


def test_each_backoff_step_has_its_delay_queue(cluster, poison):
    state, start = poison
    srv, cli = start(max_attempts=5, retry_backoff=0.5, retry_backoff_max=1.5)
    delays = [queue for queue in cluster.broker.queue_names() if ".retry." in queue]
    assert delays == ["svc_queue.retry.500", "svc_queue.retry.1000", "svc_queue.retry.1500"]
    assert [d.name for d in srv.topology().delays] == delays
    cli.svc.do(value=1).cast()
    seen = []
    for _ in range(4):
        srv.drain(0)
        seen.append([q for q in delays if cluster.broker.queue_size(q)])
        cluster.broker.advance(1.5)
    assert seen == [[delays[0]], [delays[1]], [delays[2]], [delays[2]]]


def test_closing_during_a_retry_wait_loses_nothing(cluster, poison):
    state, start = poison
    srv, cli = start(max_attempts=5, retry_backoff=60)
    cli.svc.do(value=1).cast()
    srv.drain(0)
    assert len(state["runs"]) == 1
    began = time.monotonic()
    srv.close()
    assert time.monotonic() - began < 3
    cluster.servers.remove(srv)
    ((headers, _),) = cluster.broker.messages("svc_queue.retry.30000")  # capped at 30 s
    assert headers[ATTEMPTS] == 1
    state["ok_from"] = 2
    start(max_attempts=5, retry_backoff=60)  # a new instance: the broker still holds it
    cluster.deliver()  # moves the broker's clock to the retry's delay
    assert [attempts for _, attempts in state["runs"]] == [None, 1]
    assert cluster.dead_letters("svc_queue") == []
    assert cluster.broker.queue_size("svc_queue.retry.30000") == 0


class _NoDelays(MemoryTransport):
    """A transport that cannot hold delays (as kombu+memory://)."""

    holds_delays = False


def test_without_broker_delays_the_server_holds_the_retry(cluster, poison, caplog):
    state, start = poison
    caplog.set_level(logging.INFO, logger="tavrida.server")
    srv, cli = start(max_attempts=5, retry_backoff=60, transport=_NoDelays(cluster.config))
    assert any("cannot hold retry delays: retries of queue svc_queue wait in this server"
               in r.getMessage() for r in caplog.records)
    assert not [q for q in cluster.broker.queue_names() if ".retry." in q]  # none declared
    cli.svc.do(value=1).cast()
    srv.drain(0)
    assert len(state["runs"]) == 1 and srv.pending_retries == 1
    assert cluster.broker.messages("svc_queue") == []  # held un-acked, not in the queue
    began = time.monotonic()
    srv.close()
    assert time.monotonic() - began < 3
    # the un-acked original went back; the next server runs it (same attempt count)
    ((headers, _),) = cluster.broker.messages("svc_queue")
    assert ATTEMPTS not in headers
    cluster.servers.remove(srv)
    state["ok_from"] = 2
    start(max_attempts=5)
    cluster.deliver()
    assert [attempts for _, attempts in state["runs"]] == [None, None]
    assert cluster.dead_letters("svc_queue") == []


def test_a_deleted_delay_queue_is_declared_again(cluster, poison):
    state, start = poison
    srv, cli = start(max_attempts=3, retry_backoff=1)
    cluster.broker.drop_unroutable = False  # as a broker: a publish to no queue fails
    srv.transport.delete(queues=["svc_queue.retry.1000"])
    state["ok_from"] = 2
    cli.svc.do(value=1).cast()
    cluster.deliver()
    assert [attempts for _, attempts in state["runs"]] == [None, 1]


def test_a_retried_copy_keeps_its_body_and_headers(cluster, broker, poison):
    state, start = poison
    start(max_attempts=2)
    cli = client_of(cluster, svc="svc_exchange")
    cli.add_headers({"tenant": "t1"})
    cli.svc.do(value=7).cast()
    with pytest.raises(HandlerFailed):
        cluster.deliver()
    ((headers, body),) = cluster.dead_letters("svc_queue")
    assert headers["tenant"] == "t1" and headers["destination"] == "svc.do"
    assert b'"value":7' in body


def test_backoff_doubles_up_to_its_cap():
    policy = retries.RetryPolicy(max_attempts=None, backoff=0.5, backoff_max=3)
    assert [policy.delay(n) for n in range(1, 7)] == [0.5, 1, 2, 3, 3, 3]
    assert policy.delay(10 ** 6) == 3  # no overflow
    assert not policy.exhausted(10 ** 6)
    assert retries.RetryPolicy(max_attempts=3).exhausted(3)
    assert retries.RetryPolicy(backoff=0).delay(4) == 0


def test_delay_queues_are_a_bounded_set_one_per_backoff_step():
    assert retries.RetryPolicy().delays_ms() == (500, 1000, 2000, 4000)
    assert retries.RetryPolicy(max_attempts=None).delays_ms() == (
        500, 1000, 2000, 4000, 8000, 16000, 30000)
    assert retries.RetryPolicy(max_attempts=1).delays_ms() == ()  # never retried
    assert retries.RetryPolicy(backoff=0).delays_ms() == ()  # retried at once
    assert retries.RetryPolicy(max_attempts=100, backoff=10, backoff_max=10).delays_ms() == (
        10000,)
    tiny = retries.RetryPolicy(max_attempts=None, backoff=1e-9, backoff_max=30).delays_ms()
    assert len(tiny) < 70 and tiny[0] == 1 and tiny[-1] == 30000  # at least 1 ms, capped


def test_redis_delay_queue_names_are_parsed_back():
    from tavrida.transports.kombu.compat import redis_delays

    assert redis_delays.parse("svc.queue.retry.500") == ("svc.queue", 500)
    assert redis_delays.parse("svc.queue") is None
    assert redis_delays.parse("svc.retry.x") is None


@pytest.mark.parametrize("kwargs", [{"max_attempts": 0}, {"max_attempts": -1},
                                    {"max_attempts": 1.5}, {"retry_backoff": -1},
                                    {"retry_backoff_max": float("nan")}])
def test_bad_retry_settings_are_refused(kwargs):
    from tavrida import dispatcher, service

    @dispatcher.rpc_service("retry_settings")
    class Svc(service.ServiceController):
        pass

    with pytest.raises(exceptions.IncorrectAMQPConfig):
        server.Server("memory://", "q", "ex", [Svc], **kwargs)


@pytest.mark.parametrize("raw, expected", [(None, 0), (3, 3), ("4", 4), (b"5", 5),
                                           ("x", 0), (-2, 0), (2.0, 2), ([1], 0),
                                           (10 ** 30, 2 ** 31 - 1)])
def test_attempts_header_is_read_leniently(raw, expected):
    headers = {} if raw is None else {ATTEMPTS: raw}
    assert retries.attempts_of(headers) == expected


def _ini(tmp_path, server_lines):
    path = tmp_path / "svc.ini"
    path.write_text("[connection]\nurl = memory://\n[server]\nqueue = q\nexchange = ex\n"
                    "services = test_retries_ini_svc:Svc\n" + server_lines)
    (tmp_path / "test_retries_ini_svc.py").write_text(
        "from tavrida import dispatcher, service\n"
        "@dispatcher.rpc_service('retries_ini_svc')\n"
        "class Svc(service.ServiceController):\n    pass\n")
    return str(path)


def test_retry_settings_come_from_the_server_section(tmp_path):
    conf = ServiceConfig(_ini(tmp_path, "max_attempts = 3\nretry_backoff = 0.25\n"
                                        "retry_backoff_max = 2\n"))
    assert conf.retry_policy == retries.RetryPolicy(3, 0.25, 2.0)
    srv = server.Server.from_config(conf.path)
    assert srv.retry_policy == retries.RetryPolicy(3, 0.25, 2.0)
    assert ServiceConfig(_ini(tmp_path, "max_attempts = none\n")).retry_policy.max_attempts \
        is None
    assert ServiceConfig(_ini(tmp_path, "")).retry_policy == retries.RetryPolicy()


@pytest.mark.parametrize("line, key", [("max_attempts = 0", "max_attempts"),
                                       ("max_attempts = many", "max_attempts"),
                                       ("retry_backoff = soon", "retry_backoff"),
                                       ("retry_backoff_max = -1", "retry_backoff_max")])
def test_bad_retry_keys_name_the_key(tmp_path, line, key):
    with pytest.raises(ConfigError) as info:
        ServiceConfig(_ini(tmp_path, line + "\n"))
    assert f"[server] {key}:" in str(info.value)


def test_a_blocking_call_in_a_cluster_waits_for_the_retry(cluster, poison):
    state, start = poison
    start(max_attempts=3)
    state["ok_from"] = 2
    cli = cluster.client(_client_disc(), source="client")
    assert cli.svc.do(value=1).call(timeout=5) == {"runs": 2}


def test_hooks_see_a_retried_run_as_retried(cluster, poison):
    from tavrida.observability.hooks import RETRIED, ServerHook

    outcomes = []

    class Watch(ServerHook):
        def message_finished(self, server, record):
            outcomes.append(record.outcome)

    state, start = poison
    start(max_attempts=3, hooks=[Watch()])
    state["ok_from"] = 2
    client_of(cluster, svc="svc_exchange").svc.do(value=1).cast()
    cluster.deliver()
    assert outcomes == [RETRIED, "ok"]


def _client_disc():
    from tavrida import discovery

    disc = discovery.LocalDiscovery()
    disc.register_remote_service("svc", "svc_exchange")
    disc.register_remote_service("client", "client_exchange")
    return disc


def test_a_retry_asked_by_an_exception_that_cannot_be_shown_is_still_retried(cluster):
    from tavrida import dispatcher, service

    class Unprintable(Retry):
        def __str__(self):
            raise RuntimeError("no str")

    runs = []

    @dispatcher.rpc_service("svc")
    class Svc(service.ServiceController):
        @dispatcher.rpc_method(service="svc", method="do")
        def do(self, request, proxy, value):
            runs.append(value)
            raise Unprintable()

    serve(cluster, Svc, max_attempts=2, retry_backoff=0.01)
    client_of(cluster, svc="svc_exchange").svc.do(value=1).cast()
    with pytest.raises(HandlerFailed):  # the last run counts as a handler failure
        cluster.deliver()
    assert runs == [1, 1]  # retried once, then given up: the log line did not fail it
    ((headers, _),) = cluster.dead_letters("svc_queue")
    assert headers[DEAD_REASON].startswith("handler do asked for a retry: ")
    assert "Unprintable(" in headers[DEAD_REASON]

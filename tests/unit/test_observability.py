"""Observability hooks on the in-memory transport: access log, JSON logs, metrics, traces, health.

Metrics and health are read over real HTTP (ports 28650-28699), spans with
the OpenTelemetry SDK's in-memory exporter, log lines with caplog.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import threading
import time
import types
import urllib.error
import urllib.request

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from tavrida import discovery, dispatcher, exceptions, messages, middleware, service
from tavrida.config_file import ConfigError, ServiceConfig
from tavrida.observability import (
    AccessLog,
    HealthCheck,
    HealthFile,
    ServerHook,
    StatusServer,
)
from tavrida.observability import health as health_module
from tavrida.observability.logs import JsonFormatter, configure_logging
from tavrida.observability.metrics import Metrics
from tavrida.observability.tracing import Tracing, instrument_client
from tavrida.server import Server
from tavrida.testing import MemoryCluster
from tavrida.transports.confirmation import Confirmation
from tavrida.transports.memory import MemoryTransport

METRICS_PORT = 28651
HEALTH_PORT = 28652
SHARED_PORT = 28653


class Retry(Exception, exceptions.NackableException):
    pass


@dispatcher.rpc_service("shop")
class Shop(service.ServiceController):
    attempts = 0

    @dispatcher.rpc_method(service="shop", method="buy")
    def buy(self, request, proxy, item):
        if item == "nothing":
            raise LookupError("no such item")
        if item == "later":
            type(self).attempts += 1
            if type(self).attempts == 1:
                raise Retry("busy")
        proxy.stock.take(item=item).call()
        return {"bought": item}

    @dispatcher.rpc_response_method(service="stock", method="take")
    def taken(self, response, proxy, left):
        proxy.publish(left=left)


@dispatcher.rpc_service("stock")
class Stock(service.ServiceController):
    @dispatcher.rpc_method(service="stock", method="take")
    def take(self, request, proxy, item):
        return {"left": 1}


def shop_cluster(cluster, shop_hooks=(), stock_hooks=()):
    """shop (calls stock, publishes) and stock servers, and a client ``tester``."""
    Shop.attempts = 0
    shop_disc = discovery.LocalDiscovery()
    shop_disc.register_remote_service("stock", "stock_exchange")
    shop_disc.register_remote_service("tester", "tester_exchange")
    shop_disc.register_local_publisher("shop", "shop_notifications")
    Shop.set_discovery(shop_disc)
    stock_disc = discovery.LocalDiscovery()
    stock_disc.register_remote_service("shop", "shop_exchange")
    Stock.set_discovery(stock_disc)
    shop = cluster.add_server([Shop], hooks=list(shop_hooks))
    stock = cluster.add_server([Stock], hooks=list(stock_hooks))
    cli_disc = discovery.LocalDiscovery()
    cli_disc.register_remote_service("shop", "shop_exchange")
    cli_disc.register_remote_service("tester", "tester_exchange")
    return shop, stock, cluster.client(cli_disc, source="tester")


def get(port, path="/metrics"):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


# -- access log --------------------------------------------------------------------------


def test_access_log_has_a_line_per_message_with_its_outcome(cluster, broker, caplog):
    caplog.set_level(logging.INFO, logger="tavrida.access")
    shop, _, cli = shop_cluster(cluster, shop_hooks=[AccessLog()])
    cli.shop.buy(item="book").call(correlation_id="corr-1")
    cli.shop.buy(item="nothing").call(correlation_id="corr-2")
    cli.shop.buy(item="later").cast(correlation_id="corr-3")
    broker.publish("shop_exchange", "shop.buy", b"not json", broker.headers("shop.buy"))
    cluster.deliver()
    records = [r for r in caplog.records if r.name == "tavrida.access"]
    got = [(r.entry_point, r.message_type, r.outcome, r.correlation_id) for r in records]
    assert got[:3] == [("shop.buy", "request", "ok", "corr-1"),
                       ("shop.buy", "request", "error", "corr-2"),
                       ("shop.buy", "request", "retried", "corr-3")]
    assert ("shop.buy", "request", "dead-lettered") in [g[:3] for g in got]
    assert ("shop.buy", "request", "ok", "corr-3") in got  # the retry
    assert ("stock.take", "response", "ok", "corr-1") in got
    assert all(r.levelno == logging.INFO and r.duration_ms >= 0 for r in records)
    assert records[1].error == "LookupError"
    line = records[0].getMessage()
    assert line.startswith("shop.buy request ok correlation_id=corr-1 ") and line.endswith(" ms")
    assert len(records) == 7  # 3 requests, the retry, the bad one, stock's 2 responses


def test_no_access_log_unless_asked(cluster, caplog):
    caplog.set_level(logging.DEBUG)
    _, _, cli = shop_cluster(cluster)
    cli.shop.buy(item="book").call()
    cluster.deliver()
    assert not [r for r in caplog.records if r.name == "tavrida.access"]


def test_a_failing_hook_is_logged_and_the_message_still_handled(cluster, caplog):
    class Broken(ServerHook):
        def message_started(self, server, record):
            raise RuntimeError("hook bug")

    _, _, cli = shop_cluster(cluster, shop_hooks=[Broken()])
    assert cli.shop.buy(item="book").call(timeout=5) == {"bought": "book"}
    assert "server hook" in caplog.text and "hook bug" in caplog.text


# -- log set-up ----------------------------------------------------------------------------


@pytest.fixture
def root_logging():
    root = logging.getLogger()
    saved = root.handlers[:], root.level, logging.getLogger("amqp").level
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    logging.getLogger("amqp").setLevel(saved[2])


def test_json_format_writes_one_object_per_line_with_access_fields(cluster, root_logging):
    stream = io.StringIO()
    configure_logging(logging.INFO, "json", stream=stream)
    configure_logging(logging.INFO, "json", stream=stream)  # again: still one handler
    _, _, cli = shop_cluster(cluster, shop_hooks=[AccessLog()])
    cli.shop.buy(item="book").call(correlation_id="corr-j")
    cluster.deliver()
    try:
        raise ValueError("with a traceback")
    except ValueError:
        logging.getLogger("tavrida.test").exception("multi\nline")
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    access = [e for e in entries if e["logger"] == "tavrida.access"]
    assert access[0]["entry_point"] == "shop.buy" and access[0]["outcome"] == "ok"
    assert access[0]["correlation_id"] == "corr-j" and access[0]["level"] == "INFO"
    assert {"time", "message", "duration_ms", "queue"} <= set(access[0])
    [error] = [e for e in entries if e["logger"] == "tavrida.test"]
    assert error["message"] == "multi\nline" and "ValueError" in error["exception"]


def test_amqp_debug_lines_are_kept_out_unless_asked(root_logging):
    stream = io.StringIO()
    configure_logging(logging.DEBUG, "text", stream=stream)
    logging.getLogger("amqp").debug("heartbeat_tick")
    logging.getLogger("amqp").warning("connection trouble")
    logging.getLogger("tavrida.x").debug("our debug")
    assert "heartbeat_tick" not in stream.getvalue()
    assert "connection trouble" in stream.getvalue() and "our debug" in stream.getvalue()
    configure_logging(logging.DEBUG, "text", amqp_debug=True, stream=stream)
    logging.getLogger("amqp").debug("heartbeat_tick")
    assert "heartbeat_tick" in stream.getvalue()
    with pytest.raises(ValueError):
        configure_logging(logging.INFO, "xml")


def test_json_formatter_never_fails_on_odd_extras():
    record = logging.LogRecord("x", logging.INFO, "f", 1, "v=%s", (object(),), None)
    record.blob = b"\xff"
    assert json.loads(JsonFormatter().format(record))["logger"] == "x"


# -- graceful stop -------------------------------------------------------------------------


def test_a_graceful_stop_says_what_it_does(caplog):
    caplog.set_level(logging.INFO, logger="tavrida.server")
    with MemoryCluster() as cluster:
        Stock.set_discovery(discovery.LocalDiscovery())
        server = Server(cluster.config, "stock_q", "stock_x", [Stock], workers=2)
        thread = threading.Thread(target=server.run)
        thread.start()
        try:
            deadline = time.monotonic() + 10
            while not server._started and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            server.stop()
            thread.join(10)
    assert not thread.is_alive()
    text = caplog.text
    assert "stock_q stopping: no new messages, 0 in flight" in text
    assert text.index("stopping") < text.index("stock_q stopped")


# -- metrics -------------------------------------------------------------------------------


def samples(text):
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_metrics_are_scraped_over_http(cluster, broker):
    registry = CollectorRegistry()
    status = StatusServer(METRICS_PORT, "127.0.0.1")
    metrics = Metrics(registry, status)
    shop, stock, cli = shop_cluster(cluster, shop_hooks=[metrics], stock_hooks=[metrics])
    cli.shop.buy(item="book").call()
    cli.shop.buy(item="nothing").call()
    cli.shop.buy(item="book").cast()
    broker.publish("shop_exchange", "shop.x" + "y" * 50, b"{}", broker.headers("shop.zzz"))
    cluster.deliver()
    code, text = get(METRICS_PORT)
    assert code == 200
    found = samples(text)

    def value(name, **labels):
        return found.get((name, tuple(sorted(labels.items()))), 0)

    q = "shop_queue"
    assert value("tavrida_messages_total", queue=q, entry_point="shop.buy",
                 message_type="request", outcome="ok") == 2
    assert value("tavrida_messages_total", queue=q, entry_point="shop.buy",
                 message_type="request", outcome="error") == 1
    assert value("tavrida_messages_total", queue="stock_queue", entry_point="stock.take",
                 message_type="request", outcome="ok") == 2
    # an entry point nobody handles is counted as "other", dead-lettered
    assert value("tavrida_messages_total", queue=q, entry_point="other",
                 message_type="other", outcome="dead-lettered") == 1
    assert value("tavrida_dead_letters_total", queue=q) == 1
    assert value("tavrida_handler_errors_total", queue=q, entry_point="shop.buy",
                 exception="LookupError") == 1
    assert value("tavrida_handler_duration_seconds_count", queue=q,
                 entry_point="shop.buy") == 3
    assert value("tavrida_messages_in_flight", queue=q) == 0
    assert ("tavrida_reconnects_total", (("queue", q),)) in found
    assert get(METRICS_PORT, "/nope")[0] == 404
    shop.close()
    assert get(METRICS_PORT)[0] == 200  # stock still serves it
    stock.close()
    with pytest.raises(urllib.error.URLError):
        get(METRICS_PORT)


class Reconnecting(MemoryTransport):
    """A memory connection that says it reconnected, as KombuTransport.reconnects does."""

    reconnects = 0


def test_reconnects_are_counted_from_the_transport(cluster):
    registry = CollectorRegistry()
    Stock.set_discovery(discovery.LocalDiscovery())
    transport = Reconnecting(cluster.config)
    server = Server(cluster.config, "rq", "rx", [Stock], transport=transport,
                    hooks=[Metrics(registry)])
    server.start()
    transport.reconnects = 2
    server.hooks.tick(server)
    server.close()
    assert registry.get_sample_value("tavrida_reconnects_total", {"queue": "rq"}) == 2


def test_in_flight_counts_messages_being_handled(cluster):
    registry = CollectorRegistry()
    seen = []

    @dispatcher.rpc_service("slow")
    class Slow(service.ServiceController):
        @dispatcher.rpc_method(service="slow", method="go")
        def go(self, request, proxy):
            seen.append(registry.get_sample_value("tavrida_messages_in_flight",
                                                  {"queue": "slow_queue"}))

    Slow.set_discovery(discovery.LocalDiscovery())
    cluster.add_server([Slow], hooks=[Metrics(registry)])
    disc = discovery.LocalDiscovery()
    disc.register_remote_service("slow", "slow_exchange")
    cluster.client(disc).slow.go().cast()
    cluster.deliver()
    assert seen == [1.0]
    assert registry.get_sample_value("tavrida_messages_in_flight", {"queue": "slow_queue"}) == 0


# -- tracing -------------------------------------------------------------------------------


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def test_each_hop_is_a_child_span_named_in_its_own_traceparent(cluster, spans):
    provider, exporter = spans
    tracing = Tracing(provider)
    seen = {}

    class Peek(ServerHook):
        def message_started(self, server, record):
            seen.setdefault(record.entry_point, record.headers.get("traceparent"))

    shop, stock, cli = shop_cluster(cluster, shop_hooks=[tracing],
                                    stock_hooks=[Peek(), tracing])
    instrument_client(cli, provider)
    with provider.get_tracer("test").start_as_current_span("checkout") as root:
        cli.shop.buy(item="book").call(correlation_id="corr-t")
    cluster.deliver()
    by_name = {(s.name, s.attributes.get("tavrida.message_type")): s
               for s in exporter.get_finished_spans()}
    assert len(by_name) == len(exporter.get_finished_spans()) == 5  # with the root span
    send = by_name["shop.buy send", "request"]
    buy = by_name["shop.buy process", "request"]
    take = by_name["stock.take process", "request"]
    taken = by_name["stock.take response", "response"]
    trace_id = root.get_span_context().trace_id
    assert {s.context.trace_id for s in exporter.get_finished_spans()} == {trace_id}
    assert send.kind == SpanKind.PRODUCER and send.parent.span_id == root.get_span_context(
        ).span_id
    assert buy.kind == SpanKind.CONSUMER and buy.parent.span_id == send.context.span_id
    assert take.parent.span_id == buy.context.span_id
    assert taken.parent.span_id == take.context.span_id  # the answer came from stock's hop
    for span in (buy, take, taken):
        assert span.attributes["tavrida.correlation_id"] == "corr-t"
        assert span.attributes["messaging.message.conversation_id"] == "corr-t"
        assert span.attributes["tavrida.outcome"] == "ok"
    # stock's request carried shop's own traceparent, not the client's
    assert seen["stock.take"].startswith(f"00-{trace_id:032x}-{buy.context.span_id:016x}-")


def test_a_failed_handler_marks_its_span_and_untraced_messages_start_a_trace(cluster, spans,
                                                                              broker):
    provider, exporter = spans
    _, _, cli = shop_cluster(cluster, shop_hooks=[Tracing(provider)])
    cli.shop.buy(item="nothing").call()  # a 1.0 client: no traceparent
    broker.publish("shop_exchange", "shop.buy", broker.body({"item": "x"}),
                   {**broker.headers("shop.buy"), "traceparent": "garbage"})
    cluster.deliver()
    failed, garbage = [s for s in exporter.get_finished_spans() if s.name == "shop.buy process"]
    assert failed.parent is None and garbage.parent is None
    assert failed.status.status_code.name == "ERROR"
    assert failed.events[0].name == "exception"
    assert failed.attributes["tavrida.outcome"] == "error"


def test_without_tracing_traceparent_passes_through_unchanged(cluster):
    seen = []

    class Peek(ServerHook):
        def message_started(self, server, record):
            seen.append(record.headers.get("traceparent"))

    _, _, cli = shop_cluster(cluster, stock_hooks=[Peek()])
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    cli.add_headers({"traceparent": parent})
    cli.shop.buy(item="book").call()
    cluster.deliver()
    assert seen == [parent]


# -- outcomes: what happened to each message, in the access log, the metrics and the spans --


class Gate(middleware.Middleware):
    """Refuses calls to ``desk.guarded``: the caller gets an Error, no handler runs."""

    def process(self, message):
        if message.destination.method == "guarded":
            return messages.Error.create_by_request(message, PermissionError("no entry"))
        return message


@dispatcher.rpc_service("desk")
class Desk(service.ServiceController):
    retried = 0

    def __init__(self, postprocessor):
        super().__init__(postprocessor)
        self.add_incoming_middleware(Gate())

    @dispatcher.rpc_method(service="desk", method="ok")
    def ok(self, request, proxy):
        return {"fine": True}

    @dispatcher.rpc_method(service="desk", method="guarded")
    def guarded(self, request, proxy):
        raise AssertionError("the middleware refuses it first")

    @dispatcher.rpc_method(service="desk", method="again")
    def again(self, request, proxy):
        type(self).retried += 1
        if type(self).retried == 1:
            raise Retry("once more")

    @dispatcher.rpc_method(service="desk", method="when")
    def when(self, request, proxy):
        return {"when": complex(2026, 1)}  # JSON has no complex numbers

    @dispatcher.rpc_method(service="desk", method="boom")
    def boom(self, request, proxy):
        raise LookupError("cast failed")


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


#: What each message to the desk became, in the order sent (see desk_outcomes()).
DESK_OUTCOMES = [("desk.ok", "ok"), ("desk.guarded", "error"), ("desk.again", "retried"),
                 ("desk.when", "error"), ("desk.boom", "dead-lettered"),
                 ("desk.ok", "expired"), ("desk.again", "ok"), ("desk.ok", "requeued"),
                 ("desk.ok", "ok")]


def desk_outcomes(cluster, broker, hooks):
    """Send the desk one message of every outcome; returns the server."""
    Desk.retried = 0
    disc = discovery.LocalDiscovery()
    disc.register_remote_service("client", "client_exchange")
    Desk.set_discovery(disc)
    transport = FlakyAnswers(cluster.config)
    desk = cluster.add_server([Desk], hooks=hooks, transport=transport, retry_backoff=0)
    cli_disc = discovery.LocalDiscovery()
    cli_disc.register_remote_service("desk", "desk_exchange")
    cli = cluster.client(cli_disc, source="client")
    broker.spy("client_exchange")  # answers to "client" are taken
    cli.desk.ok().call(correlation_id="c-ok")
    cli.desk.guarded().call(correlation_id="c-guarded")
    cli.desk.again().call(correlation_id="c-again")
    cli.desk.when().call(correlation_id="c-when")
    cli.desk.boom().cast(correlation_id="c-boom")
    gone = int((time.time() - 60) * 1000)  # its caller gave up a minute ago
    broker.publish("desk_exchange", "desk.ok", broker.body({}),
                   broker.headers("desk.ok", reply_to="client", correlation_id="c-expired",
                                  **{messages.EXPIRES_AT_HEADER: gone}))
    cluster.deliver(expect_errors=(LookupError, Retry))
    transport.failures = 1
    cli.desk.ok().call(correlation_id="c-requeued")
    cluster.deliver()
    return desk


def test_access_log_says_what_happened_to_each_message(cluster, broker, caplog):
    caplog.set_level(logging.INFO, logger="tavrida.access")
    desk_outcomes(cluster, broker, [AccessLog()])
    records = [r for r in caplog.records if r.name == "tavrida.access"]
    assert [(r.entry_point, r.outcome) for r in records] == DESK_OUTCOMES
    assert [r.correlation_id for r in records] == [
        "c-ok", "c-guarded", "c-again", "c-when", "c-boom", "c-expired", "c-again",
        "c-requeued", "c-requeued"]
    assert records[1].error == "PermissionError"  # refused: no exception, an Error sent
    assert records[3].error == "IncorrectOutgoingMessage"  # the complex answer
    assert records[5].getMessage().startswith("desk.ok request expired correlation_id=")


def test_metrics_count_each_outcome(cluster, broker):
    registry = CollectorRegistry()
    desk_outcomes(cluster, broker, [Metrics(registry)])

    def count(entry_point, outcome):
        return registry.get_sample_value("tavrida_messages_total", {
            "queue": "desk_queue", "entry_point": entry_point, "message_type": "request",
            "outcome": outcome}) or 0

    expected: dict = {}
    for entry_point, outcome in DESK_OUTCOMES:
        expected[entry_point, outcome] = expected.get((entry_point, outcome), 0) + 1
    assert {key: count(*key) for key in expected} == expected
    assert count("desk.guarded", "ok") == 0 and count("desk.ok", "error") == 0
    assert registry.get_sample_value("tavrida_dead_letters_total",
                                     {"queue": "desk_queue"}) == 1


def test_spans_carry_each_outcome_and_failed_ones_are_errors(cluster, broker, spans):
    provider, exporter = spans
    desk_outcomes(cluster, broker, [Tracing(provider)])
    finished = exporter.get_finished_spans()
    got = [(s.name, s.attributes["tavrida.outcome"]) for s in finished]
    assert got == [(f"{entry_point} process", outcome) for entry_point, outcome in DESK_OUTCOMES]
    statuses = {outcome: s.status.status_code.name for s, (_, outcome) in zip(finished, got)}
    assert statuses == {"ok": "UNSET", "retried": "UNSET", "expired": "UNSET",
                        "error": "ERROR", "dead-lettered": "ERROR", "requeued": "ERROR"}
    assert finished[1].status.description == "PermissionError"  # the middleware's refusal


def test_answer_spans_are_named_response_and_error_not_like_the_request(cluster, spans):
    provider, exporter = spans
    shop, stock, cli = shop_cluster(cluster, shop_hooks=[Tracing(provider)],
                                    stock_hooks=[Tracing(provider)])
    errors = []

    @dispatcher.rpc_service("front")
    class Front(service.ServiceController):
        @dispatcher.rpc_method(service="front", method="go")
        def go(self, request, proxy):
            proxy.shop.buy(item="nothing").call()

        @dispatcher.rpc_error_method(service="shop", method="buy")
        def failed(self, error, proxy):
            errors.append(error.payload["name"])

    @dispatcher.rpc_service("watch")
    class Watch(service.ServiceController):
        @dispatcher.subscription_method(service="shop", method="taken")
        def seen(self, notification, proxy, left):
            pass

    disc = discovery.LocalDiscovery()
    disc.register_remote_service("shop", "shop_exchange")
    disc.register_remote_service("front", "front_exchange")
    disc.register_remote_publisher("shop", "shop_notifications")
    Front.set_discovery(disc)
    Watch.set_discovery(disc)
    cluster.add_server([Front], hooks=[Tracing(provider)])
    cluster.add_server([Watch], hooks=[Tracing(provider)])
    cli.shop.buy(item="book").call()
    cluster.client(disc, source="tester").front.go().cast()
    cluster.deliver(expect_errors=(LookupError,))
    names = sorted((s.name, s.attributes["tavrida.message_type"])
                   for s in exporter.get_finished_spans())
    assert ("stock.take process", "request") in names
    assert ("stock.take response", "response") in names  # shop's handler of stock's answer
    assert ("shop.buy error", "error") in names  # front's handler of shop's Error
    assert ("shop.taken notification", "notification") in names  # shop published it
    assert not [name for name, kind in names if kind != "request" and name.endswith("process")]
    assert errors == ["LookupError"]


# -- health --------------------------------------------------------------------------------


def run_in_thread(server):
    thread = threading.Thread(target=server.run)
    thread.start()
    return thread


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_health_file_is_touched_while_the_loop_runs_and_removed_at_stop(tmp_path):
    path = str(tmp_path / "alive")
    Stock.set_discovery(discovery.LocalDiscovery())
    with MemoryCluster() as cluster:
        server = Server(cluster.config, "hq", "hx", [Stock],
                        hooks=[HealthFile(path, interval=0.01)])
        thread = run_in_thread(server)
        try:
            wait_for(lambda: os.path.exists(path))
            first = float(open(path).read())
            wait_for(lambda: os.path.exists(path) and float(open(path).read()) > first)
        finally:
            server.stop()
            thread.join(10)
    assert not os.path.exists(path)


def test_healthz_answers_200_while_the_loop_turns_and_503_when_stale(monkeypatch):
    # The check's own clock, moved by hand: the verdict cannot depend on the machine's load.
    clock = [1000.0]
    monkeypatch.setattr(health_module, "time",
                        types.SimpleNamespace(monotonic=lambda: clock[0], time=time.time))
    status = StatusServer(HEALTH_PORT, "127.0.0.1")
    check = HealthCheck(status, stale_after=0.2)
    Stock.set_discovery(discovery.LocalDiscovery())
    with MemoryCluster() as cluster:
        server = Server(cluster.config, "hq", "hx", [Stock], hooks=[check])
        server.start()  # started, but nobody turns the loop
        try:
            assert get(HEALTH_PORT, "/healthz") == (200, "ok\n")
            clock[0] += 0.3
            code, body = get(HEALTH_PORT, "/healthz")
            assert (code, body) == (503, "stale: 0.3s\n")
            server.hooks.tick(server)
            assert get(HEALTH_PORT, "/healthz")[0] == 200
            server.hooks.stopping(server, 0)
            assert get(HEALTH_PORT, "/healthz") == (503, "not running\n")
        finally:
            server.close()


# -- configuration -------------------------------------------------------------------------


def write_config(tmp_path, extra):
    (tmp_path / "obs_svc.py").write_text(
        "from tavrida import dispatcher, service\n"
        "@dispatcher.rpc_service('obs')\n"
        "class Obs(service.ServiceController):\n"
        "    @dispatcher.rpc_method(service='obs', method='m')\n"
        "    def m(self, request, proxy):\n"
        "        return {}\n")
    path = tmp_path / "svc.ini"
    path.write_text("[connection]\nurl = memory://obs-config\n[server]\nqueue = oq\n"
                    "exchange = ox\nservices = obs_svc:Obs\n" + extra)
    return str(path)


def test_config_turns_everything_on_and_metrics_and_health_share_a_port(tmp_path):
    path = write_config(tmp_path, f"""
[logging]
access = true
format = json
amqp_debug = yes
[metrics]
port = {SHARED_PORT}
host = 127.0.0.1
[tracing]
enabled = true
[health]
file = alive
interval = 0.5
port = {SHARED_PORT}
""")
    conf = ServiceConfig(path)
    assert (conf.log_access, conf.log_format, conf.amqp_debug, conf.tracing) == (
        True, "json", True, True)
    assert conf.health_file == str(tmp_path / "alive") and conf.health_interval == 0.5
    hooks = conf.hooks()
    kinds = [type(hook).__name__ for hook in hooks]
    assert kinds == ["Tracing", "Metrics", "AccessLog", "HealthFile", "HealthCheck"]
    assert hooks[1].status is hooks[4].status
    server = Server.from_config(path)
    assert [type(h).__name__ for h in server.hooks] == kinds
    server.start()
    try:
        assert get(SHARED_PORT, "/healthz")[0] == 200
        assert "tavrida_messages_in_flight" in get(SHARED_PORT, "/metrics")[1]
    finally:
        server.close()


def test_config_leaves_everything_off_by_default(tmp_path):
    conf = ServiceConfig(write_config(tmp_path, ""))
    assert conf.hooks() == []
    assert (conf.log_access, conf.log_format, conf.amqp_debug) == (False, "text", False)


@pytest.mark.parametrize("extra, key", [
    ("[logging]\nformat = xml\n", "format"),
    ("[logging]\naccess = maybe\n", "access"),
    ("[metrics]\nport = 99999\n", "port"),
    ("[metrics]\nport = http\n", "port"),
    ("[health]\ninterval = 0\n", "interval"),
])
def test_bad_observability_values_name_the_key(tmp_path, extra, key):
    with pytest.raises(ConfigError) as info:
        ServiceConfig(write_config(tmp_path, extra))
    assert f"] {key}:" in str(info.value)


def test_tavrida_imports_and_runs_without_the_extras():
    code = """
import sys
sys.modules['prometheus_client'] = None
sys.modules['opentelemetry'] = None
import tavrida, tavrida.server, tavrida.testing, tavrida.observability
from tavrida.observability import build_hooks
assert [type(h).__name__ for h in build_hooks(access=True)] == ['AccessLog']
for kwargs in ({'metrics_port': 0}, {'tracing': True}):
    try:
        build_hooks(**kwargs)
    except ImportError as exc:
        print(exc)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "metrics need prometheus-client: pip install 'tavrida[metrics]'",
        "tracing needs opentelemetry-api: pip install 'tavrida[otel]'"]


def test_error_payloads_stay_what_callers_expect_with_hooks_on(cluster):
    _, _, cli = shop_cluster(cluster, shop_hooks=[AccessLog(), Metrics(CollectorRegistry())])
    with pytest.raises(exceptions.RemoteError) as info:
        cli.shop.buy(item="nothing").call(timeout=5)
    assert info.value.remote_name == "LookupError"
    assert messages.get_fqcn(LookupError) == info.value.remote_class

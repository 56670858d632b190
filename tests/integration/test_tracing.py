"""Trace context across two services on RabbitMQ: one W3C ``traceparent`` per hop."""

from __future__ import annotations

import queue
import threading
from typing import Iterator, List

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tavrida import client, discovery, dispatcher, messages, middleware, server, service
from tavrida.observability import ServerHook
from tavrida.observability.tracing import Tracing, instrument_client

WAIT = 15.0


@dispatcher.rpc_service("trace_front")
class Front(service.ServiceController):
    @dispatcher.rpc_method(service="trace_front", method="ask")
    def ask(self, request, proxy, q):
        proxy.trace_back.answer().transfer(request)


@dispatcher.rpc_service("trace_back")
class Back(service.ServiceController):
    @dispatcher.rpc_method(service="trace_back", method="answer")
    def answer(self, request, proxy, q):
        return {"a": q + 1}


class Incoming(ServerHook):
    """The traceparent each message arrived with (before tracing rewrites it)."""

    def __init__(self) -> None:
        self.seen: List[str] = []

    def message_started(self, srv, record):
        self.seen.append(str(record.headers.get("traceparent")))


@pytest.fixture
def spans() -> Iterator[tuple]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def test_traceparent_makes_each_hop_a_child_span(amqp_url, unique, spans):
    provider, exporter = spans
    front_ex, back_ex, client_ex = unique("front-ex"), unique("back-ex"), unique("client-ex")
    front_disc = discovery.LocalDiscovery()
    front_disc.register_remote_service("trace_back", back_ex)
    Front.set_discovery(front_disc)
    back_disc = discovery.LocalDiscovery()
    back_disc.register_remote_service("trace_client", client_ex)
    Back.set_discovery(back_disc)
    arrived = Incoming()
    servers = [server.Server(amqp_url, unique("front-q"), front_ex, [Front],
                             hooks=[Tracing(provider)]),
               server.Server(amqp_url, unique("back-q"), back_ex, [Back],
                             hooks=[arrived, Tracing(provider)])]
    threads = []
    for srv in servers:
        srv.start()
        threads.append(threading.Thread(target=srv.run, daemon=True))
        threads[-1].start()
    cli_disc = discovery.LocalDiscovery()
    cli_disc.register_remote_service("trace_front", front_ex)
    cli_disc.register_remote_service("trace_client", client_ex)
    try:
        with client.RPCClient(amqp_url, cli_disc, source="trace_client") as cli:
            instrument_client(cli, provider)
            assert cli.trace_front.ask(q=1).call(timeout=WAIT, correlation_id="c-42") == {"a": 2}
    finally:
        for srv in servers:
            srv.stop()
        for thread in threads:
            thread.join(WAIT)
        for srv in servers:
            srv.close()
    assert not any(thread.is_alive() for thread in threads)
    finished = {span.name: span for span in exporter.get_finished_spans()}
    send = finished["trace_front.ask send"]
    front = finished["trace_front.ask process"]
    back = finished["trace_back.answer process"]
    assert len({span.context.trace_id for span in finished.values()}) == 1
    assert front.parent.span_id == send.context.span_id
    assert back.parent.span_id == front.context.span_id
    assert [span.attributes["tavrida.correlation_id"] for span in (send, front, back)] == [
        "c-42"] * 3
    # on the wire, the request to back named front's span, not the client's
    [traceparent] = arrived.seen
    assert traceparent.split("-")[2] == f"{front.context.span_id:016x}"


ANSWERS: "queue.Queue[str]" = queue.Queue()


@dispatcher.rpc_service("span_front")
class AnswerFront(service.ServiceController):
    @dispatcher.rpc_method(service="span_front", method="go")
    def go(self, request, proxy, q):
        proxy.span_back.work(q=q).call()  # answered to the handlers below

    @dispatcher.rpc_response_method(service="span_back", method="work")
    def worked(self, response, proxy, a):
        ANSWERS.put("response")

    @dispatcher.rpc_error_method(service="span_back", method="work")
    def failed(self, error, proxy):
        ANSWERS.put(f"error {error.payload['name']}")


class Refuse(middleware.Middleware):
    """Refuses q == 0: the caller gets an Error, the handler never runs."""

    def process(self, message):
        if message.payload.get("q") == 0:
            return messages.Error.create_by_request(message, ValueError("q must not be 0"))
        return message


@dispatcher.rpc_service("span_back")
class AnswerBack(service.ServiceController):
    def __init__(self, postprocessor):
        super().__init__(postprocessor)
        self.add_incoming_middleware(Refuse())

    @dispatcher.rpc_method(service="span_back", method="work")
    def work(self, request, proxy, q):
        return {"a": q}


def test_answer_spans_are_named_response_and_error_and_refusals_are_errors(amqp_url, unique,
                                                                           spans):
    provider, exporter = spans
    front_ex, back_ex = unique("front-ex"), unique("back-ex")
    disc = discovery.LocalDiscovery()
    disc.register_remote_service("span_front", front_ex)
    disc.register_remote_service("span_back", back_ex)
    AnswerFront.set_discovery(disc)
    AnswerBack.set_discovery(disc)
    servers = [server.Server(amqp_url, unique("front-q"), front_ex, [AnswerFront],
                             hooks=[Tracing(provider)]),
               server.Server(amqp_url, unique("back-q"), back_ex, [AnswerBack],
                             hooks=[Tracing(provider)])]
    threads = []
    for srv in servers:
        srv.start()
        threads.append(threading.Thread(target=srv.run, daemon=True))
        threads[-1].start()
    try:
        with client.RPCClient(amqp_url, disc, source="span_client") as cli:
            cli.span_front.go(q=1).cast()
            assert ANSWERS.get(timeout=WAIT) == "response"
            cli.span_front.go(q=0).cast()
            assert ANSWERS.get(timeout=WAIT) == "error ValueError"
    finally:
        for srv in servers:
            srv.stop()
        for thread in threads:
            thread.join(WAIT)
        for srv in servers:
            srv.close()
    got = sorted((span.name, span.attributes["tavrida.outcome"], span.status.status_code.name)
                 for span in exporter.get_finished_spans())
    assert got == [("span_back.work error", "ok", "UNSET"),  # front's error handler ran fine
                   ("span_back.work process", "error", "ERROR"),  # refused by the middleware
                   ("span_back.work process", "ok", "UNSET"),
                   ("span_back.work response", "ok", "UNSET"),
                   ("span_front.go process", "ok", "UNSET"),
                   ("span_front.go process", "ok", "UNSET")]

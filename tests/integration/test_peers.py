"""Programs that are not tavrida call a 2.0 service on RabbitMQ and read its answers.

Each peer is a real AMQP client used as its own users use it: plain kombu
(a dict with ``serializer="json"``, raw bytes, which kombu labels
``application/data`` / ``binary``), plain py-amqp and pika 1.x. None of
them is registered in the service's discovery: each names the exchange its
answers go to in the ``x-tavrida-reply-exchange`` header, declares that
exchange and a queue bound to it with its own service name, and reads the
answer from there with the same library.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
import uuid
from typing import Any, Callable, Dict, Iterator, Optional

import amqp
import kombu
import pika
import pytest
from svc_support import PlainAMQP, amqp_connection

from tavrida import client, discovery, dispatcher, server, service

WAIT = 15.0
CALLER = "peer_caller"
REPLY = "x-tavrida-reply-exchange"  # the wire contract, spelled out


@dispatcher.rpc_service("peer_echo")
class PeerEcho(service.ServiceController):
    """Echoes ``value`` with the correlation id it read."""

    @dispatcher.rpc_method(service="peer_echo", method="echo")
    def echo(self, request, proxy, value):
        return {"value": value, "correlation_id": request.correlation_id}


class Names:
    """The service's queue and exchange, and the peer's reply exchange and queue."""

    def __init__(self, unique: Any) -> None:
        self.queue, self.exchange = unique("svc-q"), unique("svc-ex")
        self.reply_exchange, self.reply_queue = unique("reply-ex"), unique("reply-q")


@pytest.fixture
def names(amqp_url, unique) -> Iterator[Names]:
    """A running 2.0 ``peer_echo`` server whose discovery knows no caller."""
    found = Names(unique)
    PeerEcho.set_discovery(discovery.LocalDiscovery())
    srv = server.Server(amqp_url, found.queue, found.exchange, [PeerEcho])
    srv.start()  # declared and consuming before any peer publishes
    thread = threading.Thread(target=srv.run, daemon=True, name="peer-echo")
    thread.start()
    try:
        yield found
    finally:
        srv.stop()
        thread.join(WAIT)
        srv.close()
    assert not thread.is_alive(), "the server did not stop"


def request_headers(names: Names, correlation_id: Any = "", reply: bool = True,
                    **extra: Any) -> Dict[str, Any]:
    """The seven headers of a call to ``peer_echo.echo`` from ``peer_caller``."""
    headers = {"message_type": "request", "message_id": uuid.uuid4().hex,
               "request_id": uuid.uuid4().hex,
               "correlation_id": correlation_id or str(uuid.uuid4()),
               "source": CALLER, "destination": "peer_echo.echo", "reply_to": CALLER}
    if reply:
        headers[REPLY] = names.reply_exchange
    headers.update(extra)
    return headers


def envelope(value: Any) -> Dict[str, Any]:
    return {"payload": {"value": value}, "context": {}}


def wait_for(get: Callable[[], Optional[Any]], what: str) -> Any:
    """Poll ``get`` (a basic_get) until it returns a message; fail after WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while True:
        found = get()
        if found is not None:
            return found
        assert time.monotonic() < deadline, f"no {what} within {WAIT}s"
        time.sleep(0.02)


def text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def check_answer(headers: Dict[str, Any], payload: Dict[str, Any], sent: Dict[str, Any],
                 value: Any) -> None:
    """A response to ``sent`` as tavrida answers: its ids, for the caller, with the payload."""
    headers = {name: text(value) for name, value in headers.items()}
    assert headers["message_type"] == "response", headers
    assert headers["request_id"] == sent["request_id"]
    assert headers["correlation_id"] == str(sent["correlation_id"])
    assert headers["destination"] == CALLER
    assert headers["source"] == "peer_echo.echo"
    assert REPLY not in headers
    assert payload == {"value": value, "correlation_id": str(sent["correlation_id"])}


def dead_letters(amqp_url: str, names: Names) -> int:
    with PlainAMQP(amqp_url) as plain:
        return plain.message_count(names.queue + ".dead")


# -- kombu -----------------------------------------------------------------------------------

@pytest.fixture
def kombu_peer(amqp_url, names) -> Iterator[Any]:
    """A kombu connection with the peer's reply queue declared."""
    with kombu.Connection(amqp_url, connect_timeout=5) as conn:
        reply_queue = kombu.Queue(names.reply_queue,
                                  kombu.Exchange(names.reply_exchange, "topic", durable=True),
                                  routing_key=CALLER, durable=False, auto_delete=False)
        bound = reply_queue(conn.default_channel)
        bound.declare()
        yield conn, bound


@pytest.mark.parametrize("form", ["dict, serializer=json", "raw bytes",
                                  "bytes labelled application/json"])
def test_kombu_calls_and_reads_the_answer(kombu_peer, names, amqp_url, form):
    conn, reply_queue = kombu_peer
    sent = request_headers(names)
    options: Dict[str, Any] = {"serializer": "json"}
    body: Any = envelope(form)
    if form != "dict, serializer=json":
        body, options = json.dumps(body).encode("utf-8"), {}
        if form == "bytes labelled application/json":
            options = {"content_type": "application/json"}
    producer = conn.Producer()
    producer.publish(body, exchange=names.exchange, routing_key="peer_echo.echo",
                     headers=sent, **options)
    answer = wait_for(lambda: reply_queue.get(no_ack=True, accept=["json"]), "kombu answer")
    assert answer.content_type == "application/json"
    check_answer(answer.headers, answer.decode()["payload"], sent, form)
    assert dead_letters(amqp_url, names) == 0


def test_kombu_pickle_is_refused_with_an_error_reply_and_never_unpickled(kombu_peer, names,
                                                                         amqp_url):
    conn, reply_queue = kombu_peer
    sent = request_headers(names)
    conn.Producer().publish(envelope(1), exchange=names.exchange,
                            routing_key="peer_echo.echo", headers=sent, serializer="pickle")
    cast = request_headers(names, reply=False, reply_to="")
    conn.Producer().publish(envelope(2), exchange=names.exchange,
                            routing_key="peer_echo.echo", headers=cast, serializer="pickle")
    error = wait_for(lambda: reply_queue.get(no_ack=True, accept=["json"]), "kombu error")
    assert text(error.headers["message_type"]) == "error"
    assert text(error.headers["request_id"]) == sent["request_id"]
    assert "names the pickle serializer" in error.decode()["payload"]["message"]
    # the cast has nobody to tell: it waits in the dead-letter queue with the reason
    with PlainAMQP(amqp_url) as plain:
        dead = wait_for(lambda: plain.get_all(names.queue + ".dead", 1) or None, "dead letter")
    assert "names the pickle serializer" in text(dead[0].headers["x-tavrida-dead-reason"])
    assert text(dead[0].headers["request_id"]) == cast["request_id"]


# -- py-amqp ---------------------------------------------------------------------------------

@pytest.fixture
def amqp_peer(amqp_url, names) -> Iterator[amqp.Channel]:
    conn = amqp_connection(amqp_url)
    try:
        channel = conn.channel()
        channel.exchange_declare(names.reply_exchange, "topic", durable=True,
                                 auto_delete=False)
        channel.queue_declare(names.reply_queue, durable=False, auto_delete=False)
        channel.queue_bind(names.reply_queue, names.reply_exchange, CALLER)
        yield channel
    finally:
        conn.close()


@pytest.mark.parametrize("correlation_id", [123, "py-amqp-1"])
def test_py_amqp_calls_with_any_correlation_id_and_reads_the_answer(amqp_peer, names,
                                                                    amqp_url, correlation_id):
    # a 1.0 client passing correlation_id=123 puts an AMQP integer in the header table
    sent = request_headers(names, correlation_id=correlation_id)
    amqp_peer.basic_publish(amqp.Message(json.dumps(envelope("x")).encode("utf-8"),
                                         application_headers=sent),
                            exchange=names.exchange, routing_key="peer_echo.echo")
    answer = wait_for(lambda: amqp_peer.basic_get(names.reply_queue, no_ack=True),
                      "py-amqp answer")
    body = answer.body if isinstance(answer.body, bytes) else answer.body.encode("utf-8")
    check_answer(answer.properties["application_headers"],
                 json.loads(body.decode("utf-8"))["payload"], sent, "x")
    assert dead_letters(amqp_url, names) == 0


# -- pika ------------------------------------------------------------------------------------

@pytest.fixture
def pika_peer(amqp_url, names) -> Iterator[Any]:
    parts = urllib.parse.urlsplit(amqp_url)
    conn = pika.BlockingConnection(pika.ConnectionParameters(
        host=parts.hostname or "127.0.0.1", port=parts.port or 5672,
        virtual_host=urllib.parse.unquote(parts.path[1:]) if len(parts.path) > 1 else "/",
        credentials=pika.PlainCredentials(urllib.parse.unquote(parts.username or "guest"),
                                          urllib.parse.unquote(parts.password or "guest")),
        socket_timeout=5, blocked_connection_timeout=5, connection_attempts=1))
    try:
        channel = conn.channel()
        channel.exchange_declare(names.reply_exchange, "topic", durable=True)
        channel.queue_declare(names.reply_queue, durable=False)
        channel.queue_bind(names.reply_queue, names.reply_exchange, CALLER)
        yield channel
    finally:
        conn.close()


def pika_answer(channel: Any, names: Names) -> Any:
    def get() -> Optional[Any]:
        method, properties, body = channel.basic_get(names.reply_queue, auto_ack=True)
        return None if method is None else (properties, body)

    return wait_for(get, "pika answer")


@pytest.mark.parametrize("correlation_id, content_type", [
    (77, None), ("pika-1", "application/json"), ("pika-2", "text/plain")])
def test_pika_calls_and_reads_the_answer(pika_peer, names, amqp_url, correlation_id,
                                         content_type):
    sent = request_headers(names, correlation_id=correlation_id)
    pika_peer.basic_publish(names.exchange, "peer_echo.echo",
                            json.dumps(envelope([1, "é"])).encode("utf-8"),
                            pika.BasicProperties(headers=sent, content_type=content_type))
    properties, body = pika_answer(pika_peer, names)
    assert properties.content_type == "application/json"
    assert properties.content_encoding == "utf-8"
    check_answer(properties.headers, json.loads(body.decode("utf-8"))["payload"], sent,
                 [1, "é"])
    assert dead_letters(amqp_url, names) == 0


def test_pika_gets_an_error_answer_for_a_bad_payload(pika_peer, names):
    sent = request_headers(names)
    pika_peer.basic_publish(names.exchange, "peer_echo.echo",
                            json.dumps({"payload": {"valeu": 1}}).encode("utf-8"),
                            pika.BasicProperties(headers=sent))
    properties, body = pika_answer(pika_peer, names)
    assert text(properties.headers["message_type"]) == "error"
    assert text(properties.headers["request_id"]) == sent["request_id"]
    payload = json.loads(body.decode("utf-8"))["payload"]
    assert payload["name"] == "WrongHandlerParameters"
    assert "lacks required parameter(s) value" in payload["message"]


# -- tavrida 2 callers, and a reply exchange that does not exist ------------------------------

def test_a_2_0_client_the_service_does_not_know_gets_its_answer(names, amqp_url):
    disc = discovery.LocalDiscovery()
    disc.register_remote_service("peer_echo", names.exchange)
    disc.register_remote_service("stranger", names.reply_exchange)  # its own discovery only
    with client.RPCClient(amqp_url, disc, source="stranger") as cli:
        assert cli.peer_echo.echo(value=5).call(correlation_id="c-5", timeout=WAIT) == \
            {"value": 5, "correlation_id": "c-5"}
    assert dead_letters(amqp_url, names) == 0


def test_an_answer_to_a_missing_exchange_dead_letters_its_call_once(pika_peer, names,
                                                                    amqp_url):
    missing = names.reply_exchange + ".missing"
    sent = request_headers(names, **{REPLY: missing})
    pika_peer.basic_publish(names.exchange, "peer_echo.echo",
                            json.dumps(envelope("lost?")).encode("utf-8"),
                            pika.BasicProperties(headers=sent))
    with PlainAMQP(amqp_url) as plain:
        dead = wait_for(lambda: plain.get_all(names.queue + ".dead", 1) or None, "dead letter")
    reason = text(dead[0].headers["x-tavrida-dead-reason"])
    assert "answer not sent" in reason and missing in reason, reason
    assert text(dead[0].headers["request_id"]) == sent["request_id"]
    # the server goes on: the next call is answered
    sent = request_headers(names)
    pika_peer.basic_publish(names.exchange, "peer_echo.echo",
                            json.dumps(envelope("next")).encode("utf-8"),
                            pika.BasicProperties(headers=sent))
    properties, body = pika_answer(pika_peer, names)
    check_answer(properties.headers, json.loads(body.decode("utf-8"))["payload"], sent, "next")

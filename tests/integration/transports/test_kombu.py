"""KombuTransport against real brokers: what only the kombu transport has.

What every transport does is the contract (tests/transport_contract.py, run on
these brokers by test_contract_brokers.py); this module keeps reconnects,
heartbeats, py-amqp's frame parsing, large bodies and tavrida 1.0 objects.

No mocks. Waits are bounded loops around ``drain`` that end as soon as the
awaited messages are in; the few fixed waits assert that something does
*not* happen (a prefetch bound holds).
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import socket
import threading
from typing import Callable, List

import amqp
import pytest
from transport_contract import (
    ALL_BYTES,
    WAIT,
    Inbox,
    amqp_channel,
    drain_for,
    drain_until,
    envelope,
    receive,
)

from soak.proxy import TcpProxy
from tavrida import exceptions
from tavrida.config import ConnectionConfig, Credentials
from tavrida.transports.base import Binding, Topology, confirm_all
from tavrida.transports.kombu import KombuTransport


def service_topology(unique: Callable[[str], str], pattern: str = "svc.#") -> tuple:
    exchange, queue = unique("x"), unique("q")
    return exchange, queue, Topology.build([exchange], [queue], [Binding(queue, exchange, pattern)])


# --- every broker (the rest of what every transport does: tests/transport_contract.py) ----------

@pytest.mark.slow
def test_ten_megabyte_body(broker_url: str, unique, make_transport) -> None:
    transport = make_transport(broker_url)
    exchange, queue, topology = service_topology(unique)
    transport.declare(topology)
    inbox = Inbox()
    transport.consume(queue, inbox, 1)
    body = ALL_BYTES * (10 * 1024 * 1024 // len(ALL_BYTES))
    transport.publish(envelope(exchange, "svc.big", body, size=len(body))).wait()
    drain_until(lambda: len(inbox) == 1, transport)
    assert inbox.deliveries[0].body == body
    assert inbox.deliveries[0].headers["size"] == len(body)


# --- RabbitMQ -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_reconnects_after_the_broker_drops_connections(
        amqp_url: str, unique, make_transport, close_amqp_connections) -> None:
    """Broker-side close: re-declare (exclusive reply queue too), consume again, lose nothing."""
    consumer = make_transport(amqp_url, transport_options={
        "client_properties": {"connection_name": unique("consumer")}})
    publisher = make_transport(amqp_url, transport_options={
        "client_properties": {"connection_name": unique("publisher")}})
    exchange, queue, topology = service_topology(unique)
    reply = unique("reply")
    consumer.declare(topology)
    consumer.declare_reply_queue(reply, [])
    inbox, held, replies = Inbox(), Inbox(ack=False), Inbox()
    consumer.consume(queue, lambda d: (held if d.body == b"held" else inbox)(d), 50)
    consumer.consume(reply, replies, 10)

    publisher.publish(envelope(exchange, "svc.m", b"held")).wait()
    confirm_all([
        publisher.publish(envelope(exchange, "svc.m", str(i).encode())) for i in range(20)])
    drain_until(lambda: len(held) == 1 and len(inbox) >= 5, consumer)

    assert close_amqp_connections(unique("consumer")) == 1
    confirm_all([
        publisher.publish(envelope(exchange, "svc.m", str(i).encode())) for i in range(20, 40)])
    assert close_amqp_connections(unique("publisher")) == 1
    publisher.publish(envelope(exchange, "svc.m", b"40")).wait()  # reconnects, then publishes
    drain_until(lambda: {str(i).encode() for i in range(41)} <= set(inbox.bodies), consumer)

    # The held delivery's connection is gone: its ack is dropped, the broker redelivers it.
    held.deliveries[0].ack()
    drain_until(lambda: len(held) == 2, consumer)
    assert held.deliveries[1].redelivered is True
    held.deliveries[1].ack()

    # The exclusive reply queue died with the connection and was declared again.
    def reply_arrived() -> bool:
        publisher.publish(envelope("", reply, b"probe")).wait()
        consumer.drain(0.1)
        return len(replies) > 0

    drain_until(reply_arrived, consumer)


def test_missing_exchange_raises_publish_failed_and_transport_recovers(
        amqp_url: str, unique, make_transport) -> None:
    transport = make_transport(amqp_url)
    exchange, queue, topology = service_topology(unique)
    missing = unique("missing")
    transport.declare(topology)
    inbox = Inbox()
    transport.consume(queue, inbox, 10)

    with pytest.raises(exceptions.PublishFailed) as raised:
        transport.publish(envelope(missing, "svc.m", b"lost")).wait()
    assert missing in str(raised.value)
    assert "404" in str(raised.value)

    transport.publish(envelope(exchange, "svc.m", b"after")).wait()
    batch = [envelope(exchange, "svc.m", b"a"), envelope(missing, "svc.m", b"b"),
             envelope(exchange, "svc.m", b"c")]
    with pytest.raises(exceptions.PublishFailed) as raised:
        confirm_all([transport.publish(e) for e in batch])
    assert list(raised.value.failed) == [1]
    assert raised.value.envelopes == [batch[1]]
    # "a" went out before the channel closed, unconfirmed: it is sent again (at-least-once).
    drain_until(lambda: {b"a", b"after", b"c"} <= set(inbox.bodies), transport)
    drain_for(0.2, transport)
    assert set(inbox.bodies) == {b"a", b"after", b"c"}


def test_requests_from_many_threads_share_the_confirm_channel(
        amqp_url: str, unique, make_transport) -> None:
    """Waiters from many threads read the confirms for each other, beside whole batches.

    One to a missing exchange fails alone, one no queue takes raises
    Unroutable; every other message is in the queue (at least once: those
    unconfirmed when the broker closed the channel over the missing exchange
    are sent again).
    """
    transport = make_transport(amqp_url)
    exchange, queue, topology = service_topology(unique)
    missing = unique("missing")
    transport.declare(topology)
    errors: List[BaseException] = []

    def requests(thread: int) -> None:
        for i in range(20):
            try:
                transport.publish(envelope(exchange, "svc.m", b"%d-%d" % (thread, i))).wait()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

    def batches() -> None:
        for i in range(5):
            confirm_all([transport.publish(envelope(exchange, "svc.m", b"batch-%d-%d" % (i, j)))
                         for j in range(10)])

    threads = [threading.Thread(target=requests, args=(t,)) for t in range(8)]
    threads.append(threading.Thread(target=batches))
    for thread in threads:
        thread.start()
    with pytest.raises(exceptions.PublishFailed) as raised:
        transport.publish(envelope(missing, "svc.m", b"lost")).wait()
    assert missing in str(raised.value)
    with pytest.raises(exceptions.Unroutable):
        transport.publish(envelope(exchange, "nobody", b"returned")).wait()
    for thread in threads:
        thread.join(60)
    assert not errors
    inbox = Inbox()
    transport.consume(queue, inbox, 0)
    expected = ({b"%d-%d" % (t, i) for t in range(8) for i in range(20)}
                | {b"batch-%d-%d" % (i, j) for i in range(5) for j in range(10)})
    drain_until(lambda: expected <= set(inbox.bodies), transport)
    drain_for(0.2, transport)
    assert set(inbox.bodies) == expected


def test_confirming_publishes_are_settled_by_waiting(
        amqp_url: str, unique, make_transport) -> None:
    """RabbitMQ with confirms: ``publish`` returns once written (pending until its confirm
    is read: see the stalled network below); waiting reads the confirms."""
    transport = make_transport(amqp_url)
    exchange, queue, topology = service_topology(unique)
    transport.declare(topology)
    handles = [transport.publish(envelope(exchange, "svc.m", b"%d" % i)) for i in range(3)]
    confirm_all(handles, timeout=WAIT)
    assert all(handle.done() and handle.exception(0) is None for handle in handles)
    assert receive(transport, queue, 3).bodies == [b"0", b"1", b"2"]


def test_a_request_cancelled_at_its_answer_is_not_tracked_and_answers_need_no_acks(
        amqp_url: str, unique, make_transport) -> None:
    """A call cancels its request's handle at the answer; its late confirm matches nothing."""
    transport = make_transport(amqp_url)
    exchange, queue, topology = service_topology(unique)
    replies = unique("replies")
    transport.declare(topology)
    transport.declare_reply_queue(replies, [Binding(replies, exchange, "client")])
    answers = Inbox()
    transport.consume(replies, answers, 1)  # a prefetch bound does not apply without acks
    for i in range(5):
        transport.publish(envelope(exchange, "client", b"answer-%d" % i)).wait()
    drain_until(lambda: len(answers) == 5, transport)
    for delivery in answers.deliveries:
        delivery.ack()  # nothing to do; no warning, no error
    assert transport.queue_size(replies) == 0
    asked = transport.publish(envelope(exchange, "svc.m", b"asked"))
    assert asked.cancel() and asked.cancelled() and asked.done()
    with pytest.raises(concurrent.futures.CancelledError):
        asked.wait(0)
    transport.publish(envelope(exchange, "svc.m", b"next")).wait(WAIT)  # reads the late one
    inbox = Inbox()
    transport.consume(queue, inbox, 10)
    drain_until(lambda: len(inbox) == 2, transport)
    assert inbox.bodies == [b"asked", b"next"]


def test_cancel_returns_a_thread_waiting_for_a_confirm_that_does_not_come(
        amqp_url: str, unique, make_transport) -> None:
    """Behind a stalled network the confirm never comes: cancel() ends the wait at once."""
    with TcpProxy.for_url(amqp_url) as proxy:
        transport = make_transport(proxy.url(amqp_url))
        exchange, _, topology = service_topology(unique)
        transport.declare(topology)
        transport.publish(envelope(exchange, "svc.m", b"first")).wait(WAIT)
        proxy.stall()
        stuck = transport.publish(envelope(exchange, "svc.m", b"stuck"))
        assert not stuck.done()  # written; its confirm cannot come
        outcome: List[BaseException] = []
        started = threading.Event()

        def wait() -> None:
            started.set()
            try:
                stuck.wait(WAIT)
            except BaseException as exc:  # noqa: BLE001 - checked below
                outcome.append(exc)

        waiter = threading.Thread(target=wait)
        waiter.start()
        started.wait(WAIT)
        assert stuck.cancel()
        waiter.join(2)
        assert not waiter.is_alive()
        assert [type(exc) for exc in outcome] == [concurrent.futures.CancelledError]
        with transport.deadline(0.5):
            transport.close()


def test_a_pending_publish_fails_at_its_deadline_whoever_reads(
        amqp_url: str, unique, make_transport) -> None:
    """No confirm within publish_timeout (a stalled network): the waiter's handle fails;
    one with a callback, lost when that dropped the connection, fails in ``drain``."""
    with TcpProxy.for_url(amqp_url) as proxy:
        transport = make_transport(proxy.url(amqp_url), publish_timeout=0.5)
        exchange, queue, topology = service_topology(unique)
        transport.declare(topology)
        transport.consume(queue, Inbox(), 10)
        transport.publish(envelope(exchange, "svc.m", b"first")).wait(WAIT)
        proxy.stall()
        waited = transport.publish(envelope(exchange, "svc.m", b"waited"))
        called = transport.publish(envelope(exchange, "svc.m", b"called"))
        outcomes: List[object] = []
        called.add_done_callback(outcomes.append)
        with pytest.raises(exceptions.PublishFailed, match="no confirm from the broker in time"):
            waited.wait(WAIT)
        drain_until(lambda: outcomes == [called], transport)
        assert isinstance(called.exception(0), exceptions.PublishConnectionFailed)
        with transport.deadline(0.5):
            transport.close()


def test_a_reply_queue_another_connection_holds_is_refused_clearly(
        amqp_url: str, unique, make_transport) -> None:
    exchange, reply, own = unique("x"), unique("reply"), unique("own")
    owner, other = make_transport(amqp_url), make_transport(amqp_url)
    owner.declare_reply_queue(reply, [Binding(reply, exchange, "caller")])

    with pytest.raises(exceptions.QueueLocked) as raised:
        other.declare_reply_queue(reply, [Binding(reply, exchange, "caller")])
    assert isinstance(raised.value, exceptions.IncorrectAMQPConfig)
    assert raised.value.kwargs["queue"] == reply
    assert repr(reply) in str(raised.value)
    assert "another connection holds it" in str(raised.value)
    assert "RESOURCE_LOCKED" in str(raised.value)

    # Only that queue was refused: the transport goes on, with a reply queue of its own.
    other.declare_reply_queue(own, [Binding(own, exchange, "other")])
    owner.publish(envelope(exchange, "other", b"to the other")).wait()
    assert receive(other, own, 1).bodies == [b"to the other"]


def test_invalid_utf8_from_other_clients_is_delivered(amqp_url: str, unique,
                                                      make_transport) -> None:
    """Invalid UTF-8 in a header, in short-string properties and in the routing key.

    py-amqp writes bytes as raw AMQP strings, so this is what a non-Python or
    buggy client can put on the broker. Each message must reach on_message in
    order, undecodable text kept recoverable.
    """
    exchange, queue, topology = service_topology(unique, pattern="#")
    transport = make_transport(amqp_url)
    transport.declare(topology)
    inbox = Inbox()
    transport.consume(queue, inbox, 1)
    channel = amqp_channel(amqp_url)
    try:
        channel.basic_publish(amqp.Message(b"1", application_headers={"bad": b"\xff\xfe"}),
                              exchange=exchange, routing_key="k")
        channel.basic_publish(amqp.Message(b"2", content_type=b"\xff\xfe",
                                           correlation_id=b"id-\xc3"), exchange=exchange,
                              routing_key="k")
        channel.basic_publish(amqp.Message(b"3"), exchange=exchange, routing_key=b"\xff.k")
        channel.basic_publish(amqp.Message(b"4", application_headers={"ok": "yes"}),
                              exchange=exchange, routing_key="k")
    finally:
        channel.connection.close()
    drain_until(lambda: len(inbox) == 4, transport)

    first, second, third, fourth = inbox.deliveries
    assert inbox.bodies == [b"1", b"2", b"3", b"4"]
    assert first.headers == {"bad": b"\xff\xfe"}
    assert second.properties["content_type"].encode("utf-8", "surrogateescape") == b"\xff\xfe"
    assert second.properties["correlation_id"].encode("utf-8", "surrogateescape") == b"id-\xc3"
    assert third.routing_key.encode("utf-8", "surrogateescape") == b"\xff.k"
    assert fourth.headers == {"ok": "yes"}
    assert transport.queue_size(queue) == 0


def test_plain_py_amqp_fails_on_invalid_utf8_properties(amqp_url: str, unique) -> None:
    """Why the tolerant frame handler exists (if this fails, py-amqp got fixed upstream)."""
    queue = unique("q")
    channel = amqp_channel(amqp_url)
    try:
        channel.queue_declare(queue, durable=False, auto_delete=False)
        channel.basic_publish(amqp.Message(b"x", content_type=b"\xff"), exchange="",
                              routing_key=queue)
        with pytest.raises(UnicodeDecodeError):
            channel.basic_get(queue, no_ack=True)
    finally:
        channel.connection.collect()


def test_declare_over_tavrida_1_0_objects(amqp_url: str, unique, make_transport) -> None:
    """Objects first declared as tavrida 1.0 does (durable, no arguments): no 406."""
    exchange, queue, topology = service_topology(unique)
    channel = amqp_channel(amqp_url)
    try:
        channel.exchange_declare(exchange, "topic", durable=True, auto_delete=False)
        channel.queue_declare(queue, durable=True, exclusive=False, auto_delete=False)
        channel.queue_bind(queue, exchange, "svc.#")
    finally:
        channel.connection.close()
    transport = make_transport(amqp_url)
    transport.declare(topology)
    inbox = Inbox()
    transport.consume(queue, inbox, 1)
    transport.publish(envelope(exchange, "svc.m", b"shared")).wait()
    drain_until(lambda: len(inbox) == 1, transport)


@pytest.mark.slow
def test_heartbeat_keeps_an_idle_consumer_alive(amqp_url: str, unique, make_transport,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """A long handler that calls heartbeat() from a worker keeps the connection."""
    transport = make_transport(amqp_url, heartbeat_interval=1)
    exchange, queue, topology = service_topology(unique)
    transport.declare(topology)
    inbox = Inbox()
    transport.consume(queue, inbox, 1)
    done = threading.Event()

    def worker() -> None:
        while not done.wait(0.2):
            transport.heartbeat()

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        done.wait(3.0)  # the "long handler": 3 heartbeat intervals without draining
    finally:
        done.set()
        thread.join()
    transport.publish(envelope(exchange, "svc.m", b"alive")).wait()
    drain_until(lambda: len(inbox) == 1, transport)
    assert not [r for r in caplog.records if "lost" in r.getMessage()]


def test_unreachable_broker_fails_after_the_configured_attempts(
        caplog: pytest.LogCaptureFixture) -> None:
    """No broker at all: bounded retries, ConnectionFailed, and no password in the logs."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    config = ConnectionConfig("127.0.0.1", Credentials("guest", "s3cret-pw"), port=port,
                              connection_attempts=2, retry_delay=0.01, reconnect_attempts=2)
    transport = KombuTransport(config)
    caplog.set_level(logging.DEBUG)
    try:
        with pytest.raises(exceptions.PublishConnectionFailed) as raised:
            transport.publish(envelope("x", "k")).wait()
        assert isinstance(raised.value, exceptions.PublishFailed)
        assert raised.value.safe_url == config.safe_url
        assert "s3cret-pw" not in str(raised.value)
        with pytest.raises(exceptions.ConnectionFailed) as failed:  # attempts exhausted
            transport.declare(Topology.build(["x"]))
        assert isinstance(failed.value.cause, OSError)
        assert "s3cret-pw" not in str(failed.value)
        assert transport.drain(0.01) is False  # nothing consumed yet: no connection needed
    finally:
        transport.close()
    assert "retrying" in caplog.text
    assert "s3cret-pw" not in caplog.text


# --- Redis ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_redis_reconnects_after_connections_are_killed(redis_url: str, unique, make_transport,
                                                       close_redis_connections) -> None:
    consumer = make_transport(redis_url, transport_options={"client_name": unique("consumer")})
    publisher = make_transport(redis_url, transport_options={"client_name": unique("publisher")})
    exchange, queue, topology = service_topology(unique)
    consumer.declare(topology)
    inbox = Inbox()
    consumer.consume(queue, inbox, 10)
    confirm_all([
        publisher.publish(envelope(exchange, "svc.m", str(i).encode())) for i in range(10)])
    drain_until(lambda: len(inbox) >= 10, consumer)

    assert close_redis_connections(unique("consumer")) > 0
    assert close_redis_connections(unique("publisher")) > 0
    confirm_all([
        publisher.publish(envelope(exchange, "svc.m", str(i).encode())) for i in range(10, 20)])
    drain_until(lambda: {str(i).encode() for i in range(20)} <= set(inbox.bodies), consumer)


@pytest.mark.slow
def test_redis_consumer_gets_past_a_connection_gone_silent(redis_url: str, unique,
                                                          make_transport) -> None:
    """A pop whose reply never came (half-open connection) waited for ever on kombu < 5.7,
    holding what Redis had moved to the in-flight list for it."""
    import redis

    with TcpProxy.for_url(redis_url) as proxy:
        consumer = make_transport(proxy.url(redis_url),
                                  transport_options={"health_check_interval": 1})
        publisher = make_transport(redis_url)
        exchange, queue, topology = service_topology(unique)
        publisher.declare(topology)
        inbox = Inbox()
        consumer.consume(queue, inbox, 10)
        publisher.publish(envelope(exchange, "svc.m", b"before")).wait()
        drain_until(lambda: len(inbox) == 1, consumer)
        consumer.drain(0.05)  # performs the ack
        # Only the connection waiting for a pop goes silent: nothing else notices.
        assert proxy.silence(b"BRPOPLPUSH") == 1
        publisher.publish(envelope(exchange, "svc.m", b"during")).wait()
        drain_until(lambda: b"during" in inbox.bodies, consumer, timeout=60)
        assert inbox.bodies == [b"before", b"during"]
        consumer.drain(0.05)
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.llen(queue) == 0
        assert [key for key in client.scan_iter(match=f"{queue}.tavrida-inflight.*")
                if client.llen(key)] == []
    finally:
        client.close()


def test_redis_delete_removes_what_other_connections_declared(redis_url: str, unique,
                                                              make_transport) -> None:
    """kombu deleted only the bindings its own connection declared: the queue's binding
    (and its messages) stayed on Redis, so publishing to the exchange went on filling it."""
    import redis

    declarer = make_transport(redis_url)
    exchange, queue, _ = service_topology(unique)
    dead = unique("dead")
    declarer.declare(Topology.build([exchange], [queue, dead], [Binding(queue, exchange, "svc.#")]))
    declarer.publish(envelope(exchange, "svc.m", b"bound")).wait()
    declarer.publish(envelope("", dead, b"unbound")).wait()
    declarer.close()  # as a stopped server

    make_transport(redis_url).delete(queues=[queue, dead])
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.smembers(f"_kombu.binding.{exchange}") == set()
        assert (client.llen(queue), client.llen(dead)) == (0, 0)
    finally:
        client.close()
    with pytest.raises(exceptions.Unroutable):
        make_transport(redis_url).publish(envelope(exchange, "svc.m", b"nobody takes it")).wait()


@pytest.mark.parametrize("keyprefix", [False, True], ids=["plain", "global-keyprefix"])
def test_redis_exchange_delete_removes_the_bindings_of_other_connections(
        redis_url: str, unique, make_transport, keyprefix: bool) -> None:
    """kombu's exchange_delete unbound the empty queues bound to it (from every exchange)
    and left the other bindings on Redis; its own bindings go, whoever declared them."""
    options = {"transport_options": {"global_keyprefix": f"{unique}."}} if keyprefix else {}
    kept, deleted, queue, full = unique("kept"), unique("deleted"), unique("q"), unique("full")
    declarer = make_transport(redis_url, **options)
    declarer.declare(Topology.build([kept, deleted], [queue, full],
                                    [Binding(queue, kept, "#"), Binding(queue, deleted, "#"),
                                     Binding(full, deleted, "#")]))
    declarer.publish(envelope("", full, b"waiting")).wait()
    declarer.close()  # as a stopped server

    deleting = make_transport(redis_url, **options)
    deleting.delete(exchanges=[deleted])
    with pytest.raises(exceptions.Unroutable):
        deleting.publish(envelope(deleted, "k", b"nobody takes it")).wait()
    deleting.publish(envelope(kept, "k", b"still routed")).wait()
    inbox = Inbox()
    deleting.consume(queue, inbox, 10)
    drain_until(lambda: len(inbox) == 1, deleting)
    assert inbox.bodies == [b"still routed"]
    assert deleting.queue_size(full) == 1




#: Binding keys and routing keys where RabbitMQ's topic rules are easy to get wrong.
TOPIC_PATTERNS = ["", "#", "#.#", "*", "a", "a.b", "a.*", "a.#", "#.b", "*.b", "a.#.b",
                  "a.*.b", "#.a.#", "*.*", "a.#.#.b", "a.", ".a", "a..b", "#.", "*.#"]
TOPIC_KEYS = ["", "a", "b", "a.b", "a.c", "a.b.c", "a.x.b", "a.x.y.b", "b.a", "a.", ".a",
              "a..b", "x.a.y", "ab", "a.b.b"]


def test_redis_routes_in_redis_as_rabbitmq_matches_topics(redis_url: str, unique) -> None:
    """The routing script matches each binding key as topic_matches does (RabbitMQ's rules)."""
    import redis

    from tavrida.transports.kombu.compat.redis_routing import ROUTE
    from tavrida.transports.topic import topic_matches

    client = redis.Redis.from_url(redis_url)
    bindings, queues = unique("bindings"), [unique(f"q{i}") for i in range(len(TOPIC_PATTERNS))]
    sep = "\x06\x16"
    try:
        client.sadd(bindings, *[sep.join([pattern, "ignored", queue])
                                for pattern, queue in zip(TOPIC_PATTERNS, queues)])
        for key in TOPIC_KEYS:
            pushed = client.eval(ROUTE, 1, bindings, key, sep, "", key.encode() or b"-")
            got = {queue for queue in queues if client.rpop(queue) is not None}
            expected = {queue for pattern, queue in zip(TOPIC_PATTERNS, queues)
                        if topic_matches(pattern, key)}
            assert (key, got) == (key, expected)
            assert pushed == len(expected)
    finally:
        client.delete(bindings, *queues)
        client.close()


def test_redis_routing_leaves_a_delay_queue_to_kombus_path(redis_url: str, unique) -> None:
    """A delay queue matched is named back, nothing pushed: its publish is held (redis_delays)."""
    import redis

    from tavrida.transports.kombu.compat.redis_routing import ROUTE

    client = redis.Redis.from_url(redis_url)
    bindings, queue, delayed = unique("bindings"), unique("q"), unique("q") + ".retry.500"
    sep = "\x06\x16"
    try:
        client.sadd(bindings, sep.join(["a.#", "", queue]), sep.join(["a.b", "", delayed]))
        assert sorted(client.eval(ROUTE, 1, bindings, "a.b", sep, "", "m")) == sorted(
            [queue.encode(), delayed.encode()])
        assert (client.llen(queue), client.llen(delayed)) == (0, 0)
        assert client.eval(ROUTE, 1, bindings, "a.c", sep, "", "m") == 1
        assert client.eval(ROUTE, 1, bindings, "b", sep, "", "m") == 0
        assert client.llen(queue) == 1
    finally:
        client.delete(bindings, queue, delayed)
        client.close()


def test_redis_records_what_it_holds_and_answers_need_no_record(redis_url: str, unique,
                                                               make_transport) -> None:
    """A message held un-acked is in kombu's ``unacked`` hash and no longer in flight (one
    transaction); an answer read is in neither; an ack deletes the record."""
    import redis

    exchange, queue, topology = service_topology(unique)
    reply_exchange, reply = unique("rx"), unique("reply")
    transport = make_transport(redis_url)
    transport.declare(topology)
    transport.declare_reply_queue(reply, [Binding(reply, reply_exchange, "client")])
    held, answers = Inbox(ack=False), Inbox(ack=False)
    transport.consume(queue, held, 10)
    transport.consume(reply, answers, 10)
    for body in (b"one", b"two"):
        transport.publish(envelope(exchange, "svc.m", body)).wait()
        transport.publish(envelope(reply_exchange, "client", body)).wait()
    drain_until(lambda: len(held) == len(answers) == 2, transport)
    assert held.bodies == answers.bodies == [b"one", b"two"]
    client = redis.Redis.from_url(redis_url)

    def records(name: str) -> int:
        # kombu's record: delivery tag -> [payload, exchange, routing key (the queue)]
        return sum(1 for _, value in client.hscan_iter("unacked", count=1000)
                   if json.loads(value)[2] == name)

    def in_flight(name: str) -> int:
        return sum(client.llen(key) for key in client.scan_iter(
            match=f"{name}.tavrida-inflight.*"))

    try:
        assert (records(queue), in_flight(queue)) == (2, 0)
        assert records(reply) == 0
        drain_until(lambda: in_flight(reply) == 0, transport)  # removed with the next pop
        for delivery in held.deliveries:
            delivery.ack()
        drain_until(lambda: records(queue) == 0, transport)
    finally:
        client.close()


def consumed_reply_queue(transport: KombuTransport, unique) -> tuple:
    """A reply queue declared and consumed on ``transport``: its exchange, name and inbox."""
    reply_exchange, reply = unique("rx"), unique("reply")
    transport.declare_reply_queue(reply, [Binding(reply, reply_exchange, "client")])
    answers = Inbox()
    transport.consume(reply, answers, 10)
    return reply_exchange, reply, answers


def test_redis_answers_read_before_a_cut_come_once(redis_url: str, unique, make_transport,
                                                   close_redis_connections) -> None:
    """An answer's in-flight copy goes with the next pop; a cut before it neither loses
    nor repeats an answer."""
    consumer = make_transport(redis_url, transport_options={"client_name": unique("consumer")})
    publisher = make_transport(redis_url)
    reply_exchange, _, answers = consumed_reply_queue(consumer, unique)
    for round_ in range(3):
        publisher.publish(envelope(reply_exchange, "client", b"%d" % round_)).wait()
        drain_until(lambda count=round_ + 1: len(answers) == count, consumer)
        assert close_redis_connections(unique("consumer")) > 0
    publisher.publish(envelope(reply_exchange, "client", b"3")).wait()
    drain_until(lambda: len(answers) >= 4, consumer)
    drain_for(0.5, consumer)  # to see a repeated answer, were one put back
    assert answers.bodies == [b"0", b"1", b"2", b"3"]


def test_redis_acks_delete_their_records_and_a_cut_brings_nothing_back(
        redis_url: str, unique, make_transport, close_redis_connections) -> None:
    """Acks made as messages are handed out delete kombu's records (their scripts go out
    ahead of the next pop); a cut afterwards neither repeats nor loses a message."""
    import redis

    exchange, queue, topology = service_topology(unique)
    consumer = make_transport(redis_url, transport_options={"client_name": unique("consumer")})
    publisher = make_transport(redis_url)
    consumer.declare(topology)
    inbox = Inbox()  # acks each delivery as it is handed out
    consumer.consume(queue, inbox, 10)
    client = redis.Redis.from_url(redis_url)

    def records() -> int:
        return sum(1 for _, value in client.hscan_iter("unacked", count=1000)
                   if json.loads(value)[2] == queue)

    try:
        for round_ in range(3):
            publisher.publish(envelope(exchange, "svc.m", b"%d" % round_)).wait()
            drain_until(lambda count=round_ + 1: len(inbox) == count, consumer)
            drain_until(lambda: records() == 0, consumer)
            assert close_redis_connections(unique("consumer")) > 0
        publisher.publish(envelope(exchange, "svc.m", b"3")).wait()
        drain_until(lambda: len(inbox) >= 4, consumer)
        drain_until(lambda: records() == 0, consumer)
        drain_for(0.5, consumer)  # to see a repeated message, were one put back
        assert inbox.bodies == [b"0", b"1", b"2", b"3"]
        assert consumer.queue_size(queue) == 0
    finally:
        client.close()


@pytest.mark.parametrize("refused", [False, True], ids=["replies-skipped", "client-reply-refused"])
def test_redis_answers_leave_nothing_in_flight_whether_or_not_replies_can_be_skipped(
        redis_url: str, unique, make_transport, caplog, refused: bool) -> None:
    """The in-flight copies of answers go with the next pop: without replies where Redis
    takes ``CLIENT REPLY SKIP``, with replies read first where an ACL refuses it."""
    import urllib.parse

    import redis

    admin = redis.Redis.from_url(redis_url)
    user, url = unique("acl"), redis_url
    if refused:
        admin.execute_command("ACL", "SETUSER", user, "on", ">tvt-password", "~*", "&*",
                              "+@all", "-client|reply")
        parts = urllib.parse.urlsplit(redis_url)
        url = parts._replace(netloc=f"{user}:tvt-password@{parts.hostname}:{parts.port}").geturl()
    caplog.set_level(logging.DEBUG, logger="tavrida.transports.kombu.compat.redis_fetch")
    try:
        consumer, publisher = make_transport(url), make_transport(redis_url)
        reply_exchange, reply, answers = consumed_reply_queue(consumer, unique)
        for round_ in range(5):
            publisher.publish(envelope(reply_exchange, "client", b"%d" % round_)).wait()
            drain_until(lambda count=round_ + 1: len(answers) == count, consumer)
        drain_until(lambda: not any(admin.llen(key) for key in admin.scan_iter(
            match=f"{reply}.tavrida-inflight.*")), consumer)
        drain_for(0.2, consumer)
        assert answers.bodies == [b"0", b"1", b"2", b"3", b"4"]
        assert ("Redis refuses CLIENT REPLY" in caplog.text) is refused
    finally:
        if refused:
            admin.execute_command("ACL", "DELUSER", user)
        admin.close()

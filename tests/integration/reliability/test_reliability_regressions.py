"""Small, fast regressions of the bugs the reliability scenarios found (one test each).

The scenarios find these under load or by generation; here each is provoked
directly, so a regression fails in seconds and says what broke.
"""

from __future__ import annotations

import threading
import time
from typing import Any, List

import pytest

from soak import hostile
from soak.amqp_raw import Field, RawPublisher, deep_table
from soak.proxy import TcpProxy
from soak.scenarios import CLIENT, Names, cleanup, open_transport
from tavrida import exceptions, server
from tavrida.config import ConnectionConfig
from tavrida.transports.base import Binding, OutgoingEnvelope, Topology, confirm_all
from tavrida.transports.kombu import KombuTransport

WAIT = 15.0


def drain_until(condition, transport: KombuTransport, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        transport.drain(0.05)


@pytest.fixture
def names(unique) -> Names:
    return Names(prefix=unique.prefix)


def test_header_values_py_amqp_cannot_decode_are_delivered(amqp_url, names) -> None:
    """A header timestamp past year 9999 and tables thousands deep used to raise out of
    drain(): the server died, and so did every server the broker gave the message to."""
    transport = open_transport(amqp_url)
    publisher = RawPublisher(amqp_url)
    try:
        transport.declare(Topology.build([], [names.queue], []))
        got: List[Any] = []
        transport.consume(names.queue, lambda d: (got.append(d), d.ack()), 10)
        cases = [{"t": Field("T", 2 ** 64 - 1)}, {"t": Field("T", 10 ** 15)},
                 deep_table(2000), deep_table(3000, "A")]
        for headers in cases:
            assert publisher.publish("", names.queue, b"{}", {"headers": headers}) is None
        drain_until(lambda: len(got) == len(cases), transport)
        assert got[0].headers == {"t": "18446744073709551615"}  # no datetime holds it
        assert got[1].headers == {"t": 10 ** 15}
        depth, table = 0, got[2].headers
        while isinstance(table, dict):
            table, depth = table["n"], depth + 1
        assert depth == 33 and isinstance(table, bytes)  # 32 levels read, the rest kept raw
    finally:
        publisher.close()
        transport.close()
        cleanup(amqp_url, names)


def test_non_utf8_header_key_arrives_as_text_and_goes_out_as_it_came(amqp_url, names) -> None:
    """py-amqp gave such a key as bytes, and the server's header filter raised TypeError."""
    transport = open_transport(amqp_url)
    publisher = RawPublisher(amqp_url)
    try:
        transport.declare(Topology.build([], [names.queue, names.dead], []))
        got: List[Any] = []
        transport.consume(names.queue, lambda d: (got.append(d), d.ack()), 10)
        assert publisher.publish("", names.queue, b"{}", {"headers": {b"k\xff": "v"}}) is None
        drain_until(lambda: len(got) == 1, transport)
        assert got[0].headers == {"k\udcff": "v"}
        transport.publish(OutgoingEnvelope("", names.dead, b"{}", dict(got[0].headers)))
        message = publisher.channel.basic_get(names.dead, no_ack=True)
        assert message is not None and message.headers == {b"k\xff": "v"}
    finally:
        publisher.close()
        transport.close()
        cleanup(amqp_url, names)


def test_headers_too_large_for_a_frame_fail_alone_and_keep_the_connection(amqp_url,
                                                                         names) -> None:
    """RabbitMQ closed the connection (FRAME_ERROR) and every retry did the same."""
    transport = open_transport(amqp_url)
    try:
        transport.declare(Topology.build([], [names.queue], []))
        huge = OutgoingEnvelope("", names.queue, b"{}", {"big": "h" * 140_000})
        with pytest.raises(exceptions.PublishFailed) as raised:
            confirm_all([transport.publish(OutgoingEnvelope("", names.queue, b"1", {})),
                         transport.publish(huge)])
        assert raised.value.unencodable == [1]
        assert "a frame of this connection holds" in str(raised.value)
        connection = transport._pub_conn
        transport.publish(OutgoingEnvelope("", names.queue, b"2", {}))
        assert transport._pub_conn is connection  # not dropped and re-opened
        assert transport.queue_size(names.queue) == 2
    finally:
        transport.close()
        cleanup(amqp_url, names)


def test_a_message_whose_headers_cannot_travel_is_dead_lettered_anyway(amqp_url) -> None:
    """Its dead letter could not be published either: it stayed un-acked, held a prefetch
    slot for ever, and enough of them stopped the service."""
    names = Names(service=hostile.SERVICE)
    try:
        with hostile.Hostility(amqp_url, names) as fire:
            headers = {**hostile.valid_headers("fail", reply_to=""), "big": "h" * 130_850}
            assert fire.send(b'{"payload": {}}', {"headers": headers}) is None
            outcome = fire.server.outcomes[-1]
            assert outcome.fate == "dead" and outcome.handled == 1
            assert fire.final_call() == {"keys": 1}
        channel = RawPublisher(amqp_url)
        try:
            dead = channel.channel.basic_get(names.dead, no_ack=True)
        finally:
            channel.close()
        assert dead is not None and "big" not in dead.headers
        assert "frame" in dead.headers[server.DEAD_LETTER_DROPPED_HEADER]
        assert "refuses" in dead.headers["x-tavrida-dead-reason"]
    finally:
        transport = open_transport(amqp_url)
        transport.delete(queues=[f"{names.prefix}.answers"])
        transport.close()
        cleanup(amqp_url, names)


def test_first_call_after_a_connection_loss_is_answered(amqp_url, unique) -> None:
    """The exclusive reply queue dies with its connection; a request published before the
    client noticed lost its answer: the first call after every cut timed out."""
    from soak.secrets import SERVICE, Secretive

    names = Names(prefix=unique.prefix, service=SERVICE)
    disc = names.discovery()
    Secretive.set_discovery(disc)
    srv = server.Server(amqp_url, names.queue, names.exchange, [Secretive])
    srv.start()
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    proxy = TcpProxy.for_url(amqp_url).start()
    from tavrida import client

    cli = client.RPCClient(ConnectionConfig.from_url(proxy.url(amqp_url), retry_delay=0.1),
                           disc, source=CLIENT)
    try:
        assert cli.secretive.echo(value=1).call(timeout=5) == {"value": 1}
        for value in range(2, 5):
            assert proxy.cut() >= 2
            time.sleep(0.1)  # the resets arrive; nobody reads the reply connection
            assert cli.secretive.echo(value=value).call(timeout=5) == {"value": value}
    finally:
        cli.close()
        proxy.close()
        srv.stop()
        thread.join(15)
        cleanup(amqp_url, names)


def test_redis_gives_back_what_a_lost_connection_held(redis_url, names) -> None:
    """Un-acked messages of a cut Redis connection waited an hour in kombu's unacked hash."""
    direct = open_transport(redis_url)
    proxy = TcpProxy.for_url(redis_url).start()
    consumer = KombuTransport(ConnectionConfig.from_url(proxy.url(redis_url), retry_delay=0.1))
    try:
        direct.declare(Topology.build([names.exchange], [names.queue],
                                      [Binding(names.queue, names.exchange, "#")]))
        confirm_all([direct.publish(OutgoingEnvelope(names.exchange, "k", str(i).encode(), {}))
                     for i in range(5)])
        held: List[Any] = []

        def on(delivery: Any) -> None:
            held.append(delivery)
            if len(held) > 3:
                delivery.ack()  # after the cut: take everything

        consumer.consume(names.queue, on, 3)
        drain_until(lambda: len(held) == 3, consumer)
        # Prefetch full: no BRPOP is waiting, so the cut shows when the next one is sent --
        # and kombu's channel close then failed before giving back what it held.
        assert proxy.cut() > 0
        held[0].ack()
        drain_until(lambda: len(held) == 7, consumer)
        again = {d.body: d.redelivered for d in held[3:]}
        assert again == {b"1": True, b"2": True, b"3": False, b"4": False}
    finally:
        consumer.close()
        proxy.close()
        direct.close()
        cleanup(redis_url, names)


def test_redis_loses_nothing_popped_when_the_connection_dies(redis_url, names) -> None:
    """BRPOP removed a message as Redis sent it: a cut in that moment, or while kombu
    recorded it as un-acked, lost it (a few per thirty cuts)."""
    import random

    direct = open_transport(redis_url)
    proxy = TcpProxy.for_url(redis_url).start()
    consumer = KombuTransport(ConnectionConfig.from_url(proxy.url(redis_url), retry_delay=0.1))
    count, cuts = 3000, 30
    seen: dict = {}
    try:
        direct.declare(Topology.build([names.exchange], [names.queue],
                                      [Binding(names.queue, names.exchange, "#")]))

        def on(delivery: Any) -> None:
            seen[delivery.body] = seen.get(delivery.body, 0) + 1
            delivery.ack()

        consumer.consume(names.queue, on, 10)

        def produce() -> None:
            for i in range(count):
                direct.publish(OutgoingEnvelope(names.exchange, "k", str(i).encode(), {}))

        def cut() -> None:
            rng = random.Random(7)
            for _ in range(cuts):
                time.sleep(rng.uniform(0.02, 0.15))
                proxy.cut()

        threads = [threading.Thread(target=produce), threading.Thread(target=cut)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while len(seen) < count and time.monotonic() < deadline:
            consumer.drain(0.05)
        for t in threads:
            t.join(30)
        missing = count - len(seen)
        assert missing == 0, f"{missing} of {count} lost with {cuts} cuts"
    finally:
        consumer.close()
        proxy.close()
        direct.close()
        cleanup(redis_url, names)


def test_redis_consumer_leaves_no_in_flight_list_behind(redis_url, names) -> None:
    import redis

    transport = open_transport(redis_url)
    try:
        transport.declare(Topology.build([], [names.queue], []))
        got: List[Any] = []
        transport.consume(names.queue, lambda d: (got.append(d), d.ack()), 10)
        transport.publish(OutgoingEnvelope("", names.queue, b"x", {}))
        drain_until(lambda: len(got) == 1, transport)
    finally:
        transport.close()
    client = redis.Redis.from_url(redis_url)
    try:
        assert not list(client.scan_iter(match=f"{names.queue}.tavrida-inflight.*"))
    finally:
        client.close()
        cleanup(redis_url, names)


def test_raw_publisher_sees_broker_refusals(amqp_url, names) -> None:
    """The hostile scenario counts what RabbitMQ refuses as never in: make sure it can tell."""
    publisher = RawPublisher(amqp_url)
    transport = open_transport(amqp_url)
    try:
        transport.declare(Topology.build([], [names.queue], []))
        assert publisher.publish("", names.queue, b"{}", {"delivery_mode": 7}) is not None
        assert publisher.publish("", names.queue, b"{}", {"headers": {"u": Field("U", 1)}})
        assert publisher.publish("", names.queue, b"{}", {"delivery_mode": 2}) is None
        assert transport.queue_size(names.queue) == 1
    finally:
        publisher.close()
        transport.close()
        cleanup(amqp_url, names)

"""The in-memory transport behaves like a RabbitMQ topic broker.

What every transport does is the contract (tests/transport_contract.py, run on
memory:// by test_contract_memory.py); this module keeps what only the
in-memory broker has: its inspection API, exact round-robin and ordering,
declare checks, per-name brokers, waking drains, the in-thread path of calls.
"""

from __future__ import annotations

import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tavrida import client, discovery, dispatcher, exceptions, service
from tavrida.config import ConnectionConfig
from tavrida.server import Server
from tavrida.transports.base import Binding, DelayQueue, Delivery, OutgoingEnvelope, Topology
from tavrida.transports.memory import (
    MemoryBroker,
    MemoryTransport,
    MemoryTransportError,
    topic_matches,
)

Connect = Callable[[], MemoryTransport]


@pytest.fixture
def broker_name() -> Iterator[str]:
    name = "test-" + uuid.uuid4().hex
    yield name
    MemoryBroker.reset(name)


@pytest.fixture
def connect(broker_name: str) -> Iterator[Connect]:
    """Open transports on this test's own broker; all are closed afterwards."""
    opened: list[MemoryTransport] = []

    def open_transport() -> MemoryTransport:
        transport = MemoryTransport(ConnectionConfig.from_url(f"memory://{broker_name}"))
        opened.append(transport)
        return transport

    yield open_transport
    for transport in opened:
        transport.close()


def envelope(routing_key: str, body: bytes = b"{}", exchange: str = "ex",
             headers: dict | None = None, **kwargs: object) -> OutgoingEnvelope:
    return OutgoingEnvelope(exchange, routing_key, body, dict(headers or {}), **kwargs)


class Collector:
    """A consumer callback that keeps the deliveries, acking them if asked."""

    def __init__(self, ack: bool = False) -> None:
        self.deliveries: list[Delivery] = []
        self.ack = ack

    def __call__(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)
        if self.ack:
            delivery.ack()

    @property
    def bodies(self) -> list[bytes]:
        return [delivery.body for delivery in self.deliveries]


def declare_queues(transport: MemoryTransport, bindings: dict[str, list[str]],
                   exchange: str = "ex") -> None:
    """Declare ``exchange`` and each queue bound with its binding keys."""
    transport.declare(Topology.build(
        [exchange], list(bindings),
        [Binding(queue, exchange, key) for queue, keys in bindings.items() for key in keys]))


def drain_all(transport: MemoryTransport) -> int:
    """Drain without waiting until nothing is left; return how many drains delivered."""
    rounds = 0
    while transport.drain(0):
        rounds += 1
    return rounds


# --------------------------------------------------------------------------- routing


@pytest.mark.parametrize(("pattern", "routing_key", "expected"), [
    ("a.b", "a.b", True),
    ("a.b", "a.c", False),
    ("a.b", "a.b.c", False),
    ("a.b", "a", False),
    ("*", "a", True),
    ("*", "a.b", False),
    ("*", "", False),
    ("a.*", "a.b", True),
    ("a.*", "a", False),
    ("a.*", "a.b.c", False),
    ("*.b", "a.b", True),
    ("*.*", "a.b", True),
    ("*.*", "a", False),
    ("a.*.c", "a.b.c", True),
    ("a.*.c", "a.c", False),
    ("#", "", True),
    ("#", "a", True),
    ("#", "a.b.c", True),
    ("a.#", "a", True),
    ("a.#", "a.b", True),
    ("a.#", "a.b.c", True),
    ("a.#", "b.a", False),
    ("a.#", "ab", False),
    ("#.b", "b", True),
    ("#.b", "a.b", True),
    ("#.b", "x.y.b", True),
    ("#.b", "b.a", False),
    ("a.#.z", "a.z", True),
    ("a.#.z", "a.b.c.z", True),
    ("a.#.z", "a.b.c", False),
    ("#.#", "a.b", True),
    ("#.*", "", False),
    ("#.*", "a", True),
    ("*.#", "a.b.c", True),
    ("", "", True),
    ("", "a", False),
    ("a", "", False),
    ("a*", "ab", False),
    ("a*", "a*", True),
    ("a#", "a.b", False),
    ("a.*", "a.", True),
    ("a.b", "a..b", False),
    ("a.*.b", "a..b", True),
    ("svc.+", "svc.+", True),
    ("a(b).*", "a(b).c", True),
])
def test_topic_matching(pattern: str, routing_key: str, expected: bool) -> None:
    assert topic_matches(pattern, routing_key) is expected


def test_unroutable_messages_raise_and_are_counted(connect: Connect) -> None:
    transport = connect()
    declare_queues(transport, {"q": ["a.b"]})

    with pytest.raises(exceptions.Unroutable) as info:
        transport.publish(envelope("nobody.listens")).wait()
    assert (info.value.exchange, info.value.routing_key) == ("ex", "nobody.listens")
    with pytest.raises(exceptions.Unroutable, match="missing-queue"):
        transport.publish(envelope("missing-queue", exchange="")).wait()

    assert transport.queue_size("q") == 0
    assert transport.broker.unroutable == 2


def test_a_publish_returns_its_confirmation_settled(connect: Connect) -> None:
    transport = connect()
    declare_queues(transport, {"q": ["a.b"]})
    sent = envelope("a.b")
    confirmed = []

    confirmation = transport.publish(sent)
    confirmation.add_done_callback(confirmed.append)

    assert confirmation.done() and confirmation.exception(0) is None
    assert confirmation.envelope is sent and confirmed == [confirmation]
    assert transport.queue_size("q") == 1


def test_a_failed_publish_returns_its_confirmation_failed(connect: Connect) -> None:
    """Publish never raises for the message: the handle says why (settled at once here)."""
    transport = connect()
    declare_queues(transport, {"q": ["a.b"]})

    confirmation = transport.publish(envelope("nobody.listens"))

    assert confirmation.done()
    assert isinstance(confirmation.failure(), exceptions.Unroutable)
    with pytest.raises(exceptions.Unroutable):
        confirmation.wait(0)


def test_a_harness_broker_can_drop_unroutable_messages(connect: Connect) -> None:
    transport = connect()
    transport.broker.drop_unroutable = True
    declare_queues(transport, {"q": ["a.b"]})

    transport.publish(envelope("nobody.listens"))

    assert transport.broker.unroutable == 1


# --------------------------------------------------------------------------- declare / delete


@pytest.mark.parametrize(("topology", "missing"), [
    (Topology.build(queues=["q"], bindings=[Binding("q", "nowhere", "k")]), "nowhere"),
    (Topology.build(exchanges=["ex"], bindings=[Binding("lost", "ex", "k")]), "lost"),
])
def test_binding_to_something_undeclared_raises_and_declares_nothing(
        connect: Connect, topology: Topology, missing: str) -> None:
    transport = connect()

    with pytest.raises(exceptions.IncorrectAMQPConfig) as info:
        transport.declare(topology)

    assert repr(missing) in str(info.value)
    assert transport.broker.queue_names() == []
    assert transport.broker.exchange_names() == []


def test_delete_removes_queues_exchanges_and_their_bindings(connect: Connect) -> None:
    transport = connect()
    declare_queues(transport, {"q1": ["#", "k"], "q2": ["#"]})
    declare_queues(transport, {"q1": ["x"]}, exchange="other")

    transport.delete(queues=["q1"])
    assert transport.broker.bindings() == [Binding("q2", "ex", "#")]
    assert transport.queue_size("q1") is None
    transport.publish(envelope("k"))
    assert transport.queue_size("q2") == 1

    transport.delete(exchanges=["ex"])
    assert transport.broker.bindings() == []
    assert transport.broker.exchange_names() == ["other"]
    with pytest.raises(exceptions.PublishFailed):
        transport.publish(envelope("a")).wait()
    transport.delete(exchanges=["ex"], queues=["q1"])


def test_consume_from_an_undeclared_queue_raises(connect: Connect) -> None:
    with pytest.raises(exceptions.IncorrectAMQPConfig, match="'nope'"):
        connect().consume("nope", Collector(), 0)


# --------------------------------------------------------------------------- delay queues


def test_a_waiting_drain_wakes_when_a_held_message_is_due(connect: Connect) -> None:
    transport = connect()
    delay = DelayQueue("q", 200)
    transport.declare(Topology.build(["ex"], ["q"], [Binding("q", "ex", "#")], delays=[delay]))
    got = Collector(ack=True)
    transport.consume("q", got, 1)
    transport.publish(OutgoingEnvelope("", delay.name, b"held", {"n": 1}))
    assert transport.broker.queue_size(delay.name) == 1
    # Nothing else wakes this drain: it returns True only if it woke for the due message.
    assert transport.drain(30) is True
    assert [(d.body, dict(d.headers), d.routing_key) for d in got.deliveries] == [
        (b"held", {"n": 1}, "q")]
    assert transport.broker.queue_size(delay.name) == 0


def test_advancing_the_clock_moves_what_is_due_and_wakes_its_consumer(connect: Connect) -> None:
    transport, other = connect(), connect()
    short, long = DelayQueue("q", 1000), DelayQueue("q", 60_000)
    transport.declare(Topology.build(["ex"], ["q"], [], delays=[short, long]))
    got = Collector(ack=True)
    transport.consume("q", got, 0)
    for body, delay in ((b"long", long), (b"short-1", short), (b"short-2", short)):
        transport.publish(OutgoingEnvelope("", delay.name, body, {}))
    woken = threading.Thread(target=transport.drain, args=(30,))
    woken.start()
    assert other.broker.advance(1) == 2  # from another thread: the waiting drain takes them
    woken.join(30)
    assert not woken.is_alive() and got.bodies == [b"short-1", b"short-2"]
    assert other.broker.advance(59) == 1
    drain_all(transport)
    assert got.bodies == [b"short-1", b"short-2", b"long"]


def test_a_delay_queue_cannot_be_consumed_and_its_lost_target_drops(connect: Connect) -> None:
    transport = connect()
    delay = DelayQueue("q", 10)
    transport.declare(Topology.build([], ["q"], [], delays=[delay]))
    with pytest.raises(exceptions.IncorrectAMQPConfig, match="delay queue"):
        transport.consume(delay.name, Collector(), 0)
    transport.publish(OutgoingEnvelope("", delay.name, b"orphan", {}))
    transport.delete(queues=["q"])
    before = transport.broker.unroutable
    transport.broker.advance(1)
    assert transport.broker.unroutable == before + 1  # as RabbitMQ drops an unroutable dead letter


# --------------------------------------------------------------------------- copies


def test_delivery_never_shares_state_with_the_publisher(connect: Connect) -> None:
    transport = connect()
    declare_queues(transport, {"q1": ["#"], "q2": ["#"]})
    headers = {"id": "1", "nested": {"list": [1, 2]}}
    body = bytearray(b"original")

    transport.publish(OutgoingEnvelope("ex", "k", body, headers))  # type: ignore[arg-type]
    headers["id"] = "changed"
    headers["nested"]["list"].append(3)
    body[:] = b"mutated!"

    first, second = Collector(), Collector()
    transport.consume("q1", first, 0)
    transport.consume("q2", second, 0)
    assert transport.drain(0)
    one, two = first.deliveries[0], second.deliveries[0]
    assert one.body == two.body == b"original"
    assert isinstance(one.body, bytes)
    assert one.headers == {"id": "1", "nested": {"list": [1, 2]}}
    one.headers["nested"]["list"].clear()  # type: ignore[index]
    assert two.headers == {"id": "1", "nested": {"list": [1, 2]}}


@pytest.mark.parametrize(("kwargs", "properties"), [
    ({}, {"content_type": "application/json", "content_encoding": "utf-8",
          "delivery_mode": 2}),
    ({"content_type": None, "content_encoding": None, "persistent": False},
     {"delivery_mode": 1}),
    ({"content_type": "text/plain", "content_encoding": None},
     {"content_type": "text/plain", "delivery_mode": 2}),
])
def test_properties_carry_only_what_was_set(connect: Connect, kwargs: dict,
                                            properties: dict) -> None:
    transport = connect()
    declare_queues(transport, {"q": ["#"]})
    transport.publish(envelope("key.one", **kwargs))
    seen = Collector()
    transport.consume("q", seen, 0)
    transport.drain(0)

    delivery = seen.deliveries[0]
    assert delivery.properties == properties
    assert (delivery.exchange, delivery.routing_key, delivery.queue) == ("ex", "key.one", "q")
    assert delivery.redelivered is False


# --------------------------------------------------------------------------- consumers


def test_competing_consumers_share_a_queue_round_robin(connect: Connect) -> None:
    publisher, first_server, second_server = connect(), connect(), connect()
    declare_queues(publisher, {"work": ["#"]})
    first, second, third = Collector(ack=True), Collector(ack=True), Collector(ack=True)
    first_server.consume("work", first, 10)
    second_server.consume("work", second, 10)
    second_server.consume("work", third, 10)

    for number in range(6):
        publisher.publish(envelope("job", body=str(number).encode()))
    drain_all(first_server)
    drain_all(second_server)

    assert first.bodies == [b"0", b"3"]
    assert second.bodies == [b"1", b"4"]
    assert third.bodies == [b"2", b"5"]


def test_busy_consumer_is_skipped(connect: Connect) -> None:
    transport = connect()
    declare_queues(transport, {"work": ["#"]})
    slow, fast = Collector(), Collector(ack=True)
    transport.consume("work", slow, 1)
    transport.consume("work", fast, 0)

    for number in range(4):
        transport.publish(envelope("job", body=str(number).encode()))
    drain_all(transport)

    assert slow.bodies == [b"0"]
    assert fast.bodies == [b"1", b"2", b"3"]


def test_drain_delivers_in_publish_order_across_queues(connect: Connect) -> None:
    transport = connect()
    declare_queues(transport, {"a": ["a"], "b": ["b"]})
    seen = Collector(ack=True)
    transport.consume("a", seen, 0)
    transport.consume("b", seen, 0)

    for key in ("a", "b", "b", "a"):
        transport.publish(envelope(key, body=key.encode()))

    assert transport.drain(0) is True
    assert seen.bodies == [b"a", b"b", b"b", b"a"]
    assert transport.drain(0) is False


def test_one_thread_can_run_client_and_server(connect: Connect) -> None:
    server, client = connect(), connect()
    declare_queues(server, {"svc": ["svc.#"]})
    client.declare_reply_queue("client.replies", [Binding("client.replies", "replies",
                                                          "client")])
    replies = Collector(ack=True)

    def serve(delivery: Delivery) -> None:
        server.publish(envelope("client", exchange="replies", body=delivery.body.upper()))
        delivery.ack()

    server.consume("svc", serve, 1)
    client.consume("client.replies", replies, 0)
    client.publish(envelope("svc.echo", body=b"ping"))

    assert client.drain(0) is False
    assert server.drain(0) is True
    assert client.drain(0) is True
    assert replies.bodies == [b"PING"]


def test_callback_error_keeps_the_rest_of_the_batch(connect: Connect) -> None:
    transport = connect()
    declare_queues(transport, {"q": ["#"]})
    seen: list[bytes] = []

    def explode_on_first(delivery: Delivery) -> None:
        seen.append(delivery.body)
        delivery.ack()
        if len(seen) == 1:
            raise ValueError("boom")

    transport.consume("q", explode_on_first, 0)
    for number in range(3):
        transport.publish(envelope("k", body=str(number).encode()))

    with pytest.raises(ValueError, match="boom"):
        transport.drain(0)
    assert transport.drain(0) is True
    assert seen == [b"0", b"1", b"2"]


# --------------------------------------------------------------------------- ack / reject


def test_reject_with_requeue_redelivers_first(connect: Connect) -> None:
    transport = connect()
    declare_queues(transport, {"q": ["#"]})
    transport.publish(envelope("k", body=b"first"))
    transport.publish(envelope("k", body=b"second"))
    seen = Collector()
    transport.consume("q", seen, 1)

    transport.drain(0)
    seen.deliveries[0].reject(requeue=True)
    transport.drain(0)
    seen.deliveries[1].ack()
    transport.drain(0)

    assert seen.bodies == [b"first", b"first", b"second"]
    assert [d.redelivered for d in seen.deliveries] == [False, True, False]


@pytest.mark.parametrize(("first", "second"), [
    ("ack", "ack"), ("ack", "reject"), ("reject", "ack"), ("requeue", "reject"),
])
def test_settling_twice_raises(connect: Connect, first: str, second: str) -> None:
    transport = connect()
    declare_queues(transport, {"q": ["#"]})
    transport.publish(envelope("k"))
    seen = Collector()
    transport.consume("q", seen, 0)
    transport.drain(0)
    delivery = seen.deliveries[0]
    actions = {"ack": delivery.ack, "reject": lambda: delivery.reject(requeue=False),
               "requeue": lambda: delivery.reject(requeue=True)}

    actions[first]()
    with pytest.raises(MemoryTransportError, match="already"):
        actions[second]()


def test_close_requeues_unacked_messages_as_redelivered(connect: Connect) -> None:
    publisher, crashing, survivor = connect(), connect(), connect()
    declare_queues(publisher, {"q": ["#"]})
    for number in range(3):
        publisher.publish(envelope("k", body=str(number).encode()))
    lost = Collector()
    crashing.consume("q", lost, 0)
    crashing.drain(0)
    lost.deliveries[1].ack()

    crashing.close()

    assert publisher.broker.consumer_count("q") == 0
    assert [body for _, body in publisher.broker.messages("q")] == [b"0", b"2"]
    saved = Collector(ack=True)
    survivor.consume("q", saved, 0)
    survivor.drain(0)
    assert saved.bodies == [b"0", b"2"]
    assert all(delivery.redelivered for delivery in saved.deliveries)
    with pytest.raises(MemoryTransportError, match="closed"):
        lost.deliveries[0].ack()


def test_close_requeues_messages_pushed_but_not_yet_drained(connect: Connect) -> None:
    publisher, server = connect(), connect()
    declare_queues(publisher, {"q": ["#"]})
    server.consume("q", Collector(), 0)
    publisher.publish(envelope("k"))
    assert publisher.queue_size("q") == 0

    server.close()

    assert publisher.queue_size("q") == 1
    assert server.drain(0) is False


# --------------------------------------------------------------------------- drain and threads


def run_drain_in_thread(transport: MemoryTransport, timeout: float,
                        ) -> tuple[threading.Thread, threading.Event, dict]:
    """Start ``transport.drain(timeout)`` in a thread; report its result and duration."""
    started = threading.Event()
    outcome: dict = {}

    def run() -> None:
        started.set()
        begin = time.monotonic()
        outcome["result"] = transport.drain(timeout)
        outcome["elapsed"] = time.monotonic() - begin

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(5)
    return thread, started, outcome


def test_ack_that_frees_prefetch_wakes_drain(connect: Connect) -> None:
    server = connect()
    declare_queues(server, {"q": ["#"]})
    server.publish(envelope("k", body=b"1"))
    server.publish(envelope("k", body=b"2"))
    seen = Collector()
    server.consume("q", seen, 1)
    server.drain(0)

    thread, _, outcome = run_drain_in_thread(server, 30)
    seen.deliveries[0].ack()
    thread.join(10)

    assert outcome["result"] is True
    assert seen.bodies == [b"1", b"2"]


def blocked_drains(transport: MemoryTransport, count: int) -> None:
    """Return once ``count`` drains of ``transport`` are blocked waiting (5 s at most)."""
    deadline = time.monotonic() + 5
    while transport.inbox.waiting != count and time.monotonic() < deadline:
        threading.Event().wait(0.001)  # no event tells when a drain blocks
    assert transport.inbox.waiting == count


def test_publish_wakes_a_drain_and_close_wakes_every_other(connect: Connect) -> None:
    transport = connect()
    declare_queues(transport, {"q": ["#"]})
    seen = Collector(ack=True)
    transport.consume("q", seen, 0)
    drains = [run_drain_in_thread(transport, None) for _ in range(3)]
    blocked_drains(transport, 3)

    transport.publish(envelope("k", body=b"1"))
    blocked_drains(transport, 2)  # one took the message, two still wait
    transport.close()
    for thread, _, _ in drains:
        thread.join(10)

    assert not any(thread.is_alive() for thread, _, _ in drains)
    assert sorted(outcome["result"] for _, _, outcome in drains) == [False, False, True]
    assert seen.bodies == [b"1"]


def test_a_wake_after_a_drain_timed_out_is_not_kept_for_the_next(connect: Connect) -> None:
    server = connect()
    declare_queues(server, {"q": ["#"]})
    seen = Collector(ack=True)
    server.consume("q", seen, 0)
    assert server.drain(0.01) is False
    server.stop()  # nobody waits: the next drain returns at once, having run nothing
    assert server.drain(30) is False
    server.publish(envelope("k", body=b"1"))
    assert server.drain(30) is True
    assert server.drain(0.01) is False

    assert seen.bodies == [b"1"]


def test_concurrent_publishers_and_consumers_lose_nothing(connect: Connect) -> None:
    publishers = [connect() for _ in range(4)]
    servers = [connect() for _ in range(3)]
    declare_queues(publishers[0], {"work": ["#"]})
    per_publisher = 500
    total = per_publisher * len(publishers)
    received: list[bytes] = []
    lock = threading.Lock()
    all_done = threading.Event()

    def handle(delivery: Delivery) -> None:
        with lock:
            received.append(delivery.body)
            if len(received) == total:
                all_done.set()
        delivery.ack()

    def serve(transport: MemoryTransport) -> None:
        transport.consume("work", handle, 5)
        while not all_done.is_set():
            transport.drain(1)

    def publish(index: int, transport: MemoryTransport) -> None:
        for number in range(per_publisher):
            transport.publish(envelope("job", body=f"{index}-{number}".encode()))

    threads = [threading.Thread(target=serve, args=(server,), daemon=True) for server in servers]
    threads += [threading.Thread(target=publish, args=pair, daemon=True)
                for pair in enumerate(publishers)]
    for thread in threads:
        thread.start()
    assert all_done.wait(30)
    for server in servers:
        server.stop()
    for thread in threads:
        thread.join(10)

    assert sorted(received) == sorted(f"{i}-{n}".encode() for i in range(len(publishers))
                                      for n in range(per_publisher))


# --------------------------------------------------------------------------- in-thread calls


class Answering:
    """A server callback: records its thread, answers on the caller's reply queue, acks."""

    def __init__(self, transport: MemoryTransport, fail: bool = False) -> None:
        self.transport = transport
        self.fail = fail
        self.threads: list[int] = []

    def __call__(self, delivery: Delivery) -> None:
        self.threads.append(threading.get_ident())
        if self.fail:
            raise ValueError("handler broke")
        self.transport.publish(envelope("reply", body=b"answer to " + delivery.body))
        delivery.ack()


def caller_and_server(connect: Connect, fail: bool = False,
                      ) -> tuple[MemoryTransport, Collector, MemoryTransport, Answering]:
    """A caller with a reply queue (bound with ``reply``) and a server consuming ``q``."""
    server = connect()
    declare_queues(server, {"q": ["job"]})
    answering = Answering(server, fail)
    server.consume("q", answering, 0)
    caller = connect()
    caller.broker.inline_calls = True  # the in-thread path (opt-in); tests turn it off again
    caller.declare_reply_queue("replies", [Binding("replies", "ex", "reply")])
    answers = Collector(ack=True)
    caller.consume("replies", answers, 0)
    return caller, answers, server, answering


def drain_in_thread(transport: MemoryTransport, timeout: float) -> tuple[threading.Thread, dict]:
    """``transport.drain(timeout)`` in a thread, blocked once this returns; result or error."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = transport.drain(timeout)
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    blocked_drains(transport, 1)
    return thread, outcome


@pytest.fixture
def no_preemption() -> Iterator[None]:
    """No switch of the interpreter to another thread until this one blocks.

    A server thread woken by a publish could otherwise take its message
    itself before the caller's drain does (the slow path, also correct).
    """
    interval = sys.getswitchinterval()
    sys.setswitchinterval(60.0)
    yield
    sys.setswitchinterval(interval)


@pytest.mark.usefixtures("no_preemption")
def test_a_callers_drain_runs_a_waiting_servers_callbacks_in_its_own_thread(
        connect: Connect) -> None:
    caller, answers, server, answering = caller_and_server(connect)
    thread, outcome = drain_in_thread(server, 30)

    caller.publish(envelope("job", body=b"1"))
    caller.publish(envelope("job", body=b"2"))
    while len(answers.deliveries) < 2:
        assert caller.drain(30) is True
    server.stop()
    thread.join(10)

    assert answers.bodies == [b"answer to 1", b"answer to 2"]
    assert answering.threads == [threading.get_ident()] * 2  # no hand-off to the server thread
    assert outcome == {"result": True}  # the server's drain counts them as its own
    assert server.queue_size("q") == 0 and caller.queue_size("replies") == 0


@pytest.mark.usefixtures("no_preemption")
def test_a_callback_failing_in_a_callers_thread_is_raised_by_its_owners_drain(
        connect: Connect) -> None:
    caller, answers, server, answering = caller_and_server(connect, fail=True)
    thread, outcome = drain_in_thread(server, 30)

    caller.publish(envelope("job", body=b"1"))
    assert caller.drain(0.05) is False  # ran the callback, which answered nothing
    thread.join(10)

    assert answering.threads == [threading.get_ident()]
    assert isinstance(outcome.get("error"), ValueError)
    assert answers.deliveries == []


def test_with_inline_calls_off_callbacks_run_in_their_own_thread(connect: Connect) -> None:
    caller, answers, server, answering = caller_and_server(connect)
    caller.broker.inline_calls = False
    thread, outcome = drain_in_thread(server, 30)

    caller.publish(envelope("job", body=b"1"))
    assert caller.drain(30) is True
    thread.join(10)

    assert answers.bodies == [b"answer to 1"]
    assert answering.threads == [thread.ident]
    assert outcome == {"result": True}


def test_a_closed_transport_is_no_longer_offered_to_callers(connect: Connect) -> None:
    caller, answers, server, _ = caller_and_server(connect)
    caller.broker.inline_calls = False  # nobody takes the offer of the blocked server
    thread, _ = drain_in_thread(server, 30)
    caller.publish(envelope("job", body=b"1"))
    assert caller.drain(30) is True
    thread.join(10)
    server.close()

    assert answers.bodies == [b"answer to 1"]
    assert server.inbox not in caller.broker._offers  # the broker keeps no closed connection


def test_a_drain_without_reply_queue_runs_only_its_own_callbacks(connect: Connect) -> None:
    _, _, server, answering = caller_and_server(connect)
    publisher = connect()
    declare_queues(publisher, {"own": ["own"]})
    publisher.consume("own", Collector(ack=True), 0)
    thread, outcome = drain_in_thread(server, 30)

    publisher.publish(envelope("job", body=b"1"))
    assert publisher.drain(0.05) is False  # waits for its own messages only
    thread.join(10)

    assert answering.threads == [thread.ident]  # a server's connection helps nobody
    assert outcome == {"result": True}


# --------------------------------------------------------------------------- brokers


def test_each_memory_name_has_its_own_broker(broker_name: str) -> None:
    other_name = broker_name + "-other"
    same = MemoryTransport(ConnectionConfig.from_url(f"memory://{broker_name}"))
    also_same = MemoryTransport(ConnectionConfig.from_url(f"memory://{broker_name}"))
    other = MemoryTransport(ConnectionConfig.from_url(f"memory://{other_name}"))
    try:
        declare_queues(same, {"q": ["#"]})

        assert also_same.broker is same.broker
        assert other.broker is not same.broker
        assert other.broker.queue_names() == []
        with pytest.raises(exceptions.PublishFailed):
            other.publish(envelope("k")).wait()
        also_same.publish(envelope("k"))
        assert same.queue_size("q") == 1
        assert MemoryTransport(ConnectionConfig.from_url("memory://")).broker.name == "/"
    finally:
        for transport in (same, also_same, other):
            transport.close()
        MemoryBroker.reset(other_name)


def test_reset_gives_a_fresh_broker(broker_name: str) -> None:
    before = MemoryBroker.get(broker_name)
    MemoryBroker.reset(broker_name)

    assert MemoryBroker.get(broker_name) is not before
    assert MemoryBroker.get(broker_name) is MemoryBroker.get(broker_name)


def test_closed_transport_refuses_to_publish(connect: Connect) -> None:
    transport = connect()
    declare_queues(transport, {"q": ["#"]})
    transport.close()
    transport.close()

    with pytest.raises(exceptions.PublishFailed, match="closed"):
        transport.publish(envelope("k")).wait()
    assert transport.drain(0) is False


# ------------------------------------------------------------------ in-thread calls, end to end


@dispatcher.rpc_service("inline_svc")
class InlineService(service.ServiceController):
    """``echo`` tracks how many run at once; ``slow`` waits for its gate."""

    running = 0
    most = 0
    threads: set[int] = set()
    gate = threading.Event()

    @dispatcher.rpc_method(service="inline_svc", method="echo")
    def echo(self, request: Any, proxy: Any, value: int) -> dict:
        cls = type(self)
        cls.running += 1
        cls.most = max(cls.most, cls.running)
        cls.threads.add(threading.get_ident())
        cls.running -= 1
        return {"value": value}

    @dispatcher.rpc_method(service="inline_svc", method="slow")
    def slow(self, request: Any, proxy: Any) -> dict:
        type(self).gate.wait(10)
        return {"late": True}


Served = tuple[str, discovery.LocalDiscovery, threading.Thread]


@pytest.fixture
def inline_server(broker_name: str) -> Iterator[Served]:
    """InlineService served by a Server thread, the in-thread path on."""
    yield from serve_inline_service(broker_name, inline=True)


@pytest.fixture
def default_server(broker_name: str) -> Iterator[Served]:
    """InlineService served by a Server thread, the broker as it comes (no in-thread path)."""
    yield from serve_inline_service(broker_name, inline=False)


def serve_inline_service(broker_name: str, inline: bool) -> Iterator[Served]:
    """InlineService served by a Server thread (no workers); yields (url, discovery, thread)."""
    url = f"memory://{broker_name}"
    disc = discovery.LocalDiscovery()
    disc.register_remote_service("inline_svc", "inline_exchange")
    InlineService.set_discovery(disc)
    InlineService.running = InlineService.most = 0
    InlineService.threads = set()
    InlineService.gate = threading.Event()
    if inline:
        MemoryBroker.get(broker_name).inline_calls = True
    srv = Server(url, "inline_queue", "inline_exchange", [InlineService])
    srv.start()
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    yield url, disc, thread
    InlineService.gate.set()
    srv.stop()
    thread.join(10)
    assert not thread.is_alive()  # stopped promptly


def test_calls_from_threads_run_one_handler_at_a_time_in_the_callers_threads(
        inline_server: Served) -> None:
    url, disc, server_thread = inline_server
    results: dict[int, list[int]] = {}

    def calls(index: int) -> None:
        with client.RPCClient(url, disc, source=f"caller{index}") as cli:
            results[index] = [cli.inline_svc.echo(value=n).call(timeout=10)["value"]
                              for n in range(200)]

    threads = [threading.Thread(target=calls, args=(index,)) for index in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert results == {index: list(range(200)) for index in range(3)}
    assert InlineService.most == 1  # never two handlers of the server at once
    assert InlineService.threads <= {thread.ident for thread in threads} | {server_thread.ident}
    assert InlineService.threads & {thread.ident for thread in threads}  # run by callers


def test_by_default_a_slow_handler_times_the_call_out(default_server: Served) -> None:
    url, disc, server_thread = default_server
    with client.RPCClient(url, disc, source="caller") as cli:
        with pytest.raises(exceptions.CallTimeout):
            cli.inline_svc.slow().call(timeout=0.1)
        InlineService.gate.set()


"""Broker-free tests of the kombu adapter's own logic, with recording channels.

No broker is contacted: a :class:`KombuTransport` opens connections lazily,
and these tests drive its bookkeeping directly -- the retry helper, publisher
confirm and return matching, settle ordering, the binding check of virtual
brokers -- with fake channel objects that record what they are asked. The
behaviour on real brokers is tested in tests/integration.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any, List, Optional, Tuple

import amqp
import pytest

from tavrida import exceptions
from tavrida.config import ConnectionConfig
from tavrida.transports.base import Binding, OutgoingEnvelope
from tavrida.transports.kombu import KombuDelivery, KombuTransport
from tavrida.transports.kombu.batch import Batch
from tavrida.transports.kombu.compat.virtual import NoRoute, strict_lookup
from tavrida.transports.kombu.confirm_tracker import ConfirmTracker
from tavrida.transports.kombu.consuming_connection import ConsumingConnection
from tavrida.transports.kombu.declarations import Declarations
from tavrida.transports.kombu.deliveries import Consumer
from tavrida.transports.kombu.reconnect import retry_call

#: Nothing listens here: nothing in these tests connects.
AMQP_URL = "amqp://guest:guest@127.0.0.1:25699//"


class Broken(OSError):
    """A connection error the retry helper retries."""


class Refused(Exception):
    """An error retrying cannot mend."""


def failed(cause: Optional[BaseException], reason: str) -> exceptions.ConnectionFailed:
    return exceptions.ConnectionFailed(safe_url="test://", cause=cause, reason=reason)


def retry(fun: Any, **options: Any) -> Any:
    settings = dict(attempts=-1, delay=0.01, max_interval=0.05, deadline=None,
                    wake=threading.Event(), retry_errors=(Broken,), fatal_errors=(Refused,),
                    failed=failed)
    settings.update(options)
    return retry_call(fun, **settings)


class Flaky:
    """Raises ``error`` the first ``times`` calls, then returns ``"done"``."""

    def __init__(self, times: int, error: Optional[BaseException] = None) -> None:
        self.times, self.error, self.calls = times, error or Broken("down"), 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.times:
            raise self.error
        return "done"


# -- the retry helper ------------------------------------------------------------------------------

def test_retry_returns_once_the_errors_stop() -> None:
    fun = Flaky(3)
    errors: List[BaseException] = []
    assert retry(fun, on_error=errors.append) == "done"
    assert fun.calls == 4 and len(errors) == 3


def test_retry_gives_up_after_its_attempts() -> None:
    fun = Flaky(10)
    with pytest.raises(exceptions.ConnectionFailed, match="gave up") as caught:
        retry(fun, attempts=3, give_up="gave up after 3 attempt(s)")
    assert fun.calls == 3 and isinstance(caught.value.__cause__, Broken)


def test_retry_raises_an_error_retrying_cannot_mend_at_once() -> None:
    fun = Flaky(10, Refused("bad password"))
    with pytest.raises(exceptions.ConnectionFailed):
        retry(fun)
    assert fun.calls == 1


def test_retry_stops_at_the_deadline() -> None:
    fun = Flaky(10 ** 9)
    start = time.monotonic()
    with pytest.raises(exceptions.ConnectionFailed, match="timed out"):
        retry(fun, delay=0.05, deadline=start + 0.3)
    assert time.monotonic() - start < 0.3 + 3


def test_retry_wakes_and_stops_when_interrupted() -> None:
    wake = threading.Event()
    stopped = threading.Event()

    def check() -> None:
        if stopped.is_set():
            raise failed(None, "stopped while the broker was unreachable")

    def interrupt() -> None:
        stopped.set()
        wake.set()

    timer = threading.Timer(0.2, interrupt)
    start = time.monotonic()
    timer.start()
    try:
        with pytest.raises(exceptions.ConnectionFailed, match="stopped"):
            retry(Flaky(10 ** 9), delay=60.0, max_interval=60.0, wake=wake, check=check)
    finally:
        timer.cancel()
    assert time.monotonic() - start < 0.2 + 3  # not the 60 s sleep


def test_retry_without_pauses_does_not_sleep_nor_look_at_the_deadline() -> None:
    fun = Flaky(2)
    assert retry(fun, attempts=3, delay=60.0, deadline=time.monotonic() - 1,
                 pause=False) == "done"


def test_a_retry_made_outside_a_deadline_block_gives_up_at_its_timeout() -> None:
    """A publish's first attempt made with no deadline (a run of writes): its reconnect
    loop is bounded by the publish timeout all the same, and leaves no deadline behind."""
    # Without the bound the loop would give up after its 50 attempts instead (about 13 s).
    context = KombuTransport(ConnectionConfig.from_url(
        AMQP_URL, retry_delay=0.01, reconnect_attempts=50))._context
    fun = Flaky(10 ** 9)
    start = time.monotonic()
    with pytest.raises(exceptions.ConnectionFailed, match="timed out"):
        context.retry(fun, False, "publishing to", once_if_interrupted=True, timeout=0.3)
    assert time.monotonic() - start < 0.3 + 3 and fun.calls > 1
    assert context.local.deadline is None


# -- publisher confirms and returns ----------------------------------------------------------------

def envelope(routing_key: str, body: bytes = b"{}", mandatory: bool = True) -> OutgoingEnvelope:
    return OutgoingEnvelope(exchange="x", routing_key=routing_key, body=body, headers={},
                            mandatory=mandatory)


class Returned:
    def __init__(self, body: bytes) -> None:
        self.body = body


@pytest.fixture
def publisher() -> ConfirmTracker:
    """The confirm tracker of a confirming publishing channel (nothing connected)."""
    transport = KombuTransport(ConnectionConfig.from_url(AMQP_URL))
    assert transport._context.confirms
    return ConfirmTracker(confirms=True)


def published(tracker: ConfirmTracker, envelopes: List[OutgoingEnvelope]) -> Batch:
    batch = Batch(envelopes)
    for index in range(len(envelopes)):
        tracker.register(batch, index)
    return batch


def test_acks_settle_one_or_every_tag_up_to_theirs(publisher: ConfirmTracker) -> None:
    batch = published(publisher, [envelope(f"k{i}") for i in range(5)])
    publisher.on_ack(2, False)
    assert list(batch.todo) == [0, 2, 3, 4]
    publisher.on_ack(4, True)
    assert list(batch.todo) == [4] and not batch.failed
    publisher.on_nack(5, False)
    assert batch.failed == {4: "the broker nacked it"} and not batch.todo
    assert not batch.inflight and not publisher.waiting


def test_acks_settle_the_publishes_of_every_waiting_batch(publisher: ConfirmTracker) -> None:
    first = published(publisher, [envelope("a0"), envelope("a1")])
    second = published(publisher, [envelope("b0")])
    publisher.on_ack(3, True)
    assert not first.todo and not second.todo and not publisher.waiting


def test_a_lost_channel_leaves_every_waiting_publish_to_send_again(
        publisher: ConfirmTracker) -> None:
    first = published(publisher, [envelope("a0")])
    second = published(publisher, [envelope("b0")])
    publisher.lose_all()
    assert list(first.todo) == [0] and list(second.todo) == [0]
    assert not first.inflight and not second.inflight and not publisher.waiting


def test_a_return_fails_the_first_matching_unconfirmed_publish(
        publisher: ConfirmTracker) -> None:
    same = envelope("nobody", b"same")
    batch = published(publisher, [envelope("k0"), same, same, envelope("nobody", b"other")])
    publisher.on_return(Exception("NO_ROUTE"), "x", "nobody", Returned(b"same"))
    publisher.on_return(Exception("NO_ROUTE"), "x", "nobody", Returned(b"same"))
    publisher.on_ack(4, True)  # the returned ones are confirmed too: they stay failed
    assert batch.unroutable == {1, 2} and set(batch.failed) == {1, 2}
    assert not batch.todo
    error = batch.error()
    assert isinstance(error, exceptions.Unroutable) and len(error.envelopes) == 2


def test_a_return_of_a_notification_drops_it_quietly(publisher: ConfirmTracker) -> None:
    batch = published(publisher, [envelope("event", mandatory=False)])
    publisher.on_return(Exception("NO_ROUTE"), "x", "event", Returned(b"{}"))
    assert not batch.todo and not batch.failed


def test_a_return_matching_nothing_is_only_logged(publisher: ConfirmTracker,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    batch = published(publisher, [envelope("k0")])
    with caplog.at_level(logging.WARNING):
        publisher.on_return(Exception("NO_ROUTE"), "x", "other", Returned(b"{}"))
    assert list(batch.todo) == [0] and "reached no queue" in caplog.text


def test_a_channel_error_blames_the_publishes_to_the_missing_exchange(
        publisher: ConfirmTracker) -> None:
    batch = published(publisher, [envelope("k0"), OutgoingEnvelope("gone", "k", b"{}", {})])
    error = amqp.NotFound(reply_text="NOT_FOUND - no exchange 'gone' in vhost '/'")
    publisher.on_channel_error(batch, error)
    assert list(batch.failed) == [1] and list(batch.todo) == [0]
    assert not publisher.waiting
    assert not batch.inflight  # the innocent one goes out again


def test_a_body_over_the_brokers_size_limit_fails_alone_as_unencodable(
        publisher: ConfirmTracker) -> None:
    # RabbitMQ's 406 for a body over max_message_size names sizes, not the message.
    batch = published(publisher, [envelope("k0"), envelope("big", body=b"x" * 200)])
    error = amqp.PreconditionFailed(
        reply_text="PRECONDITION_FAILED - message size 200 is larger than configured max "
                   "size 100")
    publisher.on_channel_error(batch, error)
    assert list(batch.failed) == [1] and list(batch.todo) == [0]
    assert batch.unencodable == {1}  # it can never go as it is: its caller gets an Error
    assert "larger than configured max size" in batch.error().failed[1]


# -- settling --------------------------------------------------------------------------------------

class RecordingChannel:
    """Records acks and rejects, in order."""

    def __init__(self) -> None:
        self.calls: List[Tuple[str, Any, Optional[bool]]] = []

    def basic_ack(self, delivery_tag: Any, multiple: bool = False) -> None:
        self.calls.append(("acks up to" if multiple else "ack", delivery_tag, None))

    def basic_reject(self, delivery_tag: Any, requeue: bool) -> None:
        self.calls.append(("reject", delivery_tag, requeue))


@pytest.fixture
def consuming() -> ConsumingConnection:
    """A transport's consuming side that believes its connection is up (generation 1)."""
    transport = KombuTransport(ConnectionConfig.from_url(AMQP_URL))
    consuming = transport._consuming
    consuming._link.conn = object()  # type: ignore[assignment]
    consuming._link.generation = 1
    return consuming


def delivery(consuming: ConsumingConnection, channel: Any, tag: int,
             generation: int = 1) -> KombuDelivery:
    return KombuDelivery(consuming.settlement, channel, tag, generation, b"{}", {}, {}, "x",
                         "k", "q", False)


def test_settles_go_out_at_once_when_the_connection_is_free(consuming: ConsumingConnection) -> None:
    channel = RecordingChannel()
    delivery(consuming, channel, 1).ack()
    delivery(consuming, channel, 2).reject(requeue=True)
    delivery(consuming, channel, 3).reject(requeue=False)
    assert channel.calls == [("ack", 1, None), ("reject", 2, True), ("reject", 3, False)]


def test_settles_from_other_threads_wait_for_the_holder_in_order(
        consuming: ConsumingConnection) -> None:
    channel = RecordingChannel()
    deliveries = [delivery(consuming, channel, tag) for tag in range(1, 6)]
    with consuming._lock:  # drain() is reading
        workers = [threading.Thread(target=d.ack) for d in deliveries]
        for worker in workers:
            worker.start()
            worker.join()
        assert channel.calls == []
        consuming.settlement.perform()
    assert channel.calls == [("ack", tag, None) for tag in range(1, 6)]


def test_an_ack_from_another_thread_while_the_queue_is_emptied_is_not_lost(
        consuming: ConsumingConnection) -> None:
    channel = RecordingChannel()
    first, second = delivery(consuming, channel, 1), delivery(consuming, channel, 2)

    class Settles(collections.deque):  # type: ignore[type-arg]
        """The queue of settles, another thread's ack landing while it is emptied."""

        arrived = False

        def _arrive(self) -> None:
            if not self.arrived:
                self.arrived = True
                worker = threading.Thread(target=second.ack)  # the lock is busy: it queues
                worker.start()
                worker.join()

        def popleft(self) -> Any:
            self._arrive()
            return super().popleft()

        def clear(self) -> None:
            self._arrive()
            super().clear()

    consuming.settlement.queue = Settles()
    with consuming._lock:  # drain() is reading
        worker = threading.Thread(target=first.ack)  # queued: the lock is busy
        worker.start()
        worker.join()
        consuming.settlement.perform()
    consuming.settlement.perform()
    assert channel.calls == [("ack", 1, None), ("ack", 2, None)]


def received(consuming: ConsumingConnection, channel: Any,
             tags: List[int]) -> List[KombuDelivery]:
    """Deliveries of one consumer on ``channel``, as _amqp_delivery records them."""
    consumer = Consumer("q", lambda d: None, 0)
    consumer.channel = channel
    made = []
    for tag in tags:
        one = delivery(consuming, channel, tag)
        one._consumer = consumer
        consumer.received.add(tag)
        made.append(one)
    return made


def test_acks_queued_on_the_draining_thread_go_as_one_when_they_cover_the_channel(
        consuming: ConsumingConnection) -> None:
    channel = RecordingChannel()
    deliveries = received(consuming, channel, [1, 2, 3, 4])
    with consuming.delivering():  # inside drain()'s callbacks
        for one in deliveries[:3]:
            one.ack()
        assert channel.calls == []  # kept back until drain() reads again
        consuming.settlement.perform()
        assert channel.calls == [("acks up to", 3, None)]
        assert deliveries[0]._consumer.received == {4}  # type: ignore[union-attr]
        deliveries[3].ack()
        consuming.settlement.perform()
    assert channel.calls[-1] == ("ack", 4, None)


def test_acks_that_skip_an_unsettled_message_or_meet_a_reject_go_one_by_one(
        consuming: ConsumingConnection) -> None:
    channel = RecordingChannel()
    first, second, third = received(consuming, channel, [1, 2, 3])
    with consuming.delivering():
        first.ack()
        third.ack()  # 2 is still being handled: acking "up to 3" would ack it
        consuming.settlement.perform()
        assert channel.calls == [("ack", 1, None), ("ack", 3, None)]
        channel.calls.clear()
        more = received(consuming, channel, [4, 5])
        more[0].ack()
        second.reject(requeue=True)  # a reject goes out at once, the queued ack before it
        more[1].ack()
        consuming.settlement.perform()
    assert channel.calls == [("ack", 4, None), ("reject", 2, True), ("ack", 5, None)]


def test_a_second_settle_is_ignored_with_a_warning(consuming: ConsumingConnection,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    channel = RecordingChannel()
    one = delivery(consuming, channel, 7)
    one.ack()
    with caplog.at_level(logging.WARNING):
        one.reject(requeue=True)
    assert channel.calls == [("ack", 7, None)] and "already acked" in caplog.text


def test_settles_of_a_lost_connection_are_dropped(consuming: ConsumingConnection) -> None:
    channel = RecordingChannel()
    delivery(consuming, channel, 1, generation=0).ack()  # came on the previous connection
    consuming._link.broken = True
    delivery(consuming, channel, 2).ack()
    assert channel.calls == []


def test_a_failing_settle_marks_the_connection_broken(consuming: ConsumingConnection) -> None:
    class Dead(RecordingChannel):
        def basic_ack(self, delivery_tag: Any) -> None:
            raise consuming._context.connection_errors[0]("gone")

    delivery(consuming, Dead(), 1).ack()
    assert consuming._link.broken


def test_the_consuming_side_tells_the_publishing_side_it_has_no_socket_yet() -> None:
    consuming = KombuTransport(ConnectionConfig.from_url(AMQP_URL))._consuming
    assert consuming.fileno() == -1 and consuming.reply_fd() == -1
    assert not consuming.has_ready()
    with consuming._context.deadline(0.5):
        consuming.check_reply_connection()  # no reply queue: nothing to check, no connect
    consuming.stop()
    assert consuming.has_ready()  # a drain now returns at once


# -- virtual brokers: routing and the binding check ------------------------------------------------

class FakeExchangeType:
    def __init__(self, queues: List[str]) -> None:
        self.queues = queues

    def lookup(self, table: Any, exchange: str, routing_key: str, default: Any) -> List[str]:
        return self.queues


class FakeVirtualChannel:
    """The parts of a kombu virtual channel strict_lookup and the binding check read."""

    def __init__(self, tables: dict, queues: Optional[List[str]] = None) -> None:
        self.tables = tables
        self.queues = queues or []

    def get_table(self, exchange: str) -> List[Tuple[str, str, str]]:
        return self.tables[exchange]

    def typeof(self, exchange: str) -> FakeExchangeType:
        return FakeExchangeType(self.queues)


def test_strict_lookup_raises_when_no_queue_matches() -> None:
    channel = FakeVirtualChannel({"x": []})
    strict_lookup(channel)
    with pytest.raises(NoRoute):
        channel._lookup("x", "k")  # type: ignore[attr-defined]
    with pytest.raises(NoRoute):
        channel._lookup("never-declared", "k")  # type: ignore[attr-defined]
    assert channel._lookup("", "q") == ["q"]  # type: ignore[attr-defined]
    channel.queues = ["q1"]
    assert channel._lookup("x", "k") == ["q1"]  # type: ignore[attr-defined]


def test_the_binding_check_finds_bindings_the_broker_lost() -> None:
    declarations = Declarations(is_amqp=False)
    kept, lost = Binding("q1", "x", "a.#"), Binding("q2", "x", "b")
    declarations.bindings = {kept: None, lost: None}
    declarations.reply_queues = {"reply": (Binding("ignored", "y", "r"),)}
    channel = FakeVirtualChannel({"x": [("a.#", "pattern", "q1")]})
    assert declarations.missing(channel) == [lost, Binding("reply", "y", "r")]

"""Canaries of the private kombu and py-amqp names the kombu adapter relies on.

Each compat module (``tavrida.transports.kombu.compat.pyamqp``, ``.virtual``,
``.redis_fetch``) lists the private names it uses. These tests fail when a
kombu or py-amqp release renames or changes one of them (the workaround
would break, or silently stop working), or no longer needs it (plain
py-amqp reads the hostile frame, kombu's Redis channel pops reliably): then
the workaround can go. They need no broker: kombu's in-process ``memory``
transport and the classes themselves are enough.
"""

from __future__ import annotations

import contextlib
import inspect
import socket
import struct
import sys
import time
import uuid
from typing import Any, Callable, Iterator, List, Tuple

import amqp
import kombu
import pytest
from amqp import method_framing, serialization, spec
from frame_wire import RecordingSocket, wire
from kombu.transport import memory as kombu_memory
from kombu.transport import pyamqp, virtual
from kombu.transport import redis as kombu_redis
from kombu.transport.virtual.exchange import TopicExchange

from tavrida.transports.base import Binding
from tavrida.transports.kombu.compat import (
    fast_properties,
    pyamqp_publish,
    pyamqp_read,
    redis_fetch,
)
from tavrida.transports.kombu.compat import pyamqp as compat_pyamqp
from tavrida.transports.kombu.compat import virtual as tavrida_virtual
from tavrida.transports.kombu.polling import Readable


def deep_table(depth: int) -> bytes:
    """A header table nesting ``depth`` tables: ``{"k": {"k": ...}}``."""
    # Table k (k levels deep) is 4 + 7 * k bytes: its length, then b"\x01kF" and table k - 1.
    prefixes = [struct.pack(">I", 3 + 4 + 7 * (level - 1)) + b"\x01kF"
                for level in range(depth, 0, -1)]
    return b"".join(prefixes) + b"\x00\x00\x00\x00"


@pytest.fixture
def default_recursion_limit() -> Iterator[None]:
    """Python's default recursion limit (mypy, run by another test, raises it)."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    try:
        yield
    finally:
        sys.setrecursionlimit(limit)


#: A table whose timestamp (year > 9999) no datetime can hold.
HUGE_TIMESTAMP_TABLE = b"\x00\x00\x00\x0b" + b"\x01tT" + b"\xff" * 8
#: basic.deliver arguments whose consumer tag is not UTF-8.
BAD_DELIVER = (b"\x00\x3c\x00\x3c" + b"\x01\xff" + struct.pack(">Q", 1) + b"\x00"
               + b"\x01x" + b"\x01y")


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Names of this test's own kombu objects."""
    return lambda prefix: f"tavrida-compat-{prefix}-{uuid.uuid4().hex[:8]}"


def parameters(function: object) -> list:
    return list(inspect.signature(function).parameters)


# -- compat.pyamqp ---------------------------------------------------------------------------------

@pytest.mark.parametrize("table", [deep_table(3000), HUGE_TIMESTAMP_TABLE],
                         ids=["nested-3000", "year-past-9999"])
def test_plain_py_amqp_still_fails_on_tables_the_compat_parser_reads(
        table: bytes, default_recursion_limit: None) -> None:
    with pytest.raises((RecursionError, ValueError, OverflowError, OSError,
                        amqp.FrameSyntaxError)):
        serialization.loads("F", table, 0)
    read, end = compat_pyamqp._lenient_table(table, 0)
    assert end == len(table) and read


def test_plain_py_amqp_still_fails_on_a_short_string_that_is_not_utf8() -> None:
    with pytest.raises(UnicodeDecodeError):
        serialization.loads("sLbss", BAD_DELIVER, 4)
    fixed = compat_pyamqp._sanitize_method("sLbss", BAD_DELIVER)
    tag, delivery_tag, redelivered, exchange, routing_key = serialization.loads(
        "sLbss", fixed, 4)[0]
    assert tag.encode("utf-8", "surrogateescape") == b"\xff"
    assert (delivery_tag, redelivered, exchange, routing_key) == (1, False, "x", "y")


def test_read_item_is_still_py_amqps_reader_of_one_field_value() -> None:
    assert parameters(serialization._read_item)[:2] == ["buf", "offset"]
    assert serialization._read_item(b"I\x00\x00\x00\x05", 0) == (5, 5)
    assert serialization._read_item(b"S\x00\x00\x00\x02hi", 0) == ("hi", 7)


def test_the_frame_handler_hook_is_still_an_argument_of_amqp_connections() -> None:
    assert "frame_handler" in parameters(amqp.Connection.__init__)
    assert parameters(method_framing.frame_handler)[:2] == ["connection", "callback"]
    assert pyamqp.Transport.Connection is not None and pyamqp.Connection.Channel is not None
    assert issubclass(compat_pyamqp.AMQPTransport.Connection, pyamqp.Connection)
    assert compat_pyamqp.AMQPConnection.Channel is compat_pyamqp.AMQPChannel


def test_the_content_method_formats_are_py_amqps() -> None:
    formats = {sig: method.args for sig, method in amqp.Channel._METHODS.items()}
    assert {sig: formats[sig] for sig in compat_pyamqp._CONTENT_METHOD_ARGS} == \
        compat_pyamqp._CONTENT_METHOD_ARGS
    assert set(compat_pyamqp._CONTENT_METHOD_ARGS) == {
        spec.Basic.Deliver, spec.Basic.GetOk, spec.Basic.Return}


def test_the_content_methods_are_still_py_amqps_private_set() -> None:
    """The copied frame handler reads py-amqp's set of the methods that carry content."""
    assert method_framing._CONTENT_METHODS == frozenset(
        {spec.Basic.Return, spec.Basic.Deliver, spec.Basic.GetOk})
    assert "_CONTENT_METHODS" in inspect.getsource(method_framing.frame_handler)


def test_message_properties_serialize_privately_and_prepare_message_takes_the_class() -> None:
    assert callable(amqp.Message._serialize_properties)
    names = [name for name, _ in amqp.Message.PROPERTIES]
    assert names[:3] == ["content_type", "content_encoding", "application_headers"]
    assert "_Message" in parameters(pyamqp.Channel.prepare_message)
    message = compat_pyamqp.CheckedMessage(b"x", content_type="a/b")
    assert message._serialize_properties() is message._serialize_properties()


def test_kombu_connections_still_keep_the_transport_connection_privately() -> None:
    conn = kombu.Connection("memory://")
    try:
        conn.ensure_connection(max_retries=0)
        assert compat_pyamqp.raw_connection(conn) is conn._connection is not None
    finally:
        conn.release()


class _Publishing:
    """Just enough of a py-amqp connection to publish on: records reads and writes."""

    def __init__(self, sock: socket.socket) -> None:
        self.client_properties = {"capabilities": {"connection.blocked": True}}
        self.transport = _PublishingTransport(sock)
        self.events: List[Tuple[Any, ...]] = []

    def drain_events(self, timeout: Any = None) -> None:
        self.events.append(("read", timeout))
        raise socket.timeout()

    def frame_writer(self, *frame: Any) -> None:
        self.events.append(("write",) + frame)


class _PublishingTransport:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    @contextlib.contextmanager
    def having_timeout(self, timeout: Any) -> Iterator[socket.socket]:
        yield self.sock


def _publishing_channel(connection: _Publishing) -> amqp.Channel:
    channel = amqp.Channel.__new__(amqp.Channel)
    channel.connection = connection
    channel.channel_id = 1
    return channel


def test_basic_publish_still_reads_then_writes_as_the_copied_steps_do() -> None:
    message = amqp.Message(b"body", content_type="a/b")
    ours, peer = socket.socketpair()
    try:
        theirs = _Publishing(ours)
        amqp.Channel._basic_publish(_publishing_channel(theirs), message, exchange="ex",
                                    routing_key="rk", mandatory=True)
        # py-amqp reads before every publish (nothing to read here), then writes.
        assert theirs.events[0] == ("read", 0)
        copied = _Publishing(ours)
        channel, has_input = _publishing_channel(copied), Readable()
        pyamqp_publish.publish(channel, has_input, message, "ex", "rk", True)
        assert copied.events == theirs.events[1:]  # the same frames, no read: no input
        peer.send(b"x")
        pyamqp_publish.publish(channel, has_input, message, "ex", "rk", True)
        assert copied.events[1:] == theirs.events  # with input: read, then the same frames
    finally:
        ours.close()
        peer.close()


# -- virtual ---------------------------------------------------------------------------------------

@pytest.fixture
def memory_channel():
    conn = kombu.Connection("memory://")
    channel = conn.channel()
    yield channel
    channel.close()
    conn.release()


def test_kombu_virtual_lookup_still_drops_unroutable_messages_silently(unique,
                                                                       memory_channel) -> None:
    exchange = unique("x")
    memory_channel.exchange_declare(exchange=exchange, type="topic")
    assert parameters(virtual.Channel._lookup)[1:4] == ["exchange", "routing_key", "default"]
    # Without strict_lookup: no queue (or kombu's dead-letter queue, never consumed), no error.
    assert list(memory_channel._lookup(exchange, "nobody")) in (
        [], [memory_channel.deadletter_queue])
    tavrida_virtual.strict_lookup(memory_channel)
    with pytest.raises(tavrida_virtual.NoRoute):
        memory_channel._lookup(exchange, "nobody")


def test_kombu_topic_hash_still_needs_a_word_where_rabbitmq_needs_none() -> None:
    assert parameters(TopicExchange.lookup)[1:] == ["table", "exchange", "routing_key",
                                                    "default"]
    table = [("svc.#", TopicExchange(None).key_to_pattern("svc.#"), "q")]
    assert TopicExchange(None).lookup(table, "x", "svc", None) == set()
    assert tavrida_virtual.RabbitTopicExchange(None).lookup(table, "x", "svc", None) == {"q"}


def test_virtual_channels_still_look_exchange_types_up_in_their_table(memory_channel) -> None:
    assert isinstance(memory_channel.exchange_types["topic"], TopicExchange)
    tavrida_virtual.rabbit_channel(memory_channel)
    assert memory_channel.typeof("") is memory_channel.exchange_types["direct"]
    memory_channel.exchange_declare(exchange="tavrida-compat-topic", type="topic")
    assert isinstance(memory_channel.typeof("tavrida-compat-topic"),
                      tavrida_virtual.RabbitTopicExchange)


def test_virtual_messages_still_keep_their_raw_payload(unique, memory_channel) -> None:
    queue = unique("q")
    memory_channel.queue_declare(queue=queue)
    assert isinstance(memory_channel.Message, type)  # set per instance by own_copies
    memory_channel.basic_publish(memory_channel.prepare_message(b"body"), "", queue)
    message = memory_channel.basic_get(queue)
    assert message._raw["body"] and message._raw["properties"]["delivery_tag"]
    assert tavrida_virtual.raw_payload(message) is message._raw
    memory_channel.basic_ack(message.delivery_tag)


def test_virtual_qos_still_has_the_private_restore_hooks(memory_channel) -> None:
    qos = memory_channel.qos
    for name in ("_flush", "_delivered", "restore_unacked", "append"):
        assert hasattr(qos, name), name
    tavrida_virtual.restore_unacked(qos)  # nothing un-acked: nothing happens


def test_virtual_channel_state_still_records_bindings(unique, memory_channel) -> None:
    exchange, queue = unique("x"), unique("q")
    memory_channel.exchange_declare(exchange=exchange, type="topic")
    memory_channel.queue_declare(queue=queue)
    memory_channel.queue_bind(queue=queue, exchange=exchange, routing_key="a.#")
    assert [(row[0], row[-1]) for row in tavrida_virtual.binding_rows(
        memory_channel, exchange)] == [("a.#", queue)]
    assert memory_channel.typeof(exchange).type == "topic"
    assert "binding_delete" in dir(memory_channel.state)
    tavrida_virtual.forget_bindings(memory_channel, [Binding(queue, exchange, "a.#")])
    assert not memory_channel.state.has_binding(queue, exchange, "a.#")
    assert tavrida_virtual.binding_rows(memory_channel, unique("never")) == []


# -- redis_fetch -----------------------------------------------------------------------------------

#: kombu 5.7+ drops a BRPOP connection whose reply is overdue; older kombu waits for ever.
KOMBU_CHECKS_BRPOP = hasattr(kombu_redis.MultiChannelPoller, "maybe_check_brpop_health")


def test_kombu_redis_still_pops_with_plain_brpop() -> None:
    """The day kombu pops reliably (or renames the hooks), RedisFetch must be revisited."""
    source = inspect.getsource(kombu_redis.Channel._brpop_start)
    assert "'BRPOP'" in source or '"BRPOP"' in source
    assert "_in_poll" in source
    # kombu stamps the pop for its health check exactly when it has one.
    assert ("_brpop_sent_at" in source) is KOMBU_CHECKS_BRPOP
    assert parameters(kombu_redis.Channel._brpop_start) == ["self", "timeout"]
    assert parameters(kombu_redis.Channel._brpop_read) == ["self", "options"]
    assert "self.handlers = {'BRPOP': self._brpop_read" in inspect.getsource(
        kombu_redis.Channel.__init__).replace('"', "'")


def test_kombu_redis_still_has_the_attributes_redis_fetch_sets_and_reads() -> None:
    channel = kombu_redis.Channel
    for name in ("_in_poll", "active_queues", "conn_or_acquire", "global_keyprefix", "client",
                 "health_check_interval"):
        assert hasattr(channel, name), name
    assert hasattr(channel, "_brpop_sent_at") is KOMBU_CHECKS_BRPOP
    assert isinstance(kombu_redis.Transport.brpop_timeout, (int, float))
    assert "self.brpop_timeout = " in inspect.getsource(channel.__init__)
    assert parameters(kombu_redis.QoS._remove_from_indices)[:2] == ["self", "delivery_tag"]
    assert parameters(kombu_redis.QoS.append) == ["self", "message", "delivery_tag"]
    assert callable(virtual.Transport._deliver)
    assert redis_fetch.RedisFetch("q", "t").inflight == "q.tavrida-inflight.t"
    import redis

    assert redis.connection.Connection()._sock is None  # redis-py's socket, set on connect
    assert callable(redis.connection.Connection.send_command)
    assert callable(redis.Redis.parse_response)


def test_kombu_redis_flushes_a_pending_reauth_after_a_pop() -> None:
    """kombu 5.7+ sends a pending AUTH once a BRPOP reply is read; RedisFetch does the same."""
    has_reauth = hasattr(kombu_redis.Channel, "_flush_brpop_reauth")
    assert has_reauth is KOMBU_CHECKS_BRPOP  # both came with kombu 5.7
    if has_reauth:
        assert parameters(kombu_redis.Channel._flush_brpop_reauth) == ["self"]
        read = inspect.getsource(kombu_redis.Channel._brpop_read)
        assert "self._flush_brpop_reauth()" in read[read.index("finally:"):]
    assert '"_flush_brpop_reauth"' in inspect.getsource(redis_fetch.RedisFetch.install)


def test_kombu_redis_still_stores_every_message_through_put() -> None:
    """redis_delays.delayed_puts wraps _put: every publish to a queue's list goes through it."""
    assert parameters(kombu_redis.Channel._put)[:3] == ["self", "queue", "message"]
    assert "return self._put(routing_key, message" in inspect.getsource(
        virtual.Channel.basic_publish)
    assert "lpush" in inspect.getsource(kombu_redis.Channel._put)
    assert hasattr(kombu_redis.Channel, "keyprefix_queue")  # how rabbit_channel tells Redis


def test_kombu_redis_polls_then_checks_what_an_empty_poll_leaves() -> None:
    """After a poll that read nothing kombu checks the pop (5.7+) or restores (both)."""
    get = inspect.getsource(kombu_redis.MultiChannelPoller.get)
    after_poll = get[get.index("self.poller.poll(timeout)"):]
    assert "self.maybe_restore_messages()" in after_poll
    assert ("self.maybe_check_brpop_health()" in after_poll) is KOMBU_CHECKS_BRPOP
    if KOMBU_CHECKS_BRPOP:
        check = inspect.getsource(kombu_redis.MultiChannelPoller.maybe_check_brpop_health)
        for used in ("channel._in_poll", "channel._brpop_sent_at", "channel.brpop_timeout",
                     "channel.health_check_interval", "connection.disconnect()"):
            assert used in check, used


class _Connection:
    """The pop's redis-py connection: a socket with nothing to read, and disconnect()."""

    def __init__(self) -> None:
        import socket

        self._sock, self._peer = socket.socketpair()
        self.disconnected = False

    def disconnect(self) -> None:
        self.disconnected = True
        self._sock.close()
        self._peer.close()


def _stub_channel(cycle: object) -> object:
    """The parts of a Redis channel :meth:`RedisFetch.install` and its check touch."""
    import contextlib
    from types import SimpleNamespace

    qos = SimpleNamespace(append=lambda message, tag: None)
    client = SimpleNamespace(execute_command=lambda *args: b"OK")  # CLIENT REPLY ON
    return SimpleNamespace(connection=SimpleNamespace(cycle=cycle), qos=qos, handlers={},
                           global_keyprefix="", brpop_timeout=1, health_check_interval=25,
                           _in_poll=None, conn_or_acquire=lambda: contextlib.nullcontext(client))


def test_the_silent_pop_check_is_kombus_where_it_has_one_else_redis_fetchs() -> None:
    cycle = kombu_redis.MultiChannelPoller()
    try:
        kombus = cycle.maybe_restore_messages
        channel = _stub_channel(cycle)
        fetch = redis_fetch.RedisFetch("q", "t")
        fetch.install(channel)
        assert redis_fetch.kombu_checks_brpop_health(channel) is KOMBU_CHECKS_BRPOP
        if KOMBU_CHECKS_BRPOP:
            assert cycle.maybe_restore_messages == kombus  # kombu's check runs, none of ours
            return
        assert cycle.maybe_restore_messages != kombus
        connection = _Connection()
        channel._in_poll, fetch.sent_at = connection, time.monotonic()
        cycle.maybe_restore_messages()  # a pop just sent: left alone
        assert not connection.disconnected
        fetch.sent_at = time.monotonic() - 1 - 25  # overdue by brpop_timeout + the interval
        cycle.maybe_restore_messages()
        assert connection.disconnected
    finally:
        cycle.close()


# -- virtual: deleting on Redis --------------------------------------------------------------------

def test_kombu_still_deletes_only_the_bindings_its_own_connection_declared() -> None:
    """The day kombu's queue_delete reads the broker's tables, delete_broker_bindings can go."""
    assert kombu_redis.Channel.queue_delete is virtual.Channel.queue_delete
    assert "self.state.queue_bindings(queue)" in inspect.getsource(virtual.Channel.queue_delete)


def test_kombu_redis_still_keeps_binding_rows_in_one_set_per_exchange() -> None:
    assert kombu_redis.Channel.keyprefix_queue == "_kombu.binding.%s"
    assert "self.keyprefix_queue % exchange" in inspect.getsource(kombu_redis.Channel.get_table)
    assert parameters(kombu_redis.Channel._delete)[:5] == [
        "self", "queue", "exchange", "routing_key", "pattern"]
    delete = inspect.getsource(kombu_redis.Channel._delete)
    assert "srem(self.keyprefix_queue % (exchange," in delete
    assert callable(kombu_redis.Channel.queue_purge)
    assert tavrida_virtual.delete_broker_bindings(object(), ["q"]) == 0  # not Redis: kombu's




@pytest.mark.parametrize("properties", [
    {},
    {"delivery_mode": 2},
    {"content_type": "application/json", "content_encoding": "utf-8", "delivery_mode": 2,
     "expiration": "10000",
     "application_headers": {"correlation_id": "c", "message_type": "request", "n": 7,
                             "low": -2147483647, "lower": -2147483648, "big": 2 ** 40,
                             "text": "é€ \U0001f600", "": ""}},
    {"content_type": "", "application_headers": {}, "priority": 0, "message_id": "m"},
    {"application_headers": {"k" * 255: "v" * 70000}},
])
def test_fast_properties_write_the_bytes_py_amqp_writes(properties) -> None:
    expected = amqp.Message(b"x", **properties)._serialize_properties()
    assert fast_properties.fast_properties(properties) == expected
    assert compat_pyamqp.CheckedMessage(b"x", **properties)._serialize_properties() == expected


@pytest.mark.parametrize("properties", [
    {"application_headers": {"flag": True}},
    {"application_headers": {"nested": {"a": 1}}},
    {"application_headers": {"x": 1.5}},
    {"application_headers": {b"raw": "v"}},
    {"application_headers": {"huge": 2 ** 70}},
    {"timestamp": 5},
    {"delivery_mode": 300},
])
def test_fast_properties_leave_other_kinds_to_py_amqp(properties) -> None:
    assert fast_properties.fast_properties(properties) is None
    message = compat_pyamqp.CheckedMessage(b"x", **properties)
    try:
        expected = amqp.Message(b"x", **properties)._serialize_properties()
    except Exception as exc:  # py-amqp's own error, raised the same way
        with pytest.raises(type(exc)):
            message._serialize_properties()
    else:
        assert message._serialize_properties() == expected


READ_CASES = [
    {},
    {"delivery_mode": 2},
    {"content_type": "application/json", "content_encoding": "utf-8", "delivery_mode": 2,
     "priority": 4, "correlation_id": "c", "reply_to": "r", "expiration": "10",
     "message_id": "m",
     "application_headers": {"s": "text é", "i": -7, "l": 2 ** 40, "": ""}},
    {"application_headers": {"flag": True, "x": 1.5, "nested": {"a": [1, "b"]}}},
    {"timestamp": 5, "type": "t", "user_id": "u", "app_id": "a", "cluster_id": "c"},
]


@pytest.mark.parametrize("properties", READ_CASES)
def test_fast_read_properties_read_what_py_amqp_reads(properties) -> None:
    raw = amqp.Message(b"x", **properties)._serialize_properties()
    expected, _ = serialization.decode_properties_basic(raw, 0)
    fast = fast_properties.fast_read_properties(raw, 0)
    assert fast is None or fast == expected
    message = fast_properties.FastMessage()
    message._load_properties(spec.Basic.CLASS_ID, raw, 0)
    assert message.properties == expected


def test_fast_read_properties_take_the_usual_kinds_and_leave_the_others() -> None:
    usual, other = READ_CASES[2], READ_CASES[3]
    assert fast_properties.fast_read_properties(
        amqp.Message(b"", **usual)._serialize_properties(), 0) is not None
    assert fast_properties.fast_read_properties(
        amqp.Message(b"", **other)._serialize_properties(), 0) is None


def _frames(properties, body: bytes):
    deliver = serialization.dumps("sLbss", ["ctag", 7, False, "ex", "rk"])
    method = struct.pack(">HH", *spec.Basic.Deliver) + deliver
    header = (struct.pack(">HxxQ", spec.Basic.CLASS_ID, len(body))
              + amqp.Message(body, **properties)._serialize_properties())
    ack = struct.pack(">HH", *spec.Basic.Ack) + serialization.dumps("Lb", [3, True])
    return [(1, 1, method), (2, 1, header), (3, 1, body[:2]), (3, 1, body[2:]), (8, 0, b""),
            (1, 2, ack), (1, 1, method), (2, 1, struct.pack(">HxxQ", spec.Basic.CLASS_ID, 0)
                                          + amqp.Message(b"")._serialize_properties())]


@pytest.mark.parametrize("properties", READ_CASES)
def test_the_frame_handler_calls_back_as_py_amqps_does(properties) -> None:
    class Conn:
        bytes_recv = 0

    def run(make):
        conn, calls = Conn(), []
        handler = make(conn, lambda *args: calls.append(args))
        results = [handler(frame) for frame in _frames(properties, b"body!")]
        return conn.bytes_recv, results, [
            (channel, sig, bytes(args), None if msg is None else (msg.body, msg.properties))
            for channel, sig, args, msg in calls]

    assert run(fast_properties.frame_handler) == run(method_framing.frame_handler)
    assert run(compat_pyamqp.tolerant_frame_handler) == run(method_framing.frame_handler)
    with pytest.raises(amqp.exceptions.UnexpectedFrame):
        fast_properties.frame_handler(Conn(), lambda *args: None)((3, 1, b"x"))
    with pytest.raises(amqp.exceptions.UnexpectedFrame):
        method_framing.frame_handler(Conn(), lambda *args: None)((3, 1, b"x"))


def test_the_tolerant_handler_reads_a_delivery_plain_py_amqp_cannot() -> None:
    """A consumer tag and a header table py-amqp cannot decode (see the tests above)."""
    class Conn:
        bytes_recv = 0

    calls: list = []
    conn = Conn()
    handler = compat_pyamqp.tolerant_frame_handler(conn, lambda *args: calls.append(args))
    body = b"body!"
    header = (struct.pack(">HxxQ", spec.Basic.CLASS_ID, len(body))
              + struct.pack(">H", 0x2000) + HUGE_TIMESTAMP_TABLE)  # application_headers only
    results = [handler(frame) for frame in [(1, 1, BAD_DELIVER), (2, 1, header), (3, 1, body)]]
    assert results == [False, False, True] and conn.bytes_recv == 3
    [(channel, sig, args, message)] = calls
    assert (channel, sig) == (1, spec.Basic.Deliver)
    tag, delivery_tag, redelivered, exchange, routing_key = serialization.loads(
        "sLbss", args, 4)[0]
    assert tag.encode("utf-8", "surrogateescape") == b"\xff"
    assert (delivery_tag, redelivered, exchange, routing_key) == (1, False, "x", "y")
    assert message.body == body
    assert message.properties == {"application_headers": {"t": str(2 ** 64 - 1)}}



def test_py_amqp_still_reads_a_frame_in_three_exact_recvs_within_having_timeout() -> None:
    """What compat.pyamqp_read replaces; the day py-amqp reads ahead itself it can go."""
    frames = _frames(READ_CASES[2], b"body!")
    ours, peer = socket.socketpair()
    try:
        peer.sendall(wire(*frames) * 2)
        theirs = amqp.transport.TCPTransport("127.0.0.1:5672")
        theirs.sock = recording = RecordingSocket(ours)
        theirs._quick_recv = recording.recv
        assert [theirs.read_frame() for _ in frames] == frames
        # Header, payload (none for a heartbeat), frame-end octet: exactly what each needs.
        assert recording.asked == [size for _, _, payload in frames
                                   for size in (7, len(payload), 1) if size]
        ahead = pyamqp_read.ReadAheadTransport("127.0.0.1:5672")
        ahead.sock = recording = RecordingSocket(ours)
        assert [ahead.read_frame() for _ in frames] == frames  # the same frames, in one recv
        assert recording.asked == [pyamqp_read.READ_SIZE]
    finally:
        ours.close()
        peer.close()
    # blocking_read: one frame read within having_timeout, then handed to on_inbound_frame;
    # drain_events: blocking_read until one returns True (a method complete).
    events: List[Any] = []

    class Stub:
        transport = property(lambda self: self)

        @contextlib.contextmanager
        def having_timeout(self, timeout: Any) -> Iterator[None]:
            events.append(("timeout", timeout))
            yield
            events.append("restored")

        def read_frame(self) -> str:
            events.append("read")
            return "frame"

        def on_inbound_frame(self, frame: str) -> bool:
            events.append(("handled", frame))
            return events.count("read") == 2

        def blocking_read(self, timeout: Any) -> Any:
            return amqp.Connection.blocking_read(self, timeout)

    amqp.Connection.drain_events(Stub(), 0.5)
    assert events == [("timeout", 0.5), "read", "restored", ("handled", "frame")] * 2
    assert parameters(amqp.Connection.Transport) == [
        "self", "host", "connect_timeout", "ssl", "read_timeout", "write_timeout",
        "socket_settings", "kwargs"]
    assert isinstance(amqp.Connection.Transport(amqp.Connection.__new__(amqp.Connection),
                                                "127.0.0.1:5672", None),
                      amqp.transport.TCPTransport)

# -- virtual: kombu's memory transport -------------------------------------------------------------

def test_kombu_memory_still_stores_the_publishers_payload_in_every_queue(unique) -> None:
    """The day kombu's memory channel stores copies, private_payloads can go."""
    conn = kombu.Connection("memory://")
    channel = conn.channel()
    try:
        one, two = unique("one"), unique("two")
        assert isinstance(channel, kombu_memory.Channel)
        assert parameters(kombu_memory.Channel._put)[:3] == ["self", "queue", "message"]
        payload = channel.prepare_message(b"body", headers={"nested": [1]})
        channel._put(one, payload)
        channel._put(two, payload)
        assert channel.queues[one].get_nowait() is channel.queues[two].get_nowait()
        tavrida_virtual.private_payloads(channel)
        channel._put(one, payload)
        channel._put(two, payload)
        first, second = channel.queues[one].get_nowait(), channel.queues[two].get_nowait()
        assert first == second == payload
        assert first["headers"] is not payload["headers"]
        assert first["headers"]["nested"] is not second["headers"]["nested"]
    finally:
        channel.close()
        conn.release()


def test_kombu_memory_deletes_still_leave_routing_rows_and_miss_exchanges(unique) -> None:
    """The day kombu's memory channel deletes exactly, exact_deletes can go."""
    conn = kombu.Connection("memory://")
    channel = conn.channel()
    try:
        exchange, queue = unique("x"), unique("q")
        channel.exchange_declare(exchange=exchange, type="topic")
        channel.queue_declare(queue=queue)
        channel.queue_bind(queue=queue, exchange=exchange, routing_key="#")
        assert isinstance(kombu_memory.Channel.queues, dict)
        assert callable(channel.state.has_binding)
        channel.queue_delete(queue)
        assert [row[-1] for row in tavrida_virtual.binding_rows(channel, exchange)] == [queue]
        channel.exchange_delete(exchange)
        with pytest.raises(KeyError):
            channel.exchange_delete(exchange)

        tavrida_virtual.exact_deletes(channel)
        channel.exchange_declare(exchange=exchange, type="topic")
        channel.queue_declare(queue=queue)
        channel.queue_bind(queue=queue, exchange=exchange, routing_key="#")
        channel.queue_delete(queue)
        assert tavrida_virtual.binding_rows(channel, exchange) == []
        assert queue not in channel.queues
        channel.exchange_delete(exchange)
        channel.exchange_delete(exchange)  # gone: nothing happens
        assert exchange not in channel.state.exchanges
    finally:
        channel.close()
        conn.release()


def test_kombu_exchange_delete_still_deletes_bound_queues_bindings() -> None:
    """The day kombu's exchange_delete unbinds only its own rows, exact_deletes' can go."""
    assert kombu_redis.Channel.exchange_delete is virtual.Channel.exchange_delete
    source = inspect.getsource(virtual.Channel.exchange_delete)
    assert "self.get_table(exchange)" in source
    assert "self.queue_delete(queue, if_unused=True, if_empty=True)" in source
    # Redis: the binding sets exact_deletes deletes are those kombu adds rows to.
    bind = inspect.getsource(kombu_redis.Channel._queue_bind)
    assert "self.keyprefix_queue % (exchange,)" in bind
    permanent = getattr(kombu_redis.Channel, "keyprefix_binding_permanent", None)
    assert permanent is None or "self.keyprefix_binding_permanent % (exchange,)" in bind


# -- redis_fetch: the record and the ack as scripts ---------------------------------------------

def test_kombu_redis_still_records_unacked_messages_as_redis_fetch_does() -> None:
    """RedisFetch.record and forget write what kombu's QoS.append and ack write, as scripts."""
    append = inspect.getsource(kombu_redis.QoS.append)
    for used in ("self.unacked_index_key", "self.unacked_key", "time()",
                 "dumps([message._raw, EX, RK])", "super().append(message, delivery_tag)"):
        assert used in append, used
    assert "delivery['exchange'], delivery['routing_key']" in append.replace('"', "'")
    ack = inspect.getsource(kombu_redis.QoS.ack)
    assert "self._remove_from_indices(delivery_tag).execute()" in ack
    assert "super().ack(delivery_tag)" in ack
    remove = inspect.getsource(kombu_redis.QoS._remove_from_indices)
    assert ".zrem(self.unacked_index_key, delivery_tag)" in remove
    assert ".hdel(self.unacked_key, delivery_tag)" in remove
    assert parameters(kombu_redis.QoS.ack) == ["self", "delivery_tag"]
    assert parameters(kombu_redis.QoS.restore_by_tag)[:2] == ["self", "tag"]
    assert parameters(virtual.QoS.append) == ["self", "message", "delivery_tag"]
    assert parameters(virtual.QoS.ack) == ["self", "delivery_tag"]
    # kombu's prefixed client prefixes the first key of an EVALSHA, and only that one.
    assert kombu_redis.PrefixedStrictRedis.PREFIXED_COMPLEX_COMMANDS["EVALSHA"] == {
        "args_start": 2, "args_end": 3}
    assert "LREM" not in kombu_redis.PrefixedStrictRedis.PREFIXED_SIMPLE_COMMANDS


# -- redis_routing ---------------------------------------------------------------------------------

def test_kombu_redis_still_routes_topics_by_lookup_then_put() -> None:
    """RedisTopicExchange.deliver does in one script what kombu's lookup and _put do."""
    from tavrida.transports.kombu.compat.redis_routing import RedisTopicExchange

    assert issubclass(RedisTopicExchange, tavrida_virtual.RabbitTopicExchange)
    assert parameters(TopicExchange.deliver) == ["self", "message", "exchange", "routing_key",
                                                 "kwargs"]
    deliver = inspect.getsource(TopicExchange.deliver)
    assert "_lookup(exchange, routing_key)" in deliver and "_put(queue, message" in deliver
    assert "return self.typeof(exchange).deliver(" in inspect.getsource(
        virtual.Channel.basic_publish)
    put = inspect.getsource(kombu_redis.Channel._put)
    assert "lpush(" in put and "dumps(message)" in put  # what the script pushes
    assert "_get_message_priority(message, reverse=False)" in put
    # kombu 5.7+ also sets a PEXPIRE for queues with x-expires: those are left to _put.
    assert ("self._expires" in put) is ("self._expires" in inspect.getsource(
        kombu_redis.Channel.__init__))
    get_table = inspect.getsource(kombu_redis.Channel.get_table)
    assert "self.keyprefix_queue % exchange" in get_table and "split(self.sep)" in get_table
    bind = "".join(inspect.getsource(kombu_redis.Channel._queue_bind).split()).replace('"', "'")
    assert "self.sep.join([routing_keyor'',patternor'',queueor''])" in bind
    assert kombu_redis.Channel.sep == "\x06\x16"
    assert kombu_redis.Channel.keyprefix_queue == "_kombu.binding.%s"

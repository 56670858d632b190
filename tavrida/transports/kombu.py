"""The kombu transport: RabbitMQ (``amqp://``), Redis (``redis://``) and kombu's ``memory://``.

:class:`KombuTransport` moves opaque bytes plus a header table; it knows
nothing about tavrida messages. It holds two long-lived connections:

* the *consuming* connection is driven by :meth:`drain` (one thread at a
  time; callbacks run on that thread). It carries the declarations, one
  channel per :meth:`consume` call (so each consumer has its own prefetch
  window) and a control channel. It is only touched under ``self._lock``;
  :meth:`drain` releases that lock while callbacks run, so a callback may
  ack, declare or send heartbeats at will.
* the *publishing* connection has one channel in publisher-confirm mode,
  shared by every thread under ``self._publish_lock``. It has no heartbeats
  (nothing reads it between publishes, as with celery's producer
  connections); a dead socket shows up as an error on the next publish,
  which reconnects and retries.

With ``heartbeat_interval`` set (RabbitMQ), :meth:`drain` pumps heartbeats
and a small thread sends them whenever nobody has drained for half an
interval -- a handler running on the draining thread -- so a long handler
does not lose its connection (and its message with it) without calling
:meth:`heartbeat`. A client with a reply queue checks, before publishing,
that the consuming connection was not closed meanwhile (and reconnects,
declaring the queue again), so no answer is routed to a queue that is gone.

Acks and rejects from other threads are queued and performed by whoever
holds the consuming connection next: the caller itself when the connection
is idle, otherwise :meth:`drain` after its current read. While deliveries
are out with handlers, those reads last 1 ms, doubling up to
:attr:`KombuTransport.poll_interval`, so a quick worker's ack goes out
within a few milliseconds and a slow one costs few wake-ups.
Concurrent reads and writes on one socket are never allowed, which keeps
``amqps://`` (whose SSL objects are not thread safe) correct.

Unroutable messages: every AMQP publish is ``mandatory``; RabbitMQ returns
one no queue takes before confirming it, and :meth:`KombuTransport._on_return`
matches the return to its publish, so the confirm does not count
(``Unroutable``; a non-mandatory envelope -- a notification -- is only logged at
DEBUG). A consumer RabbitMQ cancels (its queue was deleted) makes the
consuming connection declare the topology again and consume again.

Deadlines: every blocking operation (connecting, reconnecting, declaring,
publishing, draining) honours the calling thread's :meth:`KombuTransport.deadline`
and publishes also ``publish_timeout``; reconnect sleeps end at once on
:meth:`KombuTransport.close` or :meth:`KombuTransport.interrupt`. Giving up
raises :class:`~tavrida.exceptions.ConnectionFailed`.

Bytes are never interpreted: bodies are not decoded, decompressed or
unpickled, whatever the content type or headers say. py-amqp decodes AMQP
short strings (content_type, correlation_id, reply_to, routing key, ...)
strictly, so one invalid UTF-8 property breaks its frame parser and poisons
the queue; :func:`_tolerant_frame_handler` decodes such strings with
``surrogateescape`` instead (``value.encode("utf-8", "surrogateescape")``
gives the original bytes back). Header *values* that are not UTF-8 arrive
as ``bytes`` (py-amqp's own fallback); such header *keys* arrive as text
with surrogates and go out again as their bytes. Header timestamps no
``datetime`` can hold and tables nested past 32 levels, which make py-amqp
raise, are read by :func:`_lenient_table` (a number, raw bytes). A message
whose headers do not fit in one frame (or cannot be written) fails alone
with ``PublishFailed(unencodable=[...])``, before RabbitMQ would close the
connection over it.

Differences on kombu's virtual transports (Redis and ``memory://``):

* no publisher confirms: a publish returns once Redis has the message. A
  message no binding matches raises ``Unroutable`` when it is ``mandatory``
  (see :func:`_strict_lookup`); on the default exchange it goes to the list
  named by its routing key, as kombu does.
* nobody tells a consumer that its queue or bindings were deleted: the
  consuming connection compares them with kombu's tables every
  :attr:`KombuTransport.topology_check_interval` and declares them again.
* topic routing runs in the publishing process; kombu's ``#`` needs at
  least one word, so tavrida installs RabbitMQ's rule (``a.#`` matches ``a``).
* a requeued or lost un-acked message goes back to the queue it came from
  only (kombu would route it through the exchange again, duplicating it to
  every other bound queue), and each queue's copy has its own delivery tag
  (kombu shares one, so on Redis acking one copy could lose another).
* reply queues are deleted by :meth:`KombuTransport.close`; a process that
  dies without closing leaves them behind (Redis has no exclusive queues).
* on Redis a message is popped with ``BRPOPLPUSH`` into the consumer's
  in-flight list (not kombu's ``BRPOP``, which lost the message when the
  connection died as Redis sent it); see :class:`_RedisFetch`. Un-acked
  messages of a lost connection go back to their queue on reconnect; those
  of a crashed consumer come back after kombu's ``visibility_timeout`` (one
  hour by default); ``memory://`` drops them on close (kombu does not
  restore them there).
* heartbeats are an AMQP feature; :meth:`KombuTransport.heartbeat` is a no-op.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import logging
import os
import queue as queue_module
import select
import socket
import ssl as ssl_module
import struct
import threading
import time
import uuid
from typing import Any, Callable, Deque, Dict, Iterable, Iterator, List, Optional, Set, Tuple

import amqp
import kombu
from amqp import method_framing, serialization, spec
from kombu.transport import pyamqp
from kombu.transport.virtual.exchange import TopicExchange
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads as json_loads

from tavrida import exceptions
from tavrida.config import ConnectionConfig
from tavrida.transports.base import (
    Binding,
    Delivery,
    OnMessage,
    OutgoingEnvelope,
    Topology,
    Transport,
    publish_error,
)
from tavrida.transports.memory import topic_matches

__all__ = ["KombuDelivery", "KombuTransport"]

LOG = logging.getLogger(__name__)

AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")
REDIS_SCHEMES = ("redis", "rediss")

#: AMQP basic properties copied into :attr:`Delivery.properties` when present.
_PROPERTY_NAMES = tuple(name for name, _ in amqp.Message.PROPERTIES
                        if name != "application_headers")
#: Key under which virtual transports keep a message's original route.
_ORIGIN = "x-tavrida-origin"


# --- invalid UTF-8 in AMQP short strings --------------------------------------------------------

#: Argument formats of the content-carrying methods (AMQP 0-9-1).
_CONTENT_METHOD_ARGS = {
    spec.Basic.Deliver: "sLbss",
    spec.Basic.GetOk: "Lbssl",
    spec.Basic.Return: "Bsss",
}
_STRUCTS = {"o": ">B", "B": ">H", "l": ">I", "L": ">Q"}
_SHORTSTR_MAX = 255


def _lenient_text(raw: bytes) -> str:
    """Decode a short string, keeping undecodable bytes as surrogates.

    The text is re-encoded by py-amqp with ``surrogatepass`` (three bytes per
    bad byte), so it is cut to stay a valid short string.
    """
    text = raw.decode("utf-8", "surrogateescape")
    while len(text.encode("utf-8", "surrogatepass")) > _SHORTSTR_MAX:
        text = text[:-1]
    return text


def _loads_lenient(fmt: str, buf: bytes, offset: int) -> List[Any]:
    """``amqp.serialization.loads`` for bits, integers and short strings, never strict."""
    values: List[Any] = []
    bits = bitcount = 0
    for code in fmt:
        if code == "b":
            if not bitcount:
                bits, bitcount = buf[offset], 8
                offset += 1
            values.append(bool(bits & 1))
            bits >>= 1
            bitcount -= 1
            continue
        bitcount = 0
        if code == "s":
            size = buf[offset]
            values.append(_lenient_text(bytes(buf[offset + 1:offset + 1 + size])))
            offset += 1 + size
        else:
            value, = struct.unpack_from(_STRUCTS[code], buf, offset)
            values.append(value)
            offset += struct.calcsize(_STRUCTS[code])
    return values


def _sanitize_method(fmt: str, payload: bytes) -> bytes:
    """Return ``payload`` with every short string made decodable by py-amqp."""
    if payload.isascii():
        return payload
    try:
        serialization.loads(fmt, payload, 4)
        return payload
    except UnicodeDecodeError:
        pass
    values = _loads_lenient(fmt, payload, 4)
    return bytes(payload[:4]) + serialization.dumps(fmt, values)


#: What py-amqp's property decoding raises on a content header it cannot read.
_DECODE_ERRORS = (ValueError, OverflowError, OSError, RecursionError, IndexError, struct.error,
                  amqp.FrameSyntaxError)  # UnicodeDecodeError is a ValueError
#: Header tables and arrays nested deeper than this are kept as their raw bytes.
_MAX_TABLE_DEPTH = 32
#: Headers put in place of a header table that cannot be read at all.
UNREADABLE_HEADERS_HEADER = "x-tavrida-unreadable-headers"
RAW_HEADERS_HEADER = "x-tavrida-raw-headers"


def _read_value(buf: bytes, offset: int, depth: int) -> Tuple[Any, int]:
    """One field value, as py-amqp reads it, but never failing on a valid frame.

    A timestamp no ``datetime`` can hold stays a number (its decimal text
    beyond 64 bits), tables and arrays deeper than :data:`_MAX_TABLE_DEPTH`
    stay bytes (type letter included); py-amqp would raise, or recurse until
    RecursionError. Everything it writes back is something py-amqp can encode.
    """
    code = chr(buf[offset])
    if code == "T":
        seconds, = struct.unpack_from(">Q", buf, offset + 1)
        try:
            value: Any = datetime.datetime.fromtimestamp(
                seconds, tz=datetime.timezone.utc).replace(tzinfo=None)
        except (ValueError, OverflowError, OSError):
            value = seconds if seconds < 2 ** 63 else str(seconds)
        return value, offset + 9
    if code in "FA":
        size, = struct.unpack_from(">I", buf, offset + 1)
        start, end = offset + 5, offset + 5 + size
        if end > len(buf):
            raise amqp.FrameSyntaxError(f"a field of {size} bytes overruns the frame")
        if depth >= _MAX_TABLE_DEPTH:
            return bytes(buf[offset:end]), end
        if code == "F":
            return _read_table(buf, start, end, depth + 1), end
        items = []
        while start < end:
            item, start = _read_value(buf, start, depth + 1)
            items.append(item)
        return items, end
    return serialization._read_item(buf, offset)


def _read_table(buf: bytes, offset: int, end: int, depth: int) -> Dict[Any, Any]:
    table: Dict[Any, Any] = {}
    while offset < end:
        size = buf[offset]
        raw_key = bytes(buf[offset + 1:offset + 1 + size])
        try:
            key: Any = raw_key.decode("utf-8")
        except UnicodeDecodeError:
            key = raw_key
        table[key], offset = _read_value(buf, offset + 1 + size, depth)
    return table


def _lenient_table(buf: bytes, offset: int) -> Tuple[Dict[Any, Any], int]:
    """The header table at ``offset`` (see :func:`_read_value`) and the offset after it.

    A table that cannot be read at all (an unknown field type, a length that
    lies) becomes ``{x-tavrida-unreadable-headers: why, x-tavrida-raw-headers:
    its bytes}``, so the message still reaches the server, which dead-letters it.
    """
    size, = struct.unpack_from(">I", buf, offset)
    start, end = offset + 4, offset + 4 + size
    try:
        if end > len(buf):
            raise amqp.FrameSyntaxError(f"a header table of {size} bytes overruns the frame")
        return _read_table(buf, start, end, 0), end
    except _DECODE_ERRORS as exc:
        return {UNREADABLE_HEADERS_HEADER: f"{type(exc).__name__}: {exc}",
                RAW_HEADERS_HEADER: bytes(buf[start:min(end, len(buf))])}, min(end, len(buf))


def _sanitize_content_header(buf: bytes) -> bytes:
    """Rebuild a content header py-amqp could not decode into one it can.

    Short-string properties that are not UTF-8 are kept with surrogates (see
    :func:`_lenient_text`); the header table is read by :func:`_lenient_table`
    (py-amqp already keeps undecodable long-string values as bytes). Always
    rebuilt, never re-tried as it is: whether py-amqp's recursion gets to the
    bottom of a deep table depends on the stack at hand.
    """
    flags, = struct.unpack_from(">H", buf, 12)
    offset = 14
    properties: Dict[str, Any] = {}
    for index, (name, kind) in enumerate(amqp.Message.PROPERTIES):
        if not flags & (1 << (15 - index)):
            continue
        if kind == "s":
            size = buf[offset]
            properties[name] = _lenient_text(bytes(buf[offset + 1:offset + 1 + size]))
            offset += 1 + size
        elif kind == "F":
            properties[name], offset = _lenient_table(buf, offset)
        else:
            code = ">B" if kind == "o" else ">Q"
            properties[name], = struct.unpack_from(code, buf, offset)
            offset += struct.calcsize(code)
    return bytes(buf[:12]) + amqp.Message(**properties)._serialize_properties()


def _tolerant_frame_handler(connection: amqp.Connection, callback: Callable) -> Callable:
    """py-amqp's frame handler, made to survive properties it cannot decode.

    py-amqp decodes short strings with ``utf-8``/``surrogatepass``, header
    timestamps into ``datetime`` (a year past 9999 raises) and nested tables
    by recursion (a few thousand levels raise RecursionError). In a content
    header that raises before the frame handler records the header, out of
    ``drain_events``: the server dies, and the broker redelivers the message
    to the next consumer, which dies too. In a ``basic.deliver`` a bad short
    string raises the same way and the message is never seen nor acked. Such
    frames are rewritten here into frames py-amqp decodes (see
    :func:`_lenient_text` and :func:`_lenient_table`); everything else is
    py-amqp's own handler, untouched.
    """

    def on_method(channel_id: int, method_sig: Tuple[int, int], payload: bytes,
                  content: Any) -> Any:
        fmt = _CONTENT_METHOD_ARGS.get(method_sig)
        if fmt is not None:
            payload = _sanitize_method(fmt, payload)
        return callback(channel_id, method_sig, payload, content)

    on_frame = method_framing.frame_handler(connection, on_method)

    def on_tolerant_frame(frame: Tuple[int, int, bytes]) -> Any:
        try:
            return on_frame(frame)
        except _DECODE_ERRORS:
            frame_type, channel_id, buf = frame
            if frame_type != 2:
                raise
            # The handler failed before recording the header: feed it a readable one.
            return on_frame((frame_type, channel_id, _sanitize_content_header(buf)))

    return on_tolerant_frame


class _AMQPChannel(pyamqp.Channel):
    """A py-amqp channel that never decodes message bodies.

    py-amqp's default ``auto_decode=True`` turns the body into ``str``
    whenever a content_encoding is set; tavrida hands bodies on as bytes.
    """

    def __init__(self, connection: amqp.Connection, channel_id: Optional[int] = None,
                 auto_decode: bool = False, on_open: Any = None) -> None:
        super().__init__(connection, channel_id, auto_decode=False, on_open=on_open)


class _AMQPConnection(pyamqp.Connection):
    """A py-amqp connection using the tolerant frame handler and raw channels."""

    Channel = _AMQPChannel

    def __init__(self, **kwargs: Any) -> None:
        kwargs["frame_handler"] = _tolerant_frame_handler
        # tavrida tracks confirms itself (pipelined); py-amqp's mode waits per message.
        kwargs["confirm_publish"] = False
        super().__init__(**kwargs)


class _AMQPTransport(pyamqp.Transport):
    """kombu's py-amqp transport with :class:`_AMQPConnection`."""

    Connection = _AMQPConnection


# --- topic routing on virtual transports --------------------------------------------------------

class _RabbitTopicExchange(TopicExchange):
    """kombu's virtual topic exchange, matching as RabbitMQ does.

    kombu turns ``#`` into ``.*?`` between dots, so ``svc.#`` does not match
    ``svc`` -- the routing key of tavrida responses. The binding's own key
    is matched, not the regex kombu stored beside it in Redis, by the very
    function the in-memory transport routes with.
    """

    def lookup(self, table: Iterable, exchange: str, routing_key: str,
               default: Any) -> Set[str]:
        return {queue for key, _, queue in table if topic_matches(key, routing_key)}


def _own_copies(channel: Any, queue: str) -> None:
    """Make each message this channel receives a copy of its own.

    kombu's virtual transports give every queue's copy of a published message
    the same delivery tag, and Redis keeps un-acked messages in one hash keyed
    by tag: acking the copy in one queue deleted the un-acked record of the
    copy in another, so rejecting or losing that one lost the message. Each
    received message gets a fresh tag here.

    They also requeue (reject, lost consumer) by routing the message through
    its exchange again, handing another copy to every other bound queue. The
    original route is kept in the message properties, and the restore route
    becomes the default exchange with ``queue`` as routing key.
    """
    make_message = channel.Message

    def message(payload: dict, channel: Any = None, **kwargs: Any) -> Any:
        # Copies: kombu's memory transport puts one payload object in every queue.
        properties = dict(payload["properties"])
        info = dict(properties.get("delivery_info") or {})
        properties.setdefault(_ORIGIN, [info.get("exchange") or "", info.get("routing_key") or ""])
        info["exchange"], info["routing_key"] = "", queue
        properties["delivery_info"] = info
        properties["delivery_tag"] = uuid.uuid4().hex
        return make_message(dict(payload, properties=properties), channel=channel, **kwargs)

    channel.Message = message


def _text_key(key: Any) -> Any:
    """A header-table key as text: bytes that are not UTF-8 kept as surrogates."""
    return key.decode("utf-8", "surrogateescape") if isinstance(key, bytes) else key


def _bytes_key(key: Any) -> Any:
    """The inverse of :func:`_text_key` for keys that hold surrogates (others stay text)."""
    if isinstance(key, str) and not key.isascii():
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            return key.encode("utf-8", "surrogateescape")
    return key


# --- reliable consumption on Redis --------------------------------------------------------------

#: Longest in-flight list put back at once (it holds one message at a time, save accidents).
_MAX_RECOVERED = 10_000


class _RedisFetch:
    """Takes one queue's messages on Redis without a moment where only the network holds them.

    kombu pops with ``BRPOP``: Redis removes the message as it sends it, and
    kombu records it as un-acked only after reading it. A connection lost in
    between loses the message: the reply dies on the wire, or the record
    cannot be written (both seen under cuts). Here the pop is a
    ``BRPOPLPUSH`` into a list of this consumer's own,
    ``<queue>.tavrida-inflight.<consumer tag>``; the copy there is removed
    once kombu has recorded the message, and whatever is left in the list
    goes back to the queue when the consumer starts again (after a
    reconnect). Only the queue's plain list is consumed: tavrida never
    publishes with a priority, so kombu's priority lists stay empty.
    """

    def __init__(self, queue: str, tag: str) -> None:
        self.queue = queue
        self.inflight = f"{queue}.tavrida-inflight.{tag}"
        #: Items handed to kombu whose in-flight copy could not be removed (the
        #: un-acked restore brings them back: their copy must go, not be restored).
        self.handed: List[bytes] = []
        #: Delivery tags whose un-acked record may have been written although
        #: kombu failed (the reply was lost): the in-flight copy wins.
        self.maybe_unacked: List[str] = []

    def install(self, channel: Any) -> None:
        """Replace the channel's BRPOP by BRPOPLPUSH (call before consuming)."""
        fetch = self
        prefix = getattr(channel, "global_keyprefix", "") or ""

        def brpop_start(timeout: Optional[float] = None) -> None:
            if timeout is None:
                timeout = channel.brpop_timeout
            if fetch.queue not in channel.active_queues:
                return
            channel._in_poll = channel.client.connection
            channel._brpop_sent_at = time.monotonic()
            channel.client.connection.send_command(
                "BRPOPLPUSH", prefix + fetch.queue, prefix + fetch.inflight, timeout or 0)

        def brpop_read(**options: Any) -> bool:
            try:
                try:
                    item = channel.client.parse_response(channel.client.connection,
                                                         "BRPOPLPUSH", **options)
                except channel.connection_errors:
                    channel.client.connection.disconnect()
                    raise
                if item is None:
                    raise queue_module.Empty()
                channel.connection._deliver(json_loads(bytes_to_str(item)), fetch.queue)
                fetch.handed.append(item)
                with channel.conn_or_acquire() as client:
                    client.execute_command("LREM", prefix + fetch.inflight, 1, item)
                fetch.handed.remove(item)
                return True
            finally:
                channel._in_poll = None
                flush = getattr(channel, "_flush_brpop_reauth", None)
                if flush is not None:
                    flush()

        qos = channel.qos
        append = qos.append

        def append_noting_failures(message: Any, delivery_tag: Any) -> None:
            try:
                append(message, delivery_tag)
            except BaseException:
                fetch.maybe_unacked.append(delivery_tag)
                raise

        channel._brpop_start = brpop_start
        channel._brpop_read = brpop_read
        channel.handlers["BRPOP"] = brpop_read
        qos.append = append_noting_failures

    def recover(self, channel: Any) -> int:
        """Put what an earlier connection left in flight back in the queue; how many.

        Raises the connection error when Redis cannot be reached (the caller
        reconnects and this runs again).
        """
        prefix = getattr(channel, "global_keyprefix", "") or ""
        for tag in list(self.maybe_unacked):
            channel.qos._remove_from_indices(tag).execute()
            self.maybe_unacked.remove(tag)
        moved = 0
        with channel.conn_or_acquire() as client:
            for item in list(self.handed):
                client.execute_command("LREM", prefix + self.inflight, 1, item)
                self.handed.remove(item)
            # RPOPLPUSH: the oldest first, to the back of the queue (as kombu restores).
            while moved < _MAX_RECOVERED and client.execute_command(
                    "RPOPLPUSH", prefix + self.inflight, prefix + self.queue) is not None:
                moved += 1
        if moved:
            LOG.info("put %d message(s) left in flight back in %s", moved, self.queue)
        return moved


# --- deliveries ---------------------------------------------------------------------------------

class KombuDelivery(Delivery):
    """A message received by :class:`KombuTransport`; ack/reject from any thread."""

    def __init__(self, transport: "KombuTransport", channel: Any, delivery_tag: Any,
                 generation: int, body: bytes, headers: Dict[str, Any],
                 properties: Dict[str, Any], exchange: str, routing_key: str, queue: str,
                 redelivered: bool) -> None:
        self.body = body
        self.headers = headers
        self.properties = properties
        self.exchange = exchange
        self.routing_key = routing_key
        self.queue = queue
        self.redelivered = redelivered
        self._transport = transport
        self._channel = channel
        self._delivery_tag = delivery_tag
        self._generation = generation
        self._settled = False

    def ack(self) -> None:
        """Acknowledge; dropped if the connection it came on is gone (it is redelivered)."""
        self._transport._settle(self, None)

    def reject(self, requeue: bool) -> None:
        """Reject (``requeue=True`` gives it back to the queue)."""
        self._transport._settle(self, bool(requeue))

    def __repr__(self) -> str:
        return (f"<KombuDelivery {self.queue!r} from {self.exchange!r}/{self.routing_key!r}"
                f" {len(self.body)} bytes>")


class _Consumer:
    """What :meth:`KombuTransport.consume` was asked, kept to consume again after a reconnect."""

    def __init__(self, queue: str, on_message: OnMessage, prefetch_count: int) -> None:
        self.queue = queue
        self.on_message = on_message
        self.prefetch_count = prefetch_count
        self.tag = f"tavrida-{uuid.uuid4().hex}"
        self.channel: Any = None
        #: Redis only: the reliable fetch, kept across reconnects (see :class:`_RedisFetch`).
        self.fetch: Optional[_RedisFetch] = None


class _Batch:
    """Envelopes of one publish call and what became of each."""

    def __init__(self, envelopes: List[OutgoingEnvelope]) -> None:
        self.envelopes = envelopes
        self.todo: Dict[int, None] = dict.fromkeys(range(len(envelopes)))
        self.failed: Dict[int, str] = {}
        #: Failed because they cannot be written at all: trying again cannot help.
        self.unencodable: Set[int] = set()
        #: Failed because no queue took them (mandatory ones).
        self.unroutable: Set[int] = set()
        #: Why the rest failed, when the broker could not be reached.
        self.connection_failed: Optional[exceptions.ConnectionFailed] = None

    def fail(self, index: int, reason: str, unencodable: bool = False,
             unroutable: bool = False) -> None:
        """Record why envelope ``index`` failed, unless it is settled already."""
        if index in self.todo:
            del self.todo[index]
            self.failed[index] = reason
            if unencodable:
                self.unencodable.add(index)
            if unroutable:
                self.unroutable.add(index)

    def error(self) -> exceptions.PublishFailed:
        """The PublishFailed that names every failed envelope.

        ``failed``: index -> reason; ``envelopes``: the failed ones, for
        callers that retry; ``unencodable``: the indexes that can never be
        published as they are; ``unroutable``: those no queue took.
        """
        error = publish_error(self.envelopes, self.failed, self.unencodable, self.unroutable)
        cause = self.connection_failed
        if cause is None:
            return error
        return exceptions.PublishConnectionFailed(
            safe_url=cause.safe_url, cause=cause.cause, reason=error.kwargs["reason"],
            exchange=error.exchange, routing_key=error.routing_key, failed=error.failed,
            envelopes=error.envelopes, unencodable=error.unencodable,
            unroutable=error.unroutable)


#: Errors of a message that cannot be encoded (header types, names too long, values out
#: of range, tables nested deeper than py-amqp's recursion can write).
_UNENCODABLE = (amqp.FrameSyntaxError, TypeError, ValueError, OverflowError, RecursionError,
                struct.error)
#: Bytes of a content-header frame besides the properties (frame header and end,
#: class id, weight, body size).
_CONTENT_HEADER_OVERHEAD = 8 + 12


class _CheckedMessage(amqp.Message):
    """An amqp.Message that serializes its properties once, so their size can be checked.

    A content header must fit in one frame: RabbitMQ answers a larger one by
    closing the connection (FRAME_ERROR), and every retry would do the same.
    """

    _serialized: Optional[bytes] = None

    def _serialize_properties(self) -> bytes:
        if self._serialized is None:
            self._serialized = super()._serialize_properties()
        return self._serialized


class _ConfirmTimeout(Exception):
    """The broker did not confirm in time."""


class _NoRoute(Exception):
    """A virtual transport found no queue for a message (nothing was stored)."""


def _strict_lookup(channel: Any) -> None:
    """Make a virtual channel's publish raise :class:`_NoRoute` when no queue matches.

    kombu's ``Channel._lookup`` (private; the one place routing is decided)
    sends such a message to its ``deadletter_queue``, which topic exchanges
    then skip: it is silently gone. Here the same table and exchange type
    decide, and an empty answer raises before anything is stored. The
    default exchange keeps kombu's rule: the message goes to the list named
    by the routing key (Redis keeps it there until that queue is consumed).
    """

    def lookup(exchange: str, routing_key: str, default: Any = None) -> List[str]:
        if not exchange:
            return [routing_key]
        try:
            table = channel.get_table(exchange)
        except KeyError:  # kombu's memory transport: an exchange it never saw
            table = []
        queues = list(channel.typeof(exchange).lookup(table, exchange, routing_key, None))
        if not queues:
            raise _NoRoute()
        return queues

    channel._lookup = lookup


# --- the transport ------------------------------------------------------------------------------

class KombuTransport(Transport):
    """A :class:`~tavrida.transports.base.Transport` on any kombu broker URL.

    Connections open lazily (first declare, consume, drain or publish).
    Connection errors are retried with kombu's retry policy: the first
    connect ``connection_attempts`` times, later reconnects
    ``reconnect_attempts`` times (-1: for ever), sleeping ``retry_delay``,
    then ``2 * retry_delay``, ... up to :attr:`max_retry_interval`.
    """

    #: Longest wait inside one ``drain_events`` call: bounds how late a queued
    #: ack from another thread, a heartbeat or :meth:`stop` is noticed.
    poll_interval = 0.05
    #: Shortest such wait, used right after handing out a delivery.
    min_poll_interval = 0.001
    #: Seconds to wait for publisher confirms before raising PublishFailed.
    confirm_timeout = 30.0
    #: Upper bound of the sleep between reconnect attempts.
    max_retry_interval = 10.0
    #: Seconds between checks that a virtual broker (Redis) still has the bindings.
    topology_check_interval = 2.0

    def __init__(self, config: ConnectionConfig) -> None:
        if config.is_memory:
            raise exceptions.IncorrectAMQPConfig(
                reason="memory:// is tavrida's own transport; kombu's is kombu+memory://")
        self._config = config
        self._is_amqp = config.scheme in AMQP_SCHEMES
        self._confirms = self._is_amqp and config.publisher_confirms
        options = config.transport_options
        properties = dict(options.get("client_properties") or {})
        #: Base of the names the connections give the broker: ``<name>:consume`` and
        #: ``<name>:publish`` (RabbitMQ ``connection_name``, Redis ``CLIENT SETNAME``).
        self.connection_name: str = (properties.get("connection_name")
                                     or options.get("client_name")
                                     or f"tavrida-{os.getpid()}-{uuid.uuid4().hex[:12]}")
        errors = kombu.Connection(**self._connection_params("probe"))
        self._retry_errors = tuple(errors.recoverable_connection_errors)
        self._connection_errors = tuple(errors.connection_errors)
        self._channel_errors = tuple(errors.channel_errors)

        # Consuming connection: state guarded by _lock.
        self._lock = threading.RLock()
        self._conn: Optional[kombu.Connection] = None
        self._control: Any = None
        self._generation = 0
        self._ever_connected = False
        self._broken = False
        self._exchanges: Dict[str, None] = {}
        self._queues: Dict[str, None] = {}
        self._bindings: Dict[Binding, None] = {}
        self._reply_queues: Dict[str, Tuple[Binding, ...]] = {}
        self._consumers: List[_Consumer] = []
        #: Consumers RabbitMQ cancelled (their queue was deleted), to declare and resume.
        self._resume: List[_Consumer] = []
        self._next_topology_check = 0.0
        self._ready: Deque[Tuple[KombuDelivery, OnMessage]] = collections.deque()
        #: Deliveries handed out and not yet acked or rejected (ids; set ops are atomic).
        self._unsettled: Set[int] = set()
        self._slice = self.poll_interval
        self._settles: Deque[Tuple[KombuDelivery, Optional[bool]]] = collections.deque()
        #: kombu QoS objects of lost virtual channels whose un-acked messages are not back yet.
        self._unrestored: List[Any] = []
        self._stop = threading.Event()
        self._closed = False
        #: Set by close() and interrupt(): cuts retry sleeps short.
        self._wake = threading.Event()
        self._interrupted = False
        #: Per-thread deadline of blocking operations (see deadline()).
        self._local = threading.local()
        self._closing = threading.Event()
        #: Keeps heartbeats going while a callback runs on the draining thread (AMQP).
        self._beat_thread: Optional[threading.Thread] = None
        self._last_beat = 0.0

        # Publishing connection: state guarded by _publish_lock.
        self._publish_lock = threading.Lock()
        self._pub_conn: Optional[kombu.Connection] = None
        self._pub_channel: Any = None
        self._pub_ever_connected = False
        self._pub_confirming = False
        self._pub_seq = 0
        #: Sequence number of the last publish RabbitMQ returned (see _on_return).
        self._pub_returned_seq = 0
        self._pub_waiting: "collections.OrderedDict[int, int]" = collections.OrderedDict()
        self._pub_batch: Optional[_Batch] = None
        self._pub_exchanges: Set[str] = set()

    def __repr__(self) -> str:
        return f"KombuTransport({self._config.safe_url!r})"

    # -- connection parameters ------------------------------------------------------------------

    def _connection_params(self, role: str, heartbeat: float = 0) -> Dict[str, Any]:
        """kombu.Connection arguments for one connection (``role`` names it on the broker)."""
        config = self._config
        options: Dict[str, Any] = {}
        ssl: Any = False
        if self._is_amqp:
            transport: Any = _AMQPTransport
            if config.channel_max:
                options["channel_max"] = config.channel_max
            if config.frame_max:
                options["frame_max"] = config.frame_max
            if config.locale:
                options["locale"] = config.locale
            if config.ssl:
                ssl = config.ssl_options or True
        elif config.scheme in REDIS_SCHEMES:
            transport = config.scheme
            options["socket_connect_timeout"] = config.socket_timeout
            # Bounds every read (kombu's default has none: a broker that stops answering
            # would hang a publish for ever); longer than the 1 s BRPOP wait.
            options["socket_timeout"] = config.socket_timeout
            if config.ssl:
                # kombu silently ignores a non-dict, and warns into CERT_NONE without one.
                ssl = config.ssl_options or {"ssl_cert_reqs": ssl_module.CERT_REQUIRED}
        else:
            transport = "memory"
            options["polling_interval"] = 0.005
        options.update(config.transport_options)
        if self._is_amqp:
            properties = dict(options.get("client_properties") or {})
            properties["connection_name"] = f"{self.connection_name}:{role}"
            options["client_properties"] = properties
        elif config.scheme in REDIS_SCHEMES:
            options["client_name"] = f"{self.connection_name}:{role}"
        credentials = config.credentials
        return {
            "hostname": config.host or "localhost",
            "port": config.port,
            "userid": credentials.username if credentials else None,
            "password": credentials.password if credentials else None,
            "virtual_host": config.virtual_host,
            "ssl": ssl,
            "transport": transport,
            "connect_timeout": config.socket_timeout,
            "heartbeat": heartbeat,
            "transport_options": options,
        }

    def _retry(self, fun: Callable[[], Any], initial: bool, what: str) -> Any:
        """Run ``fun`` until it stops raising connection errors, per the retry policy.

        Gives up with :class:`~tavrida.exceptions.ConnectionFailed` when the
        attempts run out, this thread's :meth:`deadline` passes, or the
        transport is closed or interrupted; an error retrying cannot mend (a
        refused login) raises it at once. Sleeps ``retry_delay``, then
        ``2 * retry_delay``, ... up to :attr:`max_retry_interval`, waking at
        once on :meth:`close` or :meth:`interrupt`.
        """
        config = self._config
        attempts = config.connection_attempts if initial else config.reconnect_attempts
        tries_left = None if attempts < 0 else max(attempts, 1)
        delay = max(config.retry_delay, 0.0)
        interval = delay
        deadline = getattr(self._local, "deadline", None)
        while True:
            self._check_not_stopped()
            try:
                return fun()
            except self._retry_errors as exc:
                error: BaseException = exc
            except self._connection_errors as exc:
                raise self._failed(exc) from exc
            if tries_left is not None:
                tries_left -= 1
                if tries_left <= 0:
                    raise self._failed(error, f"gave up after {attempts} attempt(s)") from error
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise self._failed(error, "timed out") from error
            wait = interval if deadline is None else min(interval, deadline - now)
            LOG.warning("%s %s failed (%s: %s); retrying in %.1fs", what,
                        self._config.safe_url, type(error).__name__, error, wait)
            self._wake.wait(wait)
            interval = min(interval + delay, max(delay, self.max_retry_interval))

    def _check_not_stopped(self) -> None:
        if self._closed:
            raise self._failed(None, "the transport is closed")
        if self._interrupted:
            raise self._failed(None, "stopped while the broker was unreachable")

    def _failed(self, cause: Optional[BaseException],
                reason: str = "") -> exceptions.ConnectionFailed:
        """A ConnectionFailed naming the masked URL and the cause (no password in it)."""
        text = f"{type(cause).__name__}: {cause}" if cause is not None else ""
        text = f"{reason} ({text})" if reason and text else reason or text
        credentials = self._config.credentials
        if credentials is not None and credentials.password:
            text = text.replace(credentials.password, "***")
        return exceptions.ConnectionFailed(safe_url=self._config.safe_url, cause=cause,
                                           reason=text)

    @contextlib.contextmanager
    def deadline(self, timeout: Optional[float]) -> Iterator[None]:
        """Bound this thread's blocking operations inside the block (see the base class)."""
        previous = getattr(self._local, "deadline", None)
        if timeout is None:
            yield
            return
        mine = time.monotonic() + max(timeout, 0.0)
        self._local.deadline = mine if previous is None else min(previous, mine)
        try:
            yield
        finally:
            self._local.deadline = previous

    @contextlib.contextmanager
    def _holding(self, lock: Any) -> Iterator[None]:
        """Acquire ``lock`` before this thread's deadline, or raise ConnectionFailed."""
        deadline = getattr(self._local, "deadline", None)
        if deadline is None:
            lock.acquire()
        elif not lock.acquire(timeout=max(deadline - time.monotonic(), 0.0)):
            raise self._failed(None, "timed out: another thread holds the connection "
                                     "(reconnecting)")
        try:
            yield
        finally:
            lock.release()

    def _open_connection(self, role: str, heartbeat: float = 0) -> kombu.Connection:
        """Connect once (retries belong to the caller), before this thread's deadline.

        Errors retrying cannot mend (login refused, no such virtual host)
        raise ConnectionFailed.
        """
        params = self._connection_params(role, heartbeat)
        deadline = getattr(self._local, "deadline", None)
        if deadline is not None:
            remaining = max(deadline - time.monotonic(), 0.1)
            for owner, key in ((params, "connect_timeout"),
                               (params["transport_options"], "socket_connect_timeout")):
                if key in owner:
                    owner[key] = min(owner[key] or remaining, remaining)
        conn = kombu.Connection(**params)
        try:
            conn.ensure_connection(max_retries=0, reraise_as_library_errors=False)
        except self._retry_errors:
            raise
        except Exception as exc:
            try:
                conn.collect()
            except Exception:  # noqa: BLE001 - never connected: nothing to report
                LOG.debug("ignoring error while dropping a connection", exc_info=True)
            raise self._failed(exc) from exc
        return conn

    def _new_channel(self, conn: kombu.Connection) -> Any:
        channel = conn.channel()
        if not self._is_amqp:
            channel.exchange_types["topic"] = _RabbitTopicExchange(channel)
        return channel

    # -- consuming connection --------------------------------------------------------------------

    def _ensure_connected(self) -> None:
        """Open (or re-open) the consuming connection; call with ``_lock`` held."""
        if self._closed:
            raise exceptions.TavridaError("the transport is closed")
        if self._conn is not None and not self._broken and self._conn.connected:
            return
        initial = not self._ever_connected
        if not initial:
            LOG.info("reconnecting to %s", self._config.safe_url)
        self._retry(self._connect, initial, "connecting to")
        if not initial:
            LOG.info("reconnected to %s", self._config.safe_url)

    def _connect(self) -> None:
        """One attempt: connect, declare everything remembered, consume again."""
        self._drop_connection()
        heartbeat = self._config.heartbeat_interval or 0
        self._conn = self._open_connection("consume", heartbeat if self._is_amqp else 0)
        self._generation += 1
        if self._is_amqp and heartbeat and self._beat_thread is None:
            self._last_beat = time.monotonic()
            self._beat_thread = threading.Thread(target=self._keep_heartbeats, daemon=True,
                                                 name=f"tavrida-heartbeat-{self.connection_name}")
            self._beat_thread.start()
        self._ever_connected = True
        try:
            self._control = self._new_channel(self._conn)
            self._declare_on(self._control, list(self._exchanges), list(self._queues),
                             list(self._bindings))
            for queue, bindings in self._reply_queues.items():
                self._declare_reply_on(self._control, queue, bindings)
            for consumer in self._consumers:
                self._start_consumer(consumer)
        except BaseException:
            self._drop_connection()
            raise
        if self._unrestored:
            self._restore_unacked()

    def _drop_connection(self) -> None:
        """Forget the consuming connection without talking to the broker."""
        conn, self._conn, self._control = self._conn, None, None
        self._broken = False
        self._resume = []  # a new connection consumes everything again
        channels = [consumer.channel for consumer in self._consumers
                    if consumer.channel is not None]
        for consumer in self._consumers:
            consumer.channel = None
        # Deliveries not yet handed out came on the dead connection: the broker redelivers them.
        self._ready.clear()
        self._unsettled.clear()
        if conn is not None and not self._is_amqp:
            # RabbitMQ requeues what a lost connection held; Redis has no such thing.
            self._unrestored.extend(channel.qos for channel in channels)
            self._restore_unacked()
        if conn is not None:
            try:
                conn.collect()
            except Exception:  # the connection is dead anyway: nothing to report
                LOG.debug("ignoring error while dropping a connection", exc_info=True)

    def _restore_unacked(self) -> None:
        """Give the un-acked messages of lost virtual channels back to their queues.

        kombu restores them when a channel closes, but closing a channel whose
        Redis connection died mid-BRPOP raises before that, leaving them in
        kombu's ``unacked`` hash until ``visibility_timeout`` (an hour) -- among
        them deliveries received and never handed out. Done here instead, with
        fresh connections from the channel's pool; what cannot be restored now
        (Redis down) is tried again after each reconnect.
        """
        pending, self._unrestored = self._unrestored, []
        for qos in pending:
            try:
                qos._flush()  # forget what was acked meanwhile
                if qos._delivered:
                    LOG.info("giving %d un-acked message(s) back to their queue",
                             len(qos._delivered))
                    qos.restore_unacked()  # clears _delivered: kombu's own close restores nothing
            except Exception as exc:  # noqa: BLE001 - kept for the next attempt
                LOG.warning("could not give un-acked messages back yet (%s: %s)",
                            type(exc).__name__, exc)
                self._unrestored.append(qos)

    def _lost(self, exc: BaseException) -> None:
        LOG.warning("connection to %s lost (%s: %s)", self._config.safe_url,
                    type(exc).__name__, exc)
        self._drop_connection()

    def _raw_connection(self) -> Any:
        """The transport-level connection, without kombu's implicit reconnect."""
        return self._conn._connection if self._conn is not None else None

    # -- declarations ----------------------------------------------------------------------------

    def _declare_on(self, channel: Any, exchanges: Iterable[str], queues: Iterable[str],
                    bindings: Iterable[Binding]) -> None:
        # The tavrida 1.0 declarations exactly: no arguments, nothing exclusive or auto-deleted.
        for name in exchanges:
            kombu.Exchange(name, "topic", durable=True, auto_delete=False).declare(channel=channel)
        for name in queues:
            kombu.Queue(name, durable=True, exclusive=False, auto_delete=False,
                        no_declare=False).declare(channel=channel)
        for binding in bindings:
            channel.queue_bind(queue=binding.queue, exchange=binding.exchange,
                               routing_key=binding.routing_key)

    def _declare_reply_on(self, channel: Any, queue: str, bindings: Iterable[Binding]) -> None:
        bindings = list(bindings)
        # Binding needs the exchange; declared as everywhere else (same as the memory transport).
        self._declare_on(channel, dict.fromkeys(b.exchange for b in bindings), (), ())
        kombu.Queue(queue, durable=False, exclusive=self._is_amqp,
                    auto_delete=True).declare(channel=channel)
        for binding in bindings:
            channel.queue_bind(queue=queue, exchange=binding.exchange,
                               routing_key=binding.routing_key)

    def _with_connection(self, action: Callable[[Any], Any], remember: Callable[[], None]) -> Any:
        """Run ``action(control_channel)``, reconnecting on connection errors.

        ``remember`` records the operation for reconnects; it runs before a
        reconnect (which then performs the declarations itself) or once the
        action worked, never after the broker refused it.
        """
        with self._holding(self._lock):
            for attempt in range(3):
                self._ensure_connected()
                try:
                    result = action(self._control)
                except self._retry_errors as exc:
                    remember()
                    self._lost(exc)
                    if attempt == 2 or self._config.reconnect_attempts == 0:
                        raise self._failed(exc) from exc
                    continue
                remember()
                return result
        return None

    def declare(self, topology: Topology) -> None:
        """Declare exchanges, queues, bindings (tavrida 1.0 style); again after reconnects.

        Raises the broker library's error when the broker refuses (e.g. 406
        for a same-named object declared with other properties).
        """
        def remember() -> None:
            self._exchanges.update(dict.fromkeys(topology.exchanges))
            self._queues.update(dict.fromkeys(topology.queues))
            self._bindings.update(dict.fromkeys(topology.bindings))

        self._with_connection(
            lambda channel: self._declare_on(channel, topology.exchanges, topology.queues,
                                             topology.bindings),
            remember)

    def declare_reply_queue(self, queue: str, bindings: Iterable[Binding]) -> None:
        """Declare a private queue that goes away with this transport.

        RabbitMQ: exclusive and auto-delete, so the broker deletes it when the
        connection closes, however the process ends. Redis and memory: deleted
        by :meth:`close` (a crashed process leaves it behind). Messages sent to
        it while the connection is down are lost; it is declared again on
        reconnect. The exchanges named by ``bindings`` are declared if missing;
        ``Binding.queue`` is ignored: bindings go to ``queue``.
        """
        bindings = tuple(bindings)

        def remember() -> None:
            self._reply_queues[queue] = bindings

        self._with_connection(lambda channel: self._declare_reply_on(channel, queue, bindings),
                              remember)

    def delete(self, exchanges: Iterable[str] = (), queues: Iterable[str] = ()) -> None:
        """Delete queues, then exchanges, and forget them (missing ones are fine)."""
        exchanges, queues = list(exchanges), list(queues)
        with self._lock:
            for consumer in [c for c in self._consumers if c.queue in queues]:
                self._cancel_consumer(consumer)
            for name in queues:
                self._queues.pop(name, None)
                self._reply_queues.pop(name, None)
            for name in exchanges:
                self._exchanges.pop(name, None)
            self._bindings = {b: None for b in self._bindings
                              if b.queue not in queues and b.exchange not in exchanges}

            def action(channel: Any) -> None:
                for name in queues:
                    channel.queue_delete(queue=name)
                for name in exchanges:
                    channel.exchange_delete(exchange=name)

            self._with_connection(action, lambda: None)
        with self._publish_lock:
            self._pub_exchanges.difference_update(exchanges)

    def queue_size(self, queue: str) -> Optional[int]:
        """Messages ready in ``queue``; None when it does not exist (RabbitMQ)."""
        def action(channel: Any) -> Optional[int]:
            if not self._is_amqp:
                # Redis has no empty-queue object: a passive declare would say 404.
                return channel.queue_declare(queue=queue, passive=False,
                                             auto_delete=False).message_count
            try:
                return channel.queue_declare(queue=queue, passive=True).message_count
            except amqp.NotFound:
                return None  # py-amqp has already reopened the channel

        return self._with_connection(action, lambda: None)

    # -- consuming -------------------------------------------------------------------------------

    def consume(self, queue: str, on_message: OnMessage, prefetch_count: int) -> None:
        """Deliver ``queue`` to ``on_message`` inside :meth:`drain` (manual acks).

        ``prefetch_count`` bounds the un-acked deliveries of this consumer
        (0: no bound). Consumes again after every reconnect.
        """
        consumer = _Consumer(queue, on_message, max(int(prefetch_count), 0))
        with self._holding(self._lock):
            self._ensure_connected()
            self._consumers.append(consumer)
            try:
                self._start_consumer(consumer)
            except self._retry_errors as exc:
                self._lost(exc)
                self._ensure_connected()
            except BaseException:
                self._consumers.remove(consumer)
                self._close_channel(consumer.channel)
                consumer.channel = None
                raise

    def cancel(self) -> None:
        """Stop taking messages; received ones not yet handed out go back to their queue.

        Consumer channels stay open until :meth:`close`, so deliveries already
        handed out can still be acked or rejected. Not consumed again after a
        reconnect.
        """
        with self._lock:
            consumers, self._consumers = self._consumers, []
            if self._conn is None or self._broken:
                return  # nothing is consuming on the broker
            try:
                for consumer in consumers:
                    if consumer.channel is not None:
                        # py-amqp waits for cancel-ok: deliveries still in flight land in _ready.
                        consumer.channel.basic_cancel(consumer.tag)
                        if consumer.fetch is not None:
                            consumer.fetch.recover(consumer.channel)
            except self._connection_errors + self._channel_errors as exc:
                self._lost(exc)  # the broker gives everything back itself
                return
            while self._ready:
                delivery, _ = self._ready.popleft()
                delivery._settled = True
                self._settles.append((delivery, True))
            self._perform_settles()

    def _start_consumer(self, consumer: _Consumer) -> None:
        channel = self._new_channel(self._conn)
        consumer.channel = channel
        if not self._is_amqp:
            _own_copies(channel, consumer.queue)
        if self._config.scheme in REDIS_SCHEMES:
            if consumer.fetch is None:
                consumer.fetch = _RedisFetch(consumer.queue, consumer.tag)
            consumer.fetch.recover(channel)
            consumer.fetch.install(channel)
        channel.basic_qos(0, consumer.prefetch_count, False)
        self._basic_consume(consumer, channel)

    def _basic_consume(self, consumer: _Consumer, channel: Any) -> None:
        generation = self._generation
        options: Dict[str, Any] = {}
        if self._is_amqp:
            # RabbitMQ cancels a consumer whose queue was deleted: declare it again.
            options["on_cancel"] = lambda tag: self._resume.append(consumer)
        channel.basic_consume(
            queue=consumer.queue, no_ack=False, consumer_tag=consumer.tag,
            callback=lambda message: self._on_message(consumer, channel, generation, message),
            **options)

    def _check_topology(self) -> None:
        """Declare again what the broker lost while connected; call with ``_lock`` held.

        RabbitMQ: a consumer the broker cancelled (its queue was deleted)
        -- its queue, the other queues and every binding are declared again
        and it consumes again on its channel. Redis and kombu's memory
        transport tell nobody: every :attr:`topology_check_interval` seconds
        the bindings are compared with the broker's tables, and declared
        again when one is missing (a deleted queue, a Redis restarted
        without persistence under a live connection, a FLUSHALL).
        """
        resume = self._resume
        if self._is_amqp:
            if not resume:
                return
        else:
            now = time.monotonic()
            if now < self._next_topology_check or not self._consumers:
                return
            self._next_topology_check = now + self.topology_check_interval
            missing = self._missing_bindings()
            if not missing:
                return
            # kombu skips a binding its channel state already records: forget those first.
            state = self._control.state
            for binding in missing:
                state.binding_delete(binding.queue, binding.exchange, binding.routing_key)
                table = state.exchanges.get(binding.exchange, {}).get("table")
                if table:
                    table[:] = [row for row in table
                                if (row[0], row[-1]) != (binding.routing_key, binding.queue)]
        self._resume = []
        LOG.warning("queues or bindings on %s disappeared (%s); declaring them again",
                    self._config.safe_url,
                    ", ".join(sorted({c.queue for c in resume})) or "bindings")
        self._declare_on(self._control, list(self._exchanges), list(self._queues),
                         list(self._bindings))
        for queue, bindings in self._reply_queues.items():
            self._declare_reply_on(self._control, queue, bindings)
        for consumer in resume:
            if consumer in self._consumers and consumer.channel is not None:
                self._basic_consume(consumer, consumer.channel)

    def _missing_bindings(self) -> List[Binding]:
        """Bindings declared here that the virtual broker's tables no longer have."""
        wanted: Dict[str, List[Binding]] = {}
        for binding in self._bindings:
            wanted.setdefault(binding.exchange, []).append(binding)
        for queue, bindings in self._reply_queues.items():
            for binding in bindings:
                wanted.setdefault(binding.exchange, []).append(
                    Binding(queue, binding.exchange, binding.routing_key))
        missing = []
        for exchange, bindings in wanted.items():
            try:
                table = self._control.get_table(exchange)
            except KeyError:  # kombu's memory transport: the exchange is gone
                table = []
            present = {(row[0], row[-1]) for row in table}
            missing += [b for b in bindings if (b.routing_key, b.queue) not in present]
        return missing

    def _cancel_consumer(self, consumer: _Consumer) -> None:
        self._consumers.remove(consumer)
        channel, consumer.channel = consumer.channel, None
        if channel is not None:
            try:
                channel.basic_cancel(consumer.tag)
            except self._connection_errors + self._channel_errors:
                LOG.debug("could not cancel consumer of %s", consumer.queue, exc_info=True)
            self._close_channel(channel)

    def _close_channel(self, channel: Any) -> None:
        if channel is None:
            return
        try:
            channel.close()
        except Exception:  # closing is best effort
            LOG.debug("ignoring error while closing a channel", exc_info=True)

    def _on_message(self, consumer: _Consumer, channel: Any, generation: int,
                    message: Any) -> None:
        """Wrap a broker message (raw py-amqp or kombu virtual) into a Delivery."""
        if self._is_amqp:
            delivery = self._amqp_delivery(consumer, channel, generation, message)
        else:
            delivery = self._virtual_delivery(consumer, channel, generation, message)
        # Handed out by drain() once the connection lock is released.
        self._ready.append((delivery, consumer.on_message))

    def _amqp_delivery(self, consumer: _Consumer, channel: Any, generation: int,
                       message: amqp.Message) -> KombuDelivery:
        props = message.properties
        info = message.delivery_info
        body = message.body
        if not isinstance(body, bytes):
            body = body.encode("utf-8") if isinstance(body, str) else bytes(body)
        headers = dict(props.get("application_headers") or {})
        if not all(type(key) is str for key in headers):
            # py-amqp keeps a key that is not UTF-8 as bytes; the core expects text.
            headers = {_text_key(key): value for key, value in headers.items()}
        return KombuDelivery(
            self, channel, info["delivery_tag"], generation, body, headers,
            {name: props[name] for name in _PROPERTY_NAMES if props.get(name) is not None},
            info.get("exchange") or "", info.get("routing_key") or "", consumer.queue,
            bool(info.get("redelivered")))

    def _virtual_delivery(self, consumer: _Consumer, channel: Any, generation: int,
                          message: Any) -> KombuDelivery:
        raw = message._raw  # the stored payload: kombu's Message may have decompressed the body
        props = raw.get("properties") or {}
        info = props.get("delivery_info") or {}
        body = raw.get("body") or b""
        if body:
            body = channel.decode_body(body, props.get("body_encoding"))
        if isinstance(body, str):
            body = body.encode("utf-8")
        headers = dict(raw.get("headers") or {})
        redelivered = bool(info.get("redelivered") or raw.get("redelivered"))
        if redelivered and headers.get("redelivered") is True:
            headers.pop("redelivered")  # added by kombu's Redis restore, not by the sender
        properties = {name: props[name] for name in _PROPERTY_NAMES
                      if props.get(name) is not None}
        if properties.get("priority") == 0:
            del properties["priority"]  # kombu's filler, not the sender's
        for name, key in (("content_type", "content-type"),
                          ("content_encoding", "content-encoding")):
            if raw.get(key) is not None:
                properties[name] = raw[key]
        exchange, routing_key = props.get(_ORIGIN) or ["", consumer.queue]
        return KombuDelivery(self, channel, props.get("delivery_tag"), generation, body,
                             headers, properties, exchange, routing_key, consumer.queue,
                             redelivered)

    def _settle(self, delivery: KombuDelivery, requeue: Optional[bool]) -> None:
        """Queue an ack (``requeue is None``) or reject; do it now if the connection is free."""
        if delivery._settled:
            LOG.warning("%r was already acked or rejected; ignoring", delivery)
            return
        delivery._settled = True
        self._unsettled.discard(id(delivery))
        self._slice = self.min_poll_interval
        self._settles.append((delivery, requeue))
        # Busy means drain() is in the middle of a (short) read: it settles right after.
        if self._lock.acquire(blocking=False):
            try:
                self._perform_settles()
            finally:
                self._lock.release()

    def _perform_settles(self) -> None:
        """Send queued acks/rejects; call with ``_lock`` held."""
        while self._settles:
            delivery, requeue = self._settles.popleft()
            if (self._conn is None or self._broken or delivery._generation != self._generation
                    or delivery._channel is None):
                LOG.debug("dropping ack of %r: its connection is gone", delivery)
                continue
            try:
                if requeue is None:
                    delivery._channel.basic_ack(delivery._delivery_tag)
                else:
                    delivery._channel.basic_reject(delivery._delivery_tag, requeue=requeue)
            except self._connection_errors + self._channel_errors as exc:
                # drain() reconnects; the broker redelivers what was not acked.
                LOG.warning("could not settle %r (%s: %s)", delivery, type(exc).__name__, exc)
                self._broken = True

    # -- draining --------------------------------------------------------------------------------

    def drain(self, timeout: float) -> bool:
        """Deliver waiting messages, waiting at most ``timeout`` seconds for one.

        Returns True once something was delivered. Pumps heartbeats, performs
        queued acks and reconnects (re-declaring and consuming again) when the
        connection is lost; raises only when reconnect attempts run out.
        """
        deadline = time.monotonic() + max(timeout, 0.0)
        while not self._closed:
            if self._ready:
                return self._deliver_ready()
            if self._stop.is_set():
                break
            remaining = deadline - time.monotonic()
            if not self._consumers and (self._conn is None or self._broken):
                # Nothing to read or keep alive (after cancel(), acks of a lost
                # connection are void: no reconnect for them): wait to be stopped.
                self._stop.wait(max(remaining, 0.0))
                break
            try:
                with self._holding(self._lock):
                    self._drain_once(min(max(remaining, self.min_poll_interval),
                                         self._next_slice()))
            except exceptions.ConnectionFailed:
                if self._closed or self._interrupted:
                    break  # stopping during an outage: nothing in hand can be acked anyway
                raise
            if self._ready:
                return self._deliver_ready()
            if time.monotonic() >= deadline:
                break
        self._stop.clear()
        return False

    def _drain_once(self, timeout: float) -> None:
        """One bounded read on the consuming connection; call with ``_lock`` held."""
        if self._closed:
            return
        self._ensure_connected()
        self._perform_settles()
        conn = self._conn
        try:
            conn.transport.drain_events(self._raw_connection(), timeout=timeout)
        except socket.timeout:
            pass
        except self._connection_errors + self._channel_errors as exc:
            self._lost(exc)
            return
        try:
            self._check_topology()
        except self._connection_errors + self._channel_errors as exc:
            self._lost(exc)  # reconnecting declares everything anyway
            return
        try:
            # After reading: frames just read count as signs of life.
            conn.transport.heartbeat_check(self._raw_connection(), rate=2)
        except self._connection_errors as exc:
            self._lost(exc)
            return
        self._last_beat = time.monotonic()
        self._perform_settles()

    def _next_slice(self) -> float:
        """How long the next read may block: short while handlers may ack from elsewhere."""
        if not self._unsettled:
            return self.poll_interval
        current = self._slice
        self._slice = min(current * 2, self.poll_interval)
        return current

    def _deliver_ready(self) -> bool:
        """Run callbacks of received messages, outside the lock, on the draining thread."""
        while self._ready:
            delivery, on_message = self._ready.popleft()
            if not delivery._settled:
                self._unsettled.add(id(delivery))
                self._slice = self.min_poll_interval
            on_message(delivery)
        return True

    def stop(self) -> None:
        """Make a waiting :meth:`drain` return (within :attr:`poll_interval`)."""
        self._stop.set()

    def interrupt(self) -> None:
        """Stop reconnecting for good: retries give up at once (see the base class).

        Only flags are set, so a signal handler may call it.
        """
        self._interrupted = True
        self._wake.set()
        self._stop.set()

    def heartbeat(self) -> None:
        """Send an AMQP heartbeat on the consuming connection now, from any thread.

        If :meth:`drain` holds the connection at this moment it is pumping
        heartbeats itself, so nothing needs sending.
        """
        if not self._is_amqp or not self._lock.acquire(blocking=False):
            return
        try:
            raw = self._raw_connection()
            if raw is not None and not self._broken:
                raw.send_heartbeat()
                self._last_beat = time.monotonic()
        except self._connection_errors as exc:
            LOG.warning("heartbeat failed (%s: %s)", type(exc).__name__, exc)
            self._broken = True
        finally:
            self._lock.release()

    def _keep_heartbeats(self) -> None:
        """Send heartbeats whenever nobody has drained for half an interval.

        :meth:`drain` pumps heartbeats, but a handler run on the draining
        thread (a server with ``workers=0``) stops it: RabbitMQ then closes
        the connection after two missed intervals, the handler's ack is lost
        and the message is redelivered -- to run as long again, for ever.
        This thread only writes heartbeat frames, through :meth:`heartbeat`,
        when the connection is free; it never reads.
        """
        interval = float(self._config.heartbeat_interval or 0)
        while not self._closing.wait(max(interval / 4, 0.05)):
            if time.monotonic() - self._last_beat >= interval / 2:
                self.heartbeat()

    # -- publishing ------------------------------------------------------------------------------

    def publish(self, envelope: OutgoingEnvelope) -> None:
        """Publish one message; with confirms, return once the broker confirmed it.

        Raises PublishFailed on a nack, a missing exchange (RabbitMQ), a
        confirm timeout, or when reconnect attempts run out.
        """
        self.publish_many([envelope])

    def publish_many(self, envelopes: Iterable[OutgoingEnvelope]) -> None:
        """Publish all, then wait for all confirms (pipelined).

        Messages lost with a connection or a channel are published again
        (at-least-once: a message whose confirm was lost may arrive twice).
        Raises PublishFailed naming every message that failed -- its
        ``exc.failed`` maps their indexes to reasons, ``exc.envelopes``
        lists them; all the others were confirmed. A ``mandatory`` message
        no queue took is such a failure (only those: ``Unroutable``); giving
        up on an unreachable broker (after ``publish_timeout`` or this
        thread's :meth:`deadline`) raises PublishConnectionFailed.
        """
        batch = _Batch(list(envelopes))
        if not batch.envelopes:
            return
        if self._closed:
            for index in list(batch.todo):
                batch.fail(index, "the transport is closed")
            raise batch.error()
        with self.deadline(self._config.publish_timeout):
            try:
                if self._reply_queues and self._is_amqp:
                    self._check_reply_connection()
                with self._holding(self._publish_lock):
                    self._pub_batch = batch
                    try:
                        self._publish_batch(batch)
                    finally:
                        self._pub_batch = None
                        self._pub_waiting.clear()
            except exceptions.ConnectionFailed as exc:
                batch.connection_failed = exc
                for index in list(batch.todo):
                    batch.fail(index, exc.kwargs.get("reason", str(exc)))
        if batch.failed:
            raise batch.error()

    def _check_reply_connection(self) -> None:
        """Before a request goes out: make sure the reply queue it names exists.

        RabbitMQ deletes an exclusive reply queue with its connection, and
        drops answers routed to it until it is declared again -- which
        happens when someone next reads the consuming connection and finds it
        dead. A request published in between would lose its answer (the first
        call after every connection loss timed out). A closed connection
        shows as end-of-file on its socket: peeking at it costs one system
        call, and reconnecting here (which declares the reply queue again)
        comes before the request. (Not for amqps, whose sockets cannot peek,
        nor where ``select.poll`` is missing.)
        """
        if self._config.ssl or not hasattr(select, "poll"):
            return
        if self._conn is not None and not self._broken and self._socket_alive():
            return
        with self._holding(self._lock):
            if self._conn is not None and not self._broken and not self._socket_alive():
                LOG.warning("the consuming connection to %s is closed",
                            self._config.safe_url)
                self._broken = True
            if not self._closed:
                self._ensure_connected()

    def _socket_alive(self) -> bool:
        """False when the consuming connection's socket was closed or reset by the peer."""
        raw = self._raw_connection()
        sock = getattr(getattr(raw, "transport", None), "sock", None)
        if sock is None:
            return False
        try:
            # Poll first: recv on a socket in timeout mode would wait for data.
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            if not poller.poll(0):
                return True  # nothing to read: alive as far as can be told
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
        except (BlockingIOError, InterruptedError, socket.timeout):
            return True  # a drainer took the data meanwhile
        except OSError:
            return False

    def _publish_batch(self, batch: _Batch) -> None:
        def attempt() -> None:
            while batch.todo:
                self._publish_round(batch)

        try:
            self._retry(attempt, not self._pub_ever_connected, "publishing to")
        except _ConfirmTimeout:
            self._drop_publisher()
            for index in list(batch.todo):
                batch.fail(index, "no confirm from the broker in time (confirm_timeout "
                                  f"{self.confirm_timeout}s, or the publish deadline)")
        except exceptions.ConnectionFailed:
            self._drop_publisher()
            raise
        except Exception as exc:  # whatever it is, every message gets its reason
            self._drop_publisher()
            reason = f"{type(exc).__name__}: {exc}"
            for index in list(batch.todo):
                batch.fail(index, reason)

    def _publisher_channel(self) -> Any:
        """The confirm-mode publishing channel, (re)connecting once if needed."""
        conn = self._pub_conn
        if conn is None or not conn.connected:
            self._drop_publisher()
            self._pub_conn = conn = self._open_connection("publish")
            self._pub_ever_connected = True
        if self._pub_channel is None:
            self._pub_channel = self._new_channel(conn)
            if self._is_amqp:
                events = self._pub_channel.events
                events["basic_ack"].add(self._on_confirm)
                events["basic_nack"].add(self._on_nack)
                # Mandatory messages no queue takes come back before their confirm.
                events["basic_return"].add(self._on_return)
            else:
                _strict_lookup(self._pub_channel)
        if self._confirms and not self._pub_confirming:
            self._pub_channel.confirm_select()
            self._pub_confirming = True
            self._pub_seq = 0
            self._pub_returned_seq = 0
            self._pub_waiting.clear()
        return self._pub_channel

    def _drop_publisher(self) -> None:
        conn, self._pub_conn, self._pub_channel = self._pub_conn, None, None
        self._pub_confirming = False
        self._pub_waiting.clear()
        self._pub_exchanges.clear()
        if conn is not None:
            try:
                conn.collect()
            except Exception:  # the connection is dead anyway: nothing to report
                LOG.debug("ignoring error while dropping a connection", exc_info=True)

    def _publish_round(self, batch: _Batch) -> None:
        """Publish every pending envelope once and wait for their confirms.

        Connection errors propagate (the caller reconnects and calls again);
        a channel error fails the envelopes it names and leaves the others
        pending for the next round on a fresh confirm channel.
        """
        try:
            channel = self._publisher_channel()
        except self._retry_errors:
            self._drop_publisher()
            raise
        try:
            for index in list(batch.todo):
                if index not in batch.todo:
                    continue  # failed meanwhile (nack read while publishing)
                envelope = batch.envelopes[index]
                try:
                    message = self._prepare(channel, envelope)
                    if self._is_amqp:
                        # Always mandatory: a return is how a notification nobody takes is seen.
                        channel.basic_publish(message, exchange=envelope.exchange,
                                              routing_key=envelope.routing_key, mandatory=True)
                    else:
                        channel.basic_publish(message, exchange=envelope.exchange,
                                              routing_key=envelope.routing_key)
                except _UNENCODABLE as exc:
                    # Raised while encoding, before anything was written: only this one fails.
                    batch.fail(index, f"cannot encode it: {type(exc).__name__}: {exc}",
                               unencodable=True)
                    continue
                except _NoRoute:
                    # Raised by the routing lookup, before anything was stored.
                    self._unrouted(batch, index)
                    continue
                if self._confirms:
                    # Registered after the write: acks read inside basic_publish are older.
                    self._pub_seq += 1
                    self._pub_waiting[self._pub_seq] = index
                else:
                    batch.todo.pop(index, None)
            self._wait_for_confirms()
        except self._retry_errors:
            self._drop_publisher()
            raise
        except amqp.ChannelError as exc:
            self._on_channel_error(batch, exc)

    def _prepare(self, channel: Any, envelope: OutgoingEnvelope) -> Any:
        if not self._is_amqp and envelope.exchange not in self._pub_exchanges:
            # Virtual transports route in this process and treat an exchange they
            # have not seen as "direct": record it as topic (no broker round trip).
            if envelope.exchange:
                channel.exchange_declare(exchange=envelope.exchange, type="topic",
                                         durable=True, auto_delete=False)
            self._pub_exchanges.add(envelope.exchange)
        properties: Dict[str, Any] = {"delivery_mode": 2 if envelope.persistent else 1}
        if envelope.expiration is not None:
            # AMQP per-message TTL: milliseconds, as a string (virtual transports ignore it).
            properties["expiration"] = str(int(envelope.expiration * 1000))
        if not self._is_amqp:
            return channel.prepare_message(bytes(envelope.body), None, envelope.content_type,
                                           envelope.content_encoding, dict(envelope.headers),
                                           properties)
        headers = dict(envelope.headers)
        if not all(key.isascii() for key in headers if type(key) is str):
            # Keys received as text with surrogates (see _text_key) go out as their bytes.
            headers = {_bytes_key(key): value for key, value in headers.items()}
        message = channel.prepare_message(bytes(envelope.body), None, envelope.content_type,
                                          envelope.content_encoding, headers,
                                          properties, _Message=_CheckedMessage)
        room = channel.connection.frame_max - _CONTENT_HEADER_OVERHEAD
        size = len(message._serialize_properties())
        if size > room:
            raise ValueError(f"its headers and properties take {size} bytes, more than the "
                             f"{room} a frame of this connection holds")
        return message

    def _unrouted(self, batch: _Batch, index: int) -> None:
        """Envelope ``index`` reached no queue: an Unroutable failure, or fine if not mandatory."""
        envelope = batch.envelopes[index]
        if envelope.mandatory:
            batch.fail(index, "no queue is bound with a matching key", unroutable=True)
        else:
            LOG.debug("nobody takes %s/%s: dropped", envelope.exchange, envelope.routing_key)
            batch.todo.pop(index, None)

    def _wait_for_confirms(self) -> None:
        deadline = time.monotonic() + self.confirm_timeout
        own = getattr(self._local, "deadline", None)
        if own is not None:
            deadline = min(deadline, own)
        raw = self._pub_conn._connection
        while self._pub_waiting:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _ConfirmTimeout()
            try:
                raw.drain_events(timeout=remaining)
            except socket.timeout:
                continue

    def _on_confirm(self, delivery_tag: int, multiple: bool) -> None:
        batch = self._pub_batch
        for index in self._resolve(delivery_tag, multiple):
            if batch is not None:
                batch.todo.pop(index, None)

    def _on_nack(self, delivery_tag: int, multiple: bool) -> None:
        batch = self._pub_batch
        for index in self._resolve(delivery_tag, multiple):
            if batch is not None:
                batch.fail(index, "the broker nacked it")

    def _resolve(self, delivery_tag: int, multiple: bool) -> List[int]:
        """Indexes of the envelopes a basic.ack/nack settles."""
        waiting = self._pub_waiting
        if not multiple:
            index = waiting.pop(delivery_tag, None)
            return [] if index is None else [index]
        settled = []
        while waiting:
            tag = next(iter(waiting))
            if tag > delivery_tag:
                break
            settled.append(waiting.pop(tag))
        return settled

    def _on_return(self, exc: Exception, exchange: str, routing_key: str, message: Any) -> None:
        """RabbitMQ returned a message no queue took; it comes before that message's confirm.

        Returns come in publish order, so the returned message is the first
        unconfirmed one after the last returned that has its exchange,
        routing key and body (identical messages are interchangeable).
        """
        batch = self._pub_batch
        if batch is not None and self._confirms:
            body = message.body
            if not isinstance(body, bytes):
                body = body.encode("utf-8") if isinstance(body, str) else bytes(body)
            for seq, index in self._pub_waiting.items():
                if seq <= self._pub_returned_seq or index not in batch.todo:
                    continue
                envelope = batch.envelopes[index]
                if (envelope.exchange == exchange and envelope.routing_key == routing_key
                        and bytes(envelope.body) == body):
                    self._pub_returned_seq = seq
                    self._unrouted(batch, index)
                    return
        LOG.warning("the broker returned a message for %s/%s (%s); it reached no queue "
                    "(without publisher confirms it cannot be told which publish it was)",
                    exchange, routing_key, exc)

    def _on_channel_error(self, batch: _Batch, exc: amqp.ChannelError) -> None:
        """The broker closed the publishing channel (py-amqp has reopened it)."""
        reason = f"{exc.reply_code} {exc.reply_text}".strip() if exc.reply_text else str(exc)
        unconfirmed = list(self._pub_waiting.values())
        self._pub_waiting.clear()
        self._pub_confirming = False
        if not self._confirms:
            # The culprit was an earlier, already returned publish: nothing to blame now.
            LOG.warning("the broker closed the publishing channel: %s", reason)
            return
        # The broker names the missing exchange; other unconfirmed messages are innocent
        # and go out again on the fresh channel.
        culprits = [index for index in unconfirmed
                    if f"'{batch.envelopes[index].exchange}'" in (exc.reply_text or "")]
        # Nothing unconfirmed to blame: fail what is left rather than loop for ever.
        for index in culprits or unconfirmed or list(batch.todo):
            batch.fail(index, reason)

    @property
    def reconnects(self) -> int:
        """Times the consuming connection was opened again after the first (for metrics)."""
        return max(self._generation - 1, 0)

    # -- closing ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Send queued acks, cancel consumers, close both connections.

        Un-acked messages go back to the broker (RabbitMQ, Redis). Reply queues
        go away (RabbitMQ: with the connection; others: deleted here).
        """
        self._closed = True
        self._closing.set()
        self._wake.set()
        self._stop.set()
        with self._lock:
            try:
                if self._conn is not None and not self._broken and self._conn.connected:
                    self._perform_settles()
                    for consumer in list(self._consumers):
                        channel = consumer.channel
                        self._cancel_consumer(consumer)
                        if consumer.fetch is not None and channel is not None:
                            # Anything a dead connection popped since: back to the queue.
                            consumer.fetch.recover(self._control)
                    if not self._is_amqp and self._reply_queues:
                        for queue in self._reply_queues:
                            self._control.queue_delete(queue=queue)
                    self._close_channel(self._control)
                    self._conn.release()
            except self._connection_errors + self._channel_errors:
                LOG.debug("ignoring error while closing %s", self._config.safe_url,
                          exc_info=True)
            finally:
                self._consumers.clear()
                self._drop_connection()
        with self._publish_lock:
            if self._pub_conn is not None:
                try:
                    self._pub_conn.release()
                except self._connection_errors + self._channel_errors:
                    LOG.debug("ignoring error while closing the publisher", exc_info=True)
            self._drop_publisher()
        beat = self._beat_thread
        if beat is not None and beat is not threading.current_thread():
            beat.join(2)

"""py-amqp workarounds: the tolerant frame parser, raw channels, checked messages.

Every private name of py-amqp (and of kombu's py-amqp transport) the adapter
uses is here or in :mod:`.compat.fast_properties`;
``tests/unit/transports/test_kombu_compat.py`` fails when one of them
changes or is no longer needed.

* ``amqp.serialization._read_item`` (private): reads one header-table value;
  :func:`_read_value` calls it for the field types it does not read itself.
* the ``frame_handler`` argument of ``amqp.Connection`` and
  ``amqp.method_framing.frame_handler`` (undocumented): :func:`tolerant_frame_handler`
  wraps py-amqp's handler (:func:`.compat.fast_properties.frame_handler`, the same
  state machine building messages of the fast reader). Protects against a
  message whose short strings are not UTF-8, whose header timestamps no
  ``datetime`` holds, or whose tables nest deeper than py-amqp's
  recursion: plain py-amqp raises out of ``drain_events``
  on them, before the message can be acked, so it poisons its queue.
* the argument formats of ``basic.deliver``, ``basic.get-ok``, ``basic.return``
  (:data:`_CONTENT_METHOD_ARGS`, copied from the AMQP 0-9-1 spec py-amqp follows).
* ``amqp.Message._serialize_properties`` (private): :class:`CheckedMessage`
  serializes the properties once (:func:`.compat.fast_properties.fast_properties`
  for the usual kinds, the same bytes) to check that they fit in one frame
  (RabbitMQ closes the connection over a larger content header), and
  :func:`_sanitize_content_header` rebuilds a header with it.
* ``amqp.Message.PROPERTIES`` (undocumented): the property names and types.
* ``Channel.prepare_message(..., _Message=)`` (kombu, private argument): makes
  kombu build a :class:`CheckedMessage`.
* ``kombu.transport.pyamqp.Transport.Connection`` and ``Connection.Channel``
  (class attributes kombu documents nowhere): how :class:`AMQPTransport`
  puts :class:`AMQPConnection` and :class:`AMQPChannel` in place.
* ``kombu.Connection._connection`` (private, every transport): the transport
  connection without kombu's implicit reconnect (``Connection.connection``
  connects again on access, which would hide a lost connection and its
  lost deliveries from the adapter); see :func:`raw_connection`.
"""

from __future__ import annotations

import datetime
import struct
from typing import Any, Callable, Dict, List, Optional, Tuple

import amqp
from amqp import serialization, spec
from kombu.connection import Connection
from kombu.transport import pyamqp

from tavrida.transports.kombu.compat.fast_properties import Frame, fast_properties, frame_handler
from tavrida.transports.kombu.compat.pyamqp_read import ReadAheadConnection

#: AMQP basic properties copied into :attr:`Delivery.properties` when present.
PROPERTY_NAMES = tuple(name for name, _ in amqp.Message.PROPERTIES
                       if name != "application_headers")
#: The same, as a set (membership tests per received message).
PROPERTY_SET = frozenset(PROPERTY_NAMES)


def raw_connection(conn: Optional[Connection]) -> Any:
    """The transport-level connection of ``conn``, without kombu's implicit reconnect."""
    return conn._connection if conn is not None else None


def public_raw_connection(conn: Optional[Connection]) -> Any:
    """Public mode's :func:`raw_connection`: the connection kombu says is connected, else None."""
    return conn.connection if conn is not None and conn.connected else None


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
    dumped: bytes = serialization.dumps(fmt, values)
    return bytes(payload[:4]) + dumped


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
    value_and_end: Tuple[Any, int] = serialization._read_item(buf, offset)
    return value_and_end


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
    serialized: bytes = amqp.Message(**properties)._serialize_properties()
    return bytes(buf[:12]) + serialized


def tolerant_frame_handler(connection: Any,
                           callback: Callable[..., Any]) -> Callable[[Frame], Any]:
    """py-amqp's frame handler, made to survive properties it cannot decode.

    py-amqp decodes short strings with ``utf-8``/``surrogatepass``, header
    timestamps into ``datetime`` (a year past 9999 raises) and nested tables
    by recursion (a few thousand levels raise RecursionError). In a content
    header that raises before the frame handler records the header, out of
    ``drain_events``: the server dies, and the broker redelivers the message
    to the next consumer, which dies too. In a ``basic.deliver`` a bad short
    string raises the same way and the message is never seen nor acked. Such
    frames are rewritten into frames py-amqp decodes (see
    :func:`_lenient_text` and :func:`_lenient_table`), by hooks of the fast
    handler (no wrapper call per frame); everything else is py-amqp's own
    state machine, untouched.
    """
    return frame_handler(connection, callback, fix_args=_fix_content_args,
                         fix_header=_sanitize_content_header, header_errors=_DECODE_ERRORS)


def _fix_content_args(method_sig: Tuple[int, int], payload: bytes) -> bytes:
    """A content method's arguments (not ASCII) made decodable: :func:`_sanitize_method`."""
    return _sanitize_method(_CONTENT_METHOD_ARGS[method_sig], payload)


class AMQPChannel(pyamqp.Channel):
    """A py-amqp channel that never decodes message bodies.

    py-amqp's default ``auto_decode=True`` turns the body into ``str``
    whenever a content_encoding is set; tavrida hands bodies on as bytes.
    """

    def __init__(self, connection: amqp.Connection, channel_id: Optional[int] = None,
                 auto_decode: bool = False, on_open: Any = None) -> None:
        super().__init__(connection, channel_id, auto_decode=False, on_open=on_open)


class AMQPConnection(ReadAheadConnection, pyamqp.Connection):
    """A py-amqp connection using the tolerant frame handler, raw channels and, over plain
    TCP, reads ahead (:mod:`.compat.pyamqp_read`)."""

    Channel = AMQPChannel

    def __init__(self, **kwargs: Any) -> None:
        kwargs["frame_handler"] = tolerant_frame_handler
        # tavrida tracks confirms itself (pipelined); py-amqp's mode waits per message.
        kwargs["confirm_publish"] = False
        super().__init__(**kwargs)


class AMQPTransport(pyamqp.Transport):
    """kombu's py-amqp transport with :class:`AMQPConnection`."""

    Connection = AMQPConnection


class PlainAMQPConnection(pyamqp.Connection):
    """Public mode: py-amqp's own frame handler and messages, raw channels, no confirm waits."""

    Channel = AMQPChannel

    def __init__(self, **kwargs: Any) -> None:
        kwargs["confirm_publish"] = False
        super().__init__(**kwargs)


class PlainAMQPTransport(pyamqp.Transport):
    """Public mode: kombu's py-amqp transport with :class:`PlainAMQPConnection`."""

    Connection = PlainAMQPConnection


def text_key(key: Any) -> Any:
    """A header-table key as text: bytes that are not UTF-8 kept as surrogates."""
    return key.decode("utf-8", "surrogateescape") if isinstance(key, bytes) else key


def bytes_key(key: Any) -> Any:
    """The inverse of :func:`text_key` for keys that hold surrogates (others stay text)."""
    if isinstance(key, str) and not key.isascii():
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            return key.encode("utf-8", "surrogateescape")
    return key


#: Errors of a message that cannot be encoded (header types, names too long, values out
#: of range, tables nested deeper than py-amqp's recursion can write).
UNENCODABLE = (amqp.FrameSyntaxError, TypeError, ValueError, OverflowError, RecursionError,
                struct.error)
#: Bytes of a content-header frame besides the properties (frame header and end,
#: class id, weight, body size).
CONTENT_HEADER_OVERHEAD = 8 + 12


class CheckedMessage(amqp.Message):  # type: ignore[misc]  # py-amqp has no types
    """An amqp.Message that serializes its properties once, so their size can be checked.

    A content header must fit in one frame: RabbitMQ answers a larger one by
    closing the connection (FRAME_ERROR), and every retry would do the same.
    The usual properties are written by :func:`fast_properties` (same bytes).
    """

    _serialized: Optional[bytes] = None

    def _serialize_properties(self) -> bytes:
        if self._serialized is None:
            serialized = fast_properties(self.properties)
            self._serialized = (super()._serialize_properties() if serialized is None
                                else serialized)
        assert self._serialized is not None
        return self._serialized


def checked_message(channel: Any, body: bytes, content_type: Optional[str],
                    content_encoding: Optional[str], headers: Dict[Any, Any],
                    properties: Dict[str, Any]) -> CheckedMessage:
    """A :class:`CheckedMessage` for ``channel.basic_publish``, its header checked to fit a frame.

    Raises ValueError (before anything is written) when the properties and
    headers take more than one frame of the channel's connection.
    """
    message: CheckedMessage = channel.prepare_message(
        body, None, content_type, content_encoding, headers, properties,
        _Message=CheckedMessage)
    room = channel.connection.frame_max - CONTENT_HEADER_OVERHEAD
    size = len(message._serialize_properties())
    if size > room:
        raise ValueError(f"its headers and properties take {size} bytes, more than the "
                         f"{room} a frame of this connection holds")
    return message


def plain_message(channel: Any, body: bytes, content_type: Optional[str],
                  content_encoding: Optional[str], headers: Dict[Any, Any],
                  properties: Dict[str, Any]) -> Any:
    """Public mode's :func:`checked_message`: kombu's own message, its headers measured.

    Only the header table is measured (with py-amqp's public
    ``serialization.dumps``): the other properties are short.
    """
    message = channel.prepare_message(body, None, content_type, content_encoding, headers,
                                      properties)
    room = channel.connection.frame_max - CONTENT_HEADER_OVERHEAD
    size = len(serialization.dumps("F", [headers]))
    if size > room:
        raise ValueError(f"its headers take {size} bytes, more than the "
                         f"{room} a frame of this connection holds")
    return message

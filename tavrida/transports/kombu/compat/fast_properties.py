"""The usual message properties read and written without py-amqp's generic table code.

py-amqp reads and writes a content header with a type test and a
``struct`` call per field; for the properties tavrida and most clients
send (short strings, octets, a header table of text and integers) this
module does the same in fewer steps, byte for byte the same, and leaves
anything else to py-amqp. It is a compat module (see :mod:`.compat.pyamqp`
for the rest); the private and undocumented py-amqp names it uses:

* ``amqp.method_framing.frame_handler``'s state machine and
  ``method_framing._CONTENT_METHODS`` (private), ``amqp.Message``'s
  ``_load_properties`` (private), ``inbound_header``, ``inbound_body``,
  ``frame_method``, ``frame_args`` and ``ready``: :func:`frame_handler` is
  py-amqp's handler building :class:`FastMessage` objects, whose usual
  properties :func:`fast_read_properties` reads; the canary tests feed both
  handlers the same frames and compare what they call back.
* ``amqp.Message.PROPERTIES`` (undocumented): the property names, types and
  order, from which the flag bits are computed.

``tests/unit/transports/test_kombu_compat.py`` compares both readers,
writers and frame handlers on the same input.
"""

from __future__ import annotations

import collections
import struct
from typing import Any, Callable, Dict, List, Optional, Tuple, Type

import amqp
from amqp import method_framing, spec

#: A frame as py-amqp's frame handler takes it: type, channel id, payload.
Frame = Tuple[int, int, bytes]

#: Flag bit of each content-header property, in py-amqp's order (one 16-bit flag word).
_PROPERTY_FLAGS = tuple((name, kind, 1 << (15 - index))
                        for index, (name, kind) in enumerate(amqp.Message.PROPERTIES))
_unpack_flags = struct.Struct(">H").unpack_from
_unpack_length = struct.Struct(">I").unpack_from
_unpack_int = struct.Struct(">i").unpack_from
_unpack_long = struct.Struct(">q").unpack_from
_BASIC_CLASS_ID = spec.Basic.CLASS_ID
#: Properties the fast reader knows: content_type, content_encoding, application_headers,
#: delivery_mode, priority, correlation_id, reply_to, expiration, message_id.
_FAST_READ_FLAGS = 0xFF80
#: Header names as read (UTF-8 bytes to text), the usual few kept: decoded once, not per message.
_KEY_TEXTS: Dict[bytes, str] = {}


def _fast_read_table(buf: bytes, offset: int) -> Tuple[Optional[Dict[Any, Any]], int]:
    """A header table of long strings and integers read as py-amqp reads it; None otherwise."""
    length, = _unpack_length(buf, offset)
    offset += 4
    end = offset + length
    table: Dict[Any, Any] = {}
    key_texts = _KEY_TEXTS
    while offset < end:
        size = buf[offset]
        offset += 1
        raw_key = buf[offset:offset + size]
        offset += size
        if raw_key in key_texts:
            key: Any = key_texts[raw_key]
        else:
            try:
                key = raw_key.decode("utf-8", "surrogatepass")
            except UnicodeDecodeError:
                key = raw_key
            else:
                if len(key_texts) < 1024:
                    key_texts[raw_key] = key
        kind = buf[offset]
        offset += 1
        if kind == 83:  # S
            size, = _unpack_length(buf, offset)
            offset += 4
            raw = buf[offset:offset + size]
            offset += size
            try:
                table[key] = raw.decode("utf-8", "surrogatepass")
            except UnicodeDecodeError:
                table[key] = raw
        elif kind == 73:  # I
            table[key], = _unpack_int(buf, offset)
            offset += 4
        elif kind == 108 or kind == 76:  # l, L
            table[key], = _unpack_long(buf, offset)
            offset += 8
        else:
            return None, offset
    return table, offset


def fast_read_properties(buf: bytes, offset: int) -> Optional[Dict[str, Any]]:
    """The properties of a basic content header, as py-amqp's decoder reads them.

    For the properties and header-table types tavrida and most clients send
    (short strings, octets, a table of long strings and integers), without
    py-amqp's generic reader; None for anything else (py-amqp reads it).
    Canary test: the result equals py-amqp's for every kind of property.
    """
    flags, = _unpack_flags(buf, offset)
    if flags & ~_FAST_READ_FLAGS:
        return None
    offset += 2
    properties: Dict[str, Any] = {}
    for name, kind, flag in _PROPERTY_FLAGS[:9]:
        if not flags & flag:
            continue
        if kind == "s":
            size = buf[offset]
            properties[name] = buf[offset + 1:offset + 1 + size].decode("utf-8", "surrogatepass")
            offset += 1 + size
        elif kind == "o":
            properties[name] = buf[offset]
            offset += 1
        else:
            table, offset = _fast_read_table(buf, offset)
            if table is None:
                return None
            properties[name] = table
    return properties


class FastMessage(amqp.Message):  # type: ignore[misc]  # py-amqp has no types
    """An amqp.Message whose usual properties are read by :func:`fast_read_properties`."""

    def _load_properties(self, class_id: int, buf: bytes, offset: int) -> Any:
        if class_id == _BASIC_CLASS_ID and type(buf) is bytes:
            try:
                properties = fast_read_properties(buf, offset)
            except UnicodeDecodeError:
                properties = None  # py-amqp raises its own way (and the tolerant handler copes)
            if properties is not None:
                self.properties = properties
                return offset
        return super()._load_properties(class_id, buf, offset)


def frame_handler(connection: Any, callback: Callable[..., Any],
                  fix_args: Optional[Callable[[Tuple[int, int], bytes], bytes]] = None,
                  fix_header: Optional[Callable[[bytes], bytes]] = None,
                  header_errors: Tuple[Type[BaseException], ...] = ()
                  ) -> Callable[[Frame], Any]:
    """py-amqp's ``method_framing.frame_handler``, building :class:`FastMessage` objects.

    The same state machine line for line (expected frame type per channel,
    content methods wait for their header and body, heartbeats count as
    received bytes); only the message class differs. Canary test: both
    handlers give the same callbacks for the same frames.

    The hooks of the tolerant handler (:func:`.compat.pyamqp.tolerant_frame_handler`),
    run here rather than in a wrapper around every frame: ``fix_args`` rewrites the
    arguments of a content method that are not ASCII (before the callback),
    ``fix_header`` a content header whose reading raised one of ``header_errors``.
    """
    expected_types: Dict[int, int] = collections.defaultdict(lambda: 1)
    partial_messages: Dict[int, FastMessage] = {}
    content_methods = method_framing._CONTENT_METHODS
    unpack_from = struct.unpack_from

    def on_frame(frame: Frame) -> Any:
        frame_type, channel, buf = frame
        connection.bytes_recv += 1
        expected = expected_types[channel]
        if frame_type != expected and frame_type != 8:
            raise amqp.exceptions.UnexpectedFrame(
                f"Received frame {frame_type} while expecting type: {expected}")
        if frame_type == 1:
            method_sig = unpack_from(">HH", buf, 0)
            if method_sig in content_methods:
                # Save what we've got so far and wait for the content-header.
                partial_messages[channel] = FastMessage(frame_method=method_sig,
                                                        frame_args=buf)
                expected_types[channel] = 2
                return False
            callback(channel, method_sig, buf, None)
        elif frame_type == 2:
            msg = partial_messages[channel]
            try:
                msg.inbound_header(buf)
            except header_errors:
                assert fix_header is not None
                msg.inbound_header(fix_header(buf))  # failed before recording the header
            if not msg.ready:
                expected_types[channel] = 3  # wait for the content body
                return False
            expected_types[channel] = 1  # bodyless message: done
            del partial_messages[channel]
            args = msg.frame_args
            if fix_args is not None and not args.isascii():
                args = fix_args(msg.frame_method, args)
            callback(channel, msg.frame_method, args, msg)
        elif frame_type == 3:
            msg = partial_messages[channel]
            msg.inbound_body(buf)
            if not msg.ready:
                return False  # wait for the rest of the content body
            expected_types[channel] = 1
            del partial_messages[channel]
            args = msg.frame_args
            if fix_args is not None and not args.isascii():
                args = fix_args(msg.frame_method, args)
            callback(channel, msg.frame_method, args, msg)
        elif frame_type == 8:
            return False  # a heartbeat: bytes_recv is updated already
        return True

    return on_frame


_pack_length = struct.Struct(">I").pack
_pack_int = struct.Struct(">ci").pack
_pack_text = struct.Struct(">cI").pack
#: Header names as a table writes them (length byte and UTF-8), the usual few kept.
_KEY_BYTES: Dict[str, bytes] = {}
_pack_long = struct.Struct(">cq").pack
_pack_flags = struct.Struct(">H").pack


def _fast_table(table: Dict[Any, Any]) -> Optional[bytes]:
    """A header table of text keys and text or integer values, as py-amqp writes it.

    None for anything else (py-amqp writes that, or raises its own error).
    """
    parts: List[bytes] = []
    append = parts.append
    keys = _KEY_BYTES
    for key, value in table.items():
        if type(key) is str and key in keys:
            prefix = keys[key]
        else:
            if type(key) is not str:
                return None
            raw_key = key.encode("utf-8", "surrogatepass")
            if len(raw_key) > 255:
                return None
            prefix = bytes((len(raw_key),)) + raw_key
            if len(keys) < 1024:
                keys[key] = prefix
        kind = type(value)
        if kind is str:
            raw = value.encode("utf-8", "surrogatepass")
            append(prefix + _pack_text(b"S", len(raw)) + raw)
        elif kind is int and -2147483647 <= value <= 2147483647:
            append(prefix + _pack_int(b"I", value))
        elif kind is int and -2 ** 63 <= value < 2 ** 63:
            append(prefix + _pack_long(b"L", value))
        else:
            return None
    data = b"".join(parts)
    return _pack_length(len(data)) + data


def fast_properties(properties: Dict[str, Any]) -> Optional[bytes]:
    """The content-header property bytes py-amqp's ``_serialize_properties`` writes.

    For the properties tavrida sends (short strings, octets, a header table
    of text and integers) without py-amqp's generic writer (a type test and
    a struct call per field); None for anything else. Canary test: the
    bytes equal py-amqp's for every kind of property.
    """
    flags = 0
    parts: List[bytes] = []
    for name, kind, flag in _PROPERTY_FLAGS:
        if name not in properties:
            continue
        value = properties[name]
        if value is None:
            continue
        flags |= flag
        if kind == "s":
            if type(value) is not str:
                return None
            raw = value.encode("utf-8", "surrogatepass")
            size = len(raw)
            if size > 255:
                return None
            parts.append(bytes((size,)) + raw)
        elif kind == "o":
            if type(value) is not int or not 0 <= value <= 255:
                return None
            parts.append(bytes((value,)))
        elif kind == "F":
            if type(value) is not dict:
                return None
            table = _fast_table(value)
            if table is None:
                return None
            parts.append(table)
        else:
            return None
    return _pack_flags(flags) + b"".join(parts)

"""Publish AMQP messages byte for byte as another client could: any property, any field type.

py-amqp only writes the header-table types it maps Python values to, and
only valid UTF-8 short strings. A message from another client (or a buggy
or hostile one) can carry every field type of AMQP 0-9-1 and RabbitMQ
(``t b B s u U I i l L f d D S x A T F V``), non-UTF-8 strings, nesting as
deep as a frame allows and values no clock can read. :func:`encode_properties`
writes exactly that; :class:`RawPublisher` puts it on the wire through
py-amqp's own framing, so the broker sees a well-framed message.
"""

from __future__ import annotations

import struct
import urllib.parse
from typing import Any, List, Mapping, Optional, Tuple, Union

import amqp

#: The basic-class properties in flag order (AMQP 0-9-1), with their wire types.
PROPERTIES: List[Tuple[str, str]] = [
    ("content_type", "shortstr"), ("content_encoding", "shortstr"), ("headers", "table"),
    ("delivery_mode", "octet"), ("priority", "octet"), ("correlation_id", "shortstr"),
    ("reply_to", "shortstr"), ("expiration", "shortstr"), ("message_id", "shortstr"),
    ("timestamp", "timestamp"), ("type", "shortstr"), ("user_id", "shortstr"),
    ("app_id", "shortstr"), ("cluster_id", "shortstr"),
]

#: Field type letters and the struct format of their fixed-size values.
FIXED = {"t": ">B", "b": ">b", "B": ">B", "s": ">h", "U": ">h", "u": ">H", "I": ">i",
         "i": ">I", "l": ">q", "L": ">q", "f": ">f", "d": ">d", "T": ">Q"}
FIELD_TYPES = tuple(FIXED) + ("D", "S", "x", "A", "F", "V")


class Field:
    """A header value written with an explicit AMQP field type letter.

    ``value`` is an int/float for the fixed-size types, ``(scale, int)`` for
    ``D``, bytes or str for ``S``/``x``, a list of values for ``A``, a
    mapping for ``F``, None for ``V``. ``raw`` replaces the encoded value
    with these bytes verbatim (after the type letter): an unknown letter or
    a lying length.
    """

    __slots__ = ("code", "value", "raw")

    def __init__(self, code: str, value: Any = None, raw: Optional[bytes] = None) -> None:
        self.code = code
        self.value = value
        self.raw = raw

    def __repr__(self) -> str:
        if self.raw is not None:
            return f"Field({self.code!r}, raw={self.raw[:40]!r})"
        return f"Field({self.code!r}, {self.value!r})"


Text = Union[str, bytes]


def _bytes(text: Text) -> bytes:
    return text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")


def shortstr(text: Text) -> bytes:
    data = _bytes(text)[:255]
    return struct.pack(">B", len(data)) + data


def encode_value(value: Any) -> bytes:
    """Type letter and bytes of one field value (plain Python values map as py-amqp does)."""
    if isinstance(value, Field):
        code = value.code.encode("latin-1")
        if value.raw is not None:
            return code + value.raw
        if value.code in FIXED:
            return code + struct.pack(FIXED[value.code], value.value)
        if value.code == "D":
            scale, number = value.value
            return code + struct.pack(">Bi", scale, number)
        if value.code in ("S", "x"):
            data = _bytes(value.value)
            return code + struct.pack(">I", len(data)) + data
        if value.code == "A":
            items = b"".join(encode_value(item) for item in value.value)
            return code + struct.pack(">I", len(items)) + items
        if value.code == "F":
            return code + encode_table(value.value)
        if value.code == "V":
            return code
        raise ValueError(f"unknown field type {value.code!r}: give raw bytes")
    if value is None:
        return b"V"
    if isinstance(value, bool):
        return b"t" + struct.pack(">B", value)
    if isinstance(value, int):
        if -2 ** 31 <= value < 2 ** 31:
            return b"I" + struct.pack(">i", value)
        return b"l" + struct.pack(">q", value)
    if isinstance(value, float):
        return b"d" + struct.pack(">d", value)
    if isinstance(value, (str, bytes)):
        data = _bytes(value)
        return b"S" + struct.pack(">I", len(data)) + data
    if isinstance(value, (list, tuple)):
        return encode_value(Field("A", list(value)))
    if isinstance(value, Mapping):
        return b"F" + encode_table(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def encode_table(table: Mapping[Text, Any]) -> bytes:
    """A field table: 32-bit length, then short-string keys and typed values."""
    body = b"".join(shortstr(key) + encode_value(value) for key, value in table.items())
    return struct.pack(">I", len(body)) + body


def encode_properties(properties: Mapping[str, Any]) -> bytes:
    """Property flags and list of a content header; a ``headers`` of bytes is written as is."""
    flags = 0
    parts = []
    for index, (name, kind) in enumerate(PROPERTIES):
        if name not in properties or properties[name] is None:
            continue
        flags |= 1 << (15 - index)
        value = properties[name]
        if kind == "shortstr":
            parts.append(shortstr(value))
        elif kind == "octet":
            parts.append(struct.pack(">B", value))
        elif kind == "timestamp":
            parts.append(struct.pack(">Q", value))
        elif isinstance(value, bytes):
            parts.append(value)  # a ready-made (possibly lying) table
        else:
            parts.append(encode_table(value))
    return struct.pack(">H", flags) + b"".join(parts)


class _RawMessage(amqp.Message):
    """An amqp.Message whose content header properties are given as bytes."""

    def __init__(self, body: bytes, raw_properties: bytes) -> None:
        super().__init__(body)
        self._raw_properties = raw_properties

    def _serialize_properties(self) -> bytes:
        return self._raw_properties


class RawPublisher:
    """A py-amqp connection in confirm mode publishing hand-made content headers."""

    def __init__(self, url: str, name: str = "tavrida-raw-publisher") -> None:
        self._args = (url, name)
        parts = urllib.parse.urlsplit(url)
        vhost = urllib.parse.unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
        self.connection = amqp.Connection(
            f"{parts.hostname or '127.0.0.1'}:{parts.port or 5672}",
            userid=urllib.parse.unquote(parts.username or "guest"),
            password=urllib.parse.unquote(parts.password or "guest"),
            virtual_host=vhost, connect_timeout=5, confirm_publish=True,
            client_properties={"connection_name": name})
        self.connection.connect()
        self.channel = self.connection.channel()

    def publish(self, exchange: str, routing_key: str, body: bytes,
                properties: Mapping[str, Any]) -> Optional[str]:
        """Publish and wait for the confirm; None when the broker took it, else why not."""
        message = _RawMessage(body, encode_properties(properties))
        try:
            self.channel.basic_publish(message, exchange=exchange, routing_key=routing_key)
            return None
        except (amqp.ChannelError, amqp.exceptions.MessageNacked) as exc:
            self._reopen()
            return f"{type(exc).__name__}: {exc}"
        except amqp.ConnectionError as exc:
            self._reconnect()
            return f"{type(exc).__name__}: {exc}"

    def _reopen(self) -> None:
        if not self.channel.is_open:
            self.channel = self.connection.channel()

    def _reconnect(self) -> None:
        try:
            self.connection.collect()
        except Exception:  # noqa: BLE001 - it is dead: start again
            pass
        self.__init__(*self._args)  # type: ignore[misc]

    def close(self) -> None:
        try:
            self.connection.close()
        except Exception:  # noqa: BLE001 - closing is best effort
            self.connection.collect()


def deep_table(depth: int, code: str = "F") -> bytes:
    """A header table (as bytes) with tables (``F``) or arrays (``A``) nested ``depth`` deep.

    Built from the inside out, without recursion, however deep.
    """
    inner = encode_value("bottom")
    for _ in range(depth):
        if code == "F":
            table = shortstr("n") + inner
        else:
            table = inner
        inner = code.encode() + struct.pack(">I", len(table)) + table
    return encode_table({}) if depth == 0 else struct.pack(
        ">I", len(shortstr("n") + inner)) + shortstr("n") + inner

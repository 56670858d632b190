"""The wire format: messages to bytes and headers, and back.

Body: UTF-8 JSON ``{"context": {...}, "payload": {...}}`` written with
simplejson. Headers: the seven tavrida headers as strings, beside the
user's. Only JSON is accepted: the body is parsed as JSON whatever the
content type says (AMQP clients label JSON bytes ``application/data``,
``application/octet-stream`` or nothing), and only a content type that names
another serializer (pickle, YAML, msgpack, ...) is refused. Nothing is ever
unpickled. Tavrida headers of other AMQP types (an integer
``correlation_id``, UTF-8 bytes) are read as their text; tables, lists and
bytes that are not UTF-8 are refused.

:func:`decode` checks everything and raises
:class:`~tavrida.exceptions.IncorrectMessage` with a reason a person can
act on; what it could read of the headers rides on the exception
(``exc.headers``) so the server can still answer a caller.
"""

from __future__ import annotations

import codecs
import datetime
import decimal
import functools
import threading
from typing import Any, Dict, Mapping, Optional, Tuple

import simplejson
import simplejson.encoder

from tavrida import defaults, entry_point, exceptions, messages, schema
from tavrida.json_problems import unserialisable as unserialisable

#: Bodies larger than this are refused (bytes); the server may set its own.
DEFAULT_MAX_BODY_SIZE = defaults.MAX_BODY_SIZE
#: Content types that need no look: JSON as tavrida, 1.0 (none) and AMQP clients label it.
JSON_CONTENT_TYPES = frozenset({"", "application/json", "text/json", "text/plain",
                                "application/data", "application/octet-stream"})
#: Words in a content type that name a serializer other than JSON: such bodies are refused
#: (a pickle must never be unpickled; the others would only fail to parse, less clearly).
FOREIGN_SERIALIZERS = {"pickle": "pickle", "python-serialize": "pickle", "yaml": "yaml",
                       "msgpack": "msgpack", "bson": "bson", "cbor": "cbor",
                       "protobuf": "protobuf", "avro": "avro", "thrift": "thrift"}
#: Content encodings of UTF-8 text (kombu labels raw bytes ``binary``).
ENCODINGS = frozenset({"", "utf-8", "utf8", "binary", "8bit", "7bit"})

# ``default``: datetimes, UUIDs, enums, dataclasses... as JSON (see tavrida.schema.jsonable);
# called only for values JSON has no form for, so plain payloads cost nothing more.
_encoder = simplejson.JSONEncoder(separators=(",", ":"), ensure_ascii=False,
                                  default=schema.jsonable)
_decoder = simplejson.JSONDecoder()
_scan_once = _decoder.scan_once


def dumps(obj: Any) -> str:
    """JSON text of ``obj`` (compact, UTF-8 characters kept)."""
    return _encoder.encode(obj)


class _Bodies(threading.local):
    """simplejson's C encoder for ``_encoder``, made once per thread instead of per body.

    ``JSONEncoder.encode`` builds a new C encoder (``c_make_encoder``) on
    every call, which cost about as much as writing a small body. This one
    is built with exactly the arguments ``JSONEncoder.iterencode`` passes, so
    the text is the same; it is per thread because the encoder's circular
    reference ``markers`` are state, and it is rebuilt after a failed encode
    (which may leave markers behind). ``key_memo`` is emptied after each body
    as simplejson does. Without the C speedups, ``_encoder.encode`` is used.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.memo: Dict[Any, Any] = {}
        self.run: Any = None
        make = getattr(simplejson.encoder, "c_make_encoder", None)
        enc = _encoder
        if make is None or enc.indent is not None or enc.encoding != "utf-8" or enc.ensure_ascii:
            return
        self.run = make(
            {} if enc.check_circular else None, enc.default, simplejson.encoder.encode_basestring,
            enc.indent, enc.key_separator, enc.item_separator, enc.sort_keys, enc.skipkeys,
            enc.allow_nan, self.memo, enc.use_decimal, enc.namedtuple_as_object,
            enc.tuple_as_array, 53 if enc.bigint_as_string else enc.int_as_string_bitcount,
            enc.item_sort_key, enc.encoding, enc.for_json, enc.ignore_nan, decimal.Decimal,
            enc.iterable_as_array)


_bodies = _Bodies()


def _body(payload: Dict[str, Any], context: Dict[str, Any]) -> str:
    """The JSON envelope text, as ``_encoder.encode`` writes it."""
    bodies = _bodies
    run = bodies.run
    if run is None:
        return _encoder.encode({"payload": payload, "context": context})
    try:
        chunks = run({"payload": payload, "context": context}, 0)
    except BaseException:
        bodies.reset()
        raise
    bodies.memo.clear()
    return "".join(chunks)


def encode(message: messages.Message) -> Tuple[bytes, Dict[str, Any]]:
    """Body bytes and wire headers of an outgoing message.

    Raises :class:`~tavrida.exceptions.IncorrectOutgoingMessage` when the
    payload or context cannot be written as JSON, naming the field and its
    type (``answer field 'when': datetime is not JSON-serialisable``).
    """
    try:
        body = _body(message.payload, message.context)
    except (TypeError, ValueError, RecursionError) as exc:
        raise exceptions.IncorrectOutgoingMessage(
            reason=unserialisable(message, exc)) from None
    return body.encode("utf-8"), message.wire_headers()


#: AMQP field types other than strings that a tavrida header may come as, read as text
#: (1.0 services take an integer ``correlation_id``, so 2.0 does too).
_SCALARS = (int, float, decimal.Decimal, datetime.datetime)


def _text(name: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise exceptions.IncorrectMessage(
                reason=f"header {name!r} is not valid UTF-8") from None
    if value is None:  # AMQP void
        return ""
    if isinstance(value, _SCALARS):
        return str(value)
    raise exceptions.IncorrectMessage(
        reason=f"header {name!r} must be text, got {type(value).__name__}")


def read_headers(raw: Any) -> Dict[str, str]:
    """The tavrida headers of a raw header table, checked; user headers kept as they are."""
    if raw is None:
        raw = {}
    if type(raw) is not dict and not isinstance(raw, Mapping):
        raise exceptions.IncorrectMessage(reason="headers are not a table")
    headers: Dict[str, Any] = dict(raw)
    if not headers.keys() >= _REQUIRED:
        missing = [name for name in messages.REQUIRED_HEADERS if name not in headers]
        raise exceptions.IncorrectMessage(reason=f"missing header(s): {', '.join(missing)}")
    # Subscripts, not get(): this runs for every message received.
    for name in _REQUIRED_TEXT:
        value = headers[name]
        if type(value) is not str:
            headers[name] = _text(name, value)
    value = headers["reply_to"] if "reply_to" in headers else ""
    headers["reply_to"] = value if type(value) is str else _text("reply_to", value)
    if messages.REPLY_EXCHANGE_HEADER in headers:
        name = messages.REPLY_EXCHANGE_HEADER
        headers[name] = _text(name, headers[name])
    if headers["message_type"] not in _MESSAGE_TYPES:
        raise exceptions.IncorrectMessage(
            reason=f"unknown message_type {headers['message_type']!r}")
    if not (headers["correlation_id"] and headers["message_id"] and headers["request_id"]):
        for name in ("correlation_id", "message_id", "request_id"):
            if not headers[name]:
                raise exceptions.IncorrectMessage(reason=f"header {name!r} is empty")
    parse = entry_point.parse_text
    for name, source, destination in _ENTRY_POINTS:
        try:
            parse(headers[name], source, destination)
        except exceptions.WrongEntryPointFormat:
            raise exceptions.IncorrectMessage(
                reason=f"header {name!r} is not an entry point: {headers[name]!r}") from None
    return headers


_REQUIRED = frozenset(messages.REQUIRED_HEADERS)
#: The tavrida headers but ``reply_to`` (which may be absent), in wire order.
_REQUIRED_TEXT = tuple(name for name in messages.TAVRIDA_HEADERS if name != "reply_to")
_MESSAGE_TYPES = frozenset(messages.MESSAGE_TYPES)
#: Headers holding entry points, with the ``parse_text`` flags messages use (one cache entry).
_ENTRY_POINTS = (("reply_to", False, False), ("source", True, False),
                 ("destination", False, True))


def read_body(body: Any, properties: Optional[Mapping[str, Any]] = None,
              max_size: int = DEFAULT_MAX_BODY_SIZE) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Context and payload of a raw body, checked."""
    properties = properties or {}
    content_type = (properties["content_type"] if "content_type" in properties else "") or ""
    if type(content_type) is not str or content_type not in JSON_CONTENT_TYPES:
        content_type = _label(content_type).split(";")[0].strip()
        if content_type not in JSON_CONTENT_TYPES:
            _check_content_type(content_type)
    encoding = (properties["content_encoding"] if "content_encoding" in properties
                else "") or ""
    if type(encoding) is not str or encoding not in ENCODINGS:
        encoding = _label(encoding).strip()
        if encoding not in ENCODINGS and not _is_utf8(encoding):
            raise exceptions.IncorrectMessage(
                reason=f"content encoding {encoding!r} refused: tavrida reads UTF-8 JSON")
    if type(body) is not bytes:
        if isinstance(body, str):
            body = body.encode("utf-8", "surrogatepass")
        if not isinstance(body, (bytes, bytearray, memoryview)):
            raise exceptions.IncorrectMessage(reason=f"body of type {type(body).__name__}")
        body = bytes(body)
    if len(body) > max_size:
        raise exceptions.IncorrectMessage(
            reason=f"body of {len(body)} bytes exceeds the limit of {max_size} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise exceptions.IncorrectMessage(
            reason=f"body is not valid UTF-8 (byte {exc.start})") from None
    data = None
    if text[:1] == "{":
        # simplejson's C scanner straight away: decode() and raw_decode() are two Python
        # frames around it, for a BOM, leading blanks and trailing data. A body with any of
        # those, or one that fails, goes through decode(), which reads or refuses it as ever.
        try:
            data, end = _scan_once(text, 0)
        except (ValueError, RecursionError):
            data = None
        else:
            if end != len(text):
                data = None
    try:
        if data is None:
            data = _decoder.decode(text)
    except RecursionError:
        raise exceptions.IncorrectMessage(reason="body JSON is nested too deeply") from None
    except ValueError as exc:
        label = f" (content type {content_type!r})" if content_type else ""
        raise exceptions.IncorrectMessage(reason=f"body is not JSON{label}: {exc}") from None
    # simplejson makes plain dicts: type() first, subscripts not get(), for every message.
    if type(data) is not dict and not isinstance(data, dict):
        raise exceptions.IncorrectMessage(reason="body is not a JSON object")
    payload = data["payload"] if "payload" in data else None
    if type(payload) is not dict and not isinstance(payload, dict):
        raise exceptions.IncorrectMessage(reason='body has no "payload" object')
    context = data["context"] if "context" in data else None
    if context is None:
        context = {}
    if type(context) is not dict and not isinstance(context, dict):
        raise exceptions.IncorrectMessage(reason='body "context" is not an object')
    return context, payload


def _label(value: Any) -> str:
    """A content type or encoding property as lower-case text."""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", "replace")
    return str(value or "").lower()


def _check_content_type(content_type: str) -> None:
    """Refuse a content type that names another serializer; any other label reads as JSON."""
    for word, serializer in FOREIGN_SERIALIZERS.items():
        if word in content_type:
            raise exceptions.IncorrectMessage(
                reason=f"content type {content_type!r} refused: it names the {serializer} "
                       f"serializer; tavrida accepts JSON only (and never unpickles)")


@functools.lru_cache(maxsize=64)
def _is_utf8(encoding: str) -> bool:
    """True for the names Python knows for UTF-8 or its subset ASCII."""
    try:
        return codecs.lookup(encoding).name in ("utf-8", "ascii")
    except (LookupError, ValueError):
        return False


_FACTORY = messages.IncomingMessageFactory()
#: The headers an Error answer to a call needs (``source`` and ``message_id`` it does not).
_ANSWER_HEADERS = ("correlation_id", "request_id", "message_type", "reply_to", "destination")


def _answerable(raw: Any) -> Optional[Dict[str, str]]:
    """The headers of a refused call that are enough to answer it, or None.

    A call whose ``source`` or ``message_id`` is missing or unreadable (not
    UTF-8, say) can still be told why it was refused: its caller (``reply_to``),
    ``request_id`` and ``correlation_id`` are what the answer needs.
    """
    if not isinstance(raw, Mapping):
        return None
    headers: Dict[str, str] = {}
    try:
        for name in _ANSWER_HEADERS:
            headers[name] = _text(name, raw.get(name))
        if messages.REPLY_EXCHANGE_HEADER in raw:
            name = messages.REPLY_EXCHANGE_HEADER
            headers[name] = _text(name, raw[name])
        entry_point.parse_text(headers["reply_to"], False, False)
        entry_point.parse_text(headers["destination"], False, True)
    except (exceptions.IncorrectMessage, exceptions.WrongEntryPointFormat):
        return None
    if headers["message_type"] != messages.REQUEST or not all(
            headers[name] for name in ("correlation_id", "request_id", "reply_to")):
        return None
    return headers


def decode(body: Any, raw_headers: Any, properties: Optional[Mapping[str, Any]] = None,
           max_size: int = DEFAULT_MAX_BODY_SIZE) -> messages.Message:
    """The incoming message for a delivery.

    Raises :class:`~tavrida.exceptions.IncorrectMessage` naming what is
    wrong; ``exc.headers`` holds the tavrida headers when they were valid
    (or, for a call, those its answer needs), so a call can still be
    answered with an Error.
    """
    try:
        headers = read_headers(raw_headers)
    except exceptions.IncorrectMessage as exc:
        exc.headers = _answerable(raw_headers)
        raise
    try:
        context, payload = read_body(body, properties, max_size)
    except exceptions.IncorrectMessage as exc:
        exc.headers = headers
        raise
    return _FACTORY.create_checked(headers, context, payload)

"""The wire format: messages to bytes and headers, and back.

Body: UTF-8 JSON ``{"context": {...}, "payload": {...}}`` written with
simplejson. Headers: the seven tavrida headers as strings, beside the
user's. Only JSON is accepted: the body is parsed as JSON whatever the
content type says, and a content type that announces anything else
(pickle included) is refused. Nothing is ever unpickled.

:func:`decode` checks everything and raises
:class:`~tavrida.exceptions.IncorrectMessage` with a reason a person can
act on; what it could read of the headers rides on the exception
(``exc.headers``) so the server can still answer a caller.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import simplejson

from tavrida import entry_point, exceptions, messages

#: Bodies larger than this are refused (bytes); the server may set its own.
DEFAULT_MAX_BODY_SIZE = 16 * 1024 * 1024
#: Content types accepted as JSON ("" and None: 1.0 sets none).
JSON_CONTENT_TYPES = frozenset({"", "application/json", "text/json", "text/plain"})
ENCODINGS = frozenset({"", "utf-8", "utf8"})

_encoder = simplejson.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_decoder = simplejson.JSONDecoder()


def dumps(obj: Any) -> str:
    """JSON text of ``obj`` (compact, UTF-8 characters kept)."""
    return _encoder.encode(obj)


def encode(message: messages.Message) -> Tuple[bytes, Dict[str, Any]]:
    """Body bytes and wire headers of an outgoing message.

    Raises :class:`~tavrida.exceptions.IncorrectOutgoingMessage` when the
    payload or context cannot be written as JSON.
    """
    try:
        body = _encoder.encode({"payload": message.payload, "context": message.context})
    except (TypeError, ValueError) as exc:
        raise exceptions.IncorrectOutgoingMessage(
            reason=f"{message!r} is not JSON-serializable: {exc}") from None
    return body.encode("utf-8"), message.wire_headers()


def _text(name: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise exceptions.IncorrectMessage(
                reason=f"header {name!r} is not valid UTF-8") from None
    raise exceptions.IncorrectMessage(
        reason=f"header {name!r} must be a string, got {type(value).__name__}")


def read_headers(raw: Any) -> Dict[str, str]:
    """The tavrida headers of a raw header table, checked; user headers kept as they are."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise exceptions.IncorrectMessage(reason="headers are not a table")
    headers: Dict[str, Any] = dict(raw)
    missing = [name for name in messages.REQUIRED_HEADERS if name not in headers]
    if missing:
        raise exceptions.IncorrectMessage(reason=f"missing header(s): {', '.join(missing)}")
    for name in messages.TAVRIDA_HEADERS:
        headers[name] = _text(name, headers.get(name, ""))
    if headers["message_type"] not in messages.MESSAGE_TYPES:
        raise exceptions.IncorrectMessage(
            reason=f"unknown message_type {headers['message_type']!r}")
    for name in ("correlation_id", "message_id", "request_id"):
        if not headers[name]:
            raise exceptions.IncorrectMessage(reason=f"header {name!r} is empty")
    for name in ("reply_to", "source", "destination"):
        try:
            entry_point.parse(headers[name])
        except exceptions.WrongEntryPointFormat:
            raise exceptions.IncorrectMessage(
                reason=f"header {name!r} is not an entry point: {headers[name]!r}") from None
    return headers


def read_body(body: Any, properties: Optional[Mapping[str, Any]] = None,
              max_size: int = DEFAULT_MAX_BODY_SIZE) -> Tuple[dict, dict]:
    """Context and payload of a raw body, checked."""
    properties = properties or {}
    content_type = str(properties.get("content_type") or "").split(";")[0].strip().lower()
    if content_type not in JSON_CONTENT_TYPES:
        raise exceptions.IncorrectMessage(
            reason=f"content type {content_type!r} refused: tavrida accepts JSON only")
    encoding = str(properties.get("content_encoding") or "").lower()
    if encoding not in ENCODINGS:
        raise exceptions.IncorrectMessage(
            reason=f"content encoding {encoding!r} refused: tavrida accepts UTF-8 only")
    if isinstance(body, str):
        body = body.encode("utf-8", "surrogatepass")
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise exceptions.IncorrectMessage(reason=f"body of type {type(body).__name__}")
    if len(body) > max_size:
        raise exceptions.IncorrectMessage(
            reason=f"body of {len(body)} bytes exceeds the limit of {max_size} bytes")
    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise exceptions.IncorrectMessage(
            reason=f"body is not valid UTF-8 (byte {exc.start})") from None
    try:
        data = _decoder.decode(text)
    except RecursionError:
        raise exceptions.IncorrectMessage(reason="body JSON is nested too deeply") from None
    except ValueError as exc:
        raise exceptions.IncorrectMessage(reason=f"body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise exceptions.IncorrectMessage(reason="body is not a JSON object")
    payload = data.get("payload")
    if not isinstance(payload, dict):
        raise exceptions.IncorrectMessage(reason='body has no "payload" object')
    context = data.get("context")
    if context is None:
        context = {}
    if not isinstance(context, dict):
        raise exceptions.IncorrectMessage(reason='body "context" is not an object')
    return context, payload


_FACTORY = messages.IncomingMessageFactory()


def decode(body: Any, raw_headers: Any, properties: Optional[Mapping[str, Any]] = None,
           max_size: int = DEFAULT_MAX_BODY_SIZE) -> messages.Message:
    """The incoming message for a delivery.

    Raises :class:`~tavrida.exceptions.IncorrectMessage` naming what is
    wrong; ``exc.headers`` holds the tavrida headers when they were valid,
    so a call can still be answered with an Error.
    """
    headers = read_headers(raw_headers)
    try:
        context, payload = read_body(body, properties, max_size)
    except exceptions.IncorrectMessage as exc:
        exc.headers = headers
        raise
    return _FACTORY.create(headers, context, payload)

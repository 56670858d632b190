"""JSON problems: why a message cannot be written as JSON, said for a person.

:func:`unserialisable` names the first field of a payload or context that
JSON cannot carry (its path and type), for the error a sender gets
(:class:`~tavrida.exceptions.IncorrectOutgoingMessage`) and the Error a
caller gets in place of an answer that cannot go.
"""

from __future__ import annotations

import decimal
from typing import Any, Optional, Tuple

from tavrida import messages, schema

#: What the payload of each message type is called in errors (an answer is a response
#: or an error: the handler's caller reads it).
_PAYLOAD_NAMES = {messages.REQUEST: "payload", messages.RESPONSE: "answer",
                  messages.ERROR: "answer", messages.NOTIFICATION: "notification"}
#: JSON's scalars as simplejson writes them (Decimal: ``use_decimal``).
_JSON_SCALARS = (str, int, float, bool, type(None), decimal.Decimal)


def unserialisable(message: messages.Message, exc: BaseException) -> str:
    """Why ``message`` cannot be written as JSON: the first bad field's path and type.

    ``exc`` is what the encoder raised, reported when no field explains it.
    """
    part = _PAYLOAD_NAMES.get(message.message_type, "payload")
    for name, value in ((part, message.payload), ("context", message.context)):
        found = _first_bad(value, "", set())
        if found is not None:
            path, problem = found
            where = f"{name} field {path!r}" if path else name
            return f"{where}: {problem}"
    return f"{part} is not JSON-serialisable: {type(exc).__name__}: {exc}"


def _first_bad(value: Any, path: str, seen: set[int]) -> Optional[Tuple[str, str]]:
    """(path, problem) of the first value under ``value`` JSON cannot carry, or None."""
    if isinstance(value, _JSON_SCALARS):
        return None
    if isinstance(value, bytes):  # simplejson writes UTF-8 bytes as text
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            return path, "bytes that are not UTF-8 are not JSON-serialisable"
        return None
    if isinstance(value, (dict, list, tuple)):
        if id(value) in seen:
            return path, "refers to itself (a circular reference)"
        if len(seen) >= 100:
            return path, "is nested too deeply"
        seen.add(id(value))
        try:
            if isinstance(value, dict):
                for key, item in value.items():
                    if not isinstance(key, _JSON_SCALARS):
                        return path, (f"key {_short(key)} of type {type(key).__name__} "
                                      f"is not JSON-serialisable")
                    found = _first_bad(item, f"{path}.{key}" if path else str(key), seen)
                    if found is not None:
                        return found
            else:
                for index, item in enumerate(value):
                    found = _first_bad(item, f"{path}[{index}]", seen)
                    if found is not None:
                        return found
        finally:
            seen.discard(id(value))
        return None
    try:  # a datetime, a dataclass...: written as what schema.jsonable makes of it
        written = schema.jsonable(value)
    except TypeError:
        return path, f"{type(value).__name__} is not JSON-serialisable"
    return _first_bad(written, path, seen)


def _short(value: Any, limit: int = 60) -> str:
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not hide the real error
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit - 3] + "..."

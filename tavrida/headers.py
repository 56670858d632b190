"""The names of the headers tavrida reads and writes, in one place.

Two families: the seven headers of tavrida 1.0's wire format (every message
carries them; see ``wire-protocol.md``) and tavrida 2's own ``x-tavrida-*``
headers. An ``x-tavrida-*`` header describes one message and is never copied
into another (tavrida 1.0 ignores them). The modules that documented a name
before this one re-export it under its old name
(:data:`tavrida.messages.REPLY_EXCHANGE_HEADER`,
:data:`tavrida.transports.base.DEAD_LETTER_REASON_HEADER`, ...).
"""

from __future__ import annotations

import time
from typing import Any, Dict, Mapping, Optional

#: Prefix of tavrida 2's own headers.
PREFIX = "x-tavrida-"

# -- tavrida 1.0's headers -------------------------------------------------

CORRELATION_ID = "correlation_id"
REQUEST_ID = "request_id"
MESSAGE_ID = "message_id"
MESSAGE_TYPE = "message_type"
REPLY_TO = "reply_to"
SOURCE = "source"
DESTINATION = "destination"
#: The headers tavrida owns on every message; everything else is the user's.
TAVRIDA_1 = (CORRELATION_ID, REQUEST_ID, MESSAGE_ID, MESSAGE_TYPE, REPLY_TO, SOURCE,
             DESTINATION)
#: Headers an incoming message must carry (``reply_to`` may be absent).
REQUIRED = (CORRELATION_ID, MESSAGE_ID, REQUEST_ID, MESSAGE_TYPE, SOURCE, DESTINATION)

# -- calls --------------------------------------------------------------------

#: A 2.0 call's exchange for its answers, used when the answering service's
#: discovery does not know the caller.
REPLY_EXCHANGE = PREFIX + "reply-exchange"
#: When a blocking call's caller gives up, in milliseconds since the Unix epoch.
EXPIRES_AT = PREFIX + "expires-at"

# -- retries and dead letters ------------------------------------------------

#: A retried copy: how many times the handler already ran on this message.
ATTEMPTS = PREFIX + "attempts"
#: A dead letter: why tavrida could not handle it.
DEAD_LETTER_REASON = PREFIX + "dead-reason"
#: A dead letter: the queue it came from.
DEAD_LETTER_QUEUE = PREFIX + "original-queue"
#: A dead letter or a retried copy: where it was first published.
DEAD_LETTER_EXCHANGE = PREFIX + "original-exchange"
DEAD_LETTER_ROUTING_KEY = PREFIX + "original-routing-key"
#: A dead letter whose original headers could not be copied: why.
DEAD_LETTER_DROPPED = PREFIX + "dropped-headers"

# -- transports ---------------------------------------------------------------

#: A message stored by kombu's virtual transports: the publisher that wrote it.
ORIGIN = PREFIX + "origin"
#: A delivery whose headers table could not be read: why (the headers replaced).
UNREADABLE_HEADERS = PREFIX + "unreadable-headers"
#: A delivery whose headers table could not be read: its raw bytes, escaped.
RAW_HEADERS = PREFIX + "raw-headers"


def is_tavridas(name: str) -> bool:
    """True for a header of tavrida's own (1.0's or an ``x-tavrida-*`` one)."""
    return name in TAVRIDA_1 or name.startswith(PREFIX)


def expiry_of(headers: Mapping[str, Any]) -> Optional[float]:
    """When the caller of a request gave up (epoch seconds), or None: no limit.

    A value that is not a number is ignored (the request is handled).
    """
    raw = headers.get(EXPIRES_AT)
    if raw is None:
        return None
    if isinstance(raw, (bytes, bytearray)):
        raw = bytes(raw).decode("ascii", "replace")
    try:
        value = float(raw)
    except (TypeError, ValueError, OverflowError):
        return None
    return value / 1000.0 if value == value else None  # NaN: no limit


def late_by(headers: Mapping[str, Any], now: Optional[float] = None) -> Optional[float]:
    """Seconds since the caller of a request gave up, or None while it still waits."""
    deadline = expiry_of(headers)
    if deadline is None:
        return None
    late = (time.time() if now is None else now) - deadline
    return late if late >= 0 else None


#: Headers of the per-message path that are never the user's (see :func:`user_headers`).
_OWN_HEADERS = frozenset(TAVRIDA_1 + (REPLY_EXCHANGE, EXPIRES_AT))


def user_headers(headers: Mapping[str, Any]) -> Dict[str, Any]:
    """The headers of ``headers`` that are not tavrida's own.

    ``x-tavrida-*`` headers (dead-letter reasons and the like) describe one
    message and are never carried into another.
    """
    if headers.keys() <= _OWN_HEADERS:
        return {}  # the common case, no user header: one set comparison, no loop
    return {k: v for k, v in headers.items()
            if k not in TAVRIDA_1 and not k.startswith(PREFIX)}

"""An envelope made into the message a kombu channel publishes: :func:`prepare_message`.

kombu's ``Producer`` is not used: it has no ``mandatory`` return matching,
and tavrida needs the raw ``basic_publish`` of the channel to pipeline
confirms.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, Set

from tavrida.transports.base import OutgoingEnvelope
from tavrida.transports.kombu.compat.pyamqp import bytes_key, checked_message, plain_message
from tavrida.transports.kombu.compat.virtual import check_route


def prepare_message(channel: Any, envelope: OutgoingEnvelope, is_amqp: bool, private: bool,
                    exchanges: Set[str]) -> Any:
    """The message to publish ``envelope`` on ``channel``.

    ``exchanges``: those a virtual channel (Redis, memory) has recorded as
    topic exchanges, added to here. Raises what encoding raises (see
    :data:`~.compat.pyamqp.UNENCODABLE`) and, virtual, ``NoRoute``.
    """
    if not is_amqp and envelope.exchange not in exchanges:
        # Virtual transports route in this process and treat an exchange they
        # have not seen as "direct": record it as topic (no broker round trip).
        if envelope.exchange:
            channel.exchange_declare(exchange=envelope.exchange, type="topic",
                                     durable=True, auto_delete=False)
        exchanges.add(envelope.exchange)
    properties: Dict[str, Any] = {"delivery_mode": 2 if envelope.persistent else 1}
    if envelope.expiration is not None:
        # AMQP per-message TTL: milliseconds, as a string (virtual transports ignore it).
        properties["expiration"] = str(int(envelope.expiration * 1000))
    if not is_amqp:
        headers = dict(envelope.headers)
        if not private:
            check_route(channel, envelope.exchange, envelope.routing_key)
            headers = copy.deepcopy(headers)  # kombu's memory stores this very object
        return channel.prepare_message(bytes(envelope.body), None, envelope.content_type,
                                       envelope.content_encoding, headers, properties)
    headers = dict(envelope.headers)
    try:  # one test for all keys: bench.profiling "cast, tavrida: client" calls/message
        ascii_keys = "".join(headers).isascii()
    except TypeError:  # a key that is not text
        ascii_keys = False
    if not ascii_keys:
        for key in headers:
            if isinstance(key, str) and not key.isascii():
                # Keys received as text with surrogates (see text_key) go out as bytes.
                headers = {bytes_key(key): value for key, value in headers.items()}
                break
    message = checked_message if private else plain_message
    return message(channel, bytes(envelope.body), envelope.content_type,
                   envelope.content_encoding, headers, properties)

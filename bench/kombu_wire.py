"""tavrida's wire message, written by hand for the raw kombu baseline (``--kombu-wire``).

With ``python -m bench --kombu-wire`` the kombu side of scenarios 1, 2 and 7
sends and answers what tavrida puts on the wire (``docs/compatibility.rst``, as
captured from a tavrida client and service on RabbitMQ): the seven tavrida
headers plus the reply exchange and the deadline of a call, the JSON envelope
``{"payload": ..., "context": ...}``, ``content_type`` / ``content_encoding``,
``delivery_mode=2``, a call's ``expiration``, and the answer routed through
the caller's topic exchange by its service name. What is left between that
kombu and tavrida is the library, not the format: the run's ratios then show
what the format costs (against the default run) and what the library costs.

Nothing here imports tavrida (the RSS of the kombu service stays a plain
kombu consumer's). The ids are made as tavrida makes them: ``uuid4().hex``
for ``message_id`` and ``request_id``, ``str(uuid4())`` for
``correlation_id``.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Dict, Tuple

from bench.common import CLIENT, ECHO_KEY

#: The header naming the exchange an answer goes to (tavrida 2's, beside the seven of 1.0).
REPLY_EXCHANGE = "x-tavrida-reply-exchange"
#: A blocking call's deadline, epoch milliseconds.
EXPIRES_AT = "x-tavrida-expires-at"


#: The header of the ``default-exchange-answer`` lever: the reply queue's name.
REPLY_QUEUE = "x-bench-reply-queue"
#: RabbitMQ's direct reply-to pseudo-queue (the ``direct-reply-to`` lever).
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"


def publish(producer: Any, body: Dict[str, Any], headers: Dict[str, Any], exchange: str,
            routing_key: str, **extra: Any) -> None:
    """Send one of these messages through kombu's ``Producer`` as tavrida sends it.

    Persistent and mandatory; ``content_type`` and ``content_encoding``
    (``application/json``, ``utf-8``) are those kombu's ``json`` serializer sets.
    ``extra``: more publish arguments (a call's ``expiration``). Not mandatory
    to a direct reply-to: RabbitMQ 3.10 returns every such publish as
    unroutable, delivered or not.
    """
    mandatory = not routing_key.startswith(DIRECT_REPLY_TO)
    producer.publish(body, exchange=exchange, routing_key=routing_key, headers=headers,
                     serializer="json", mandatory=mandatory, delivery_mode=2, **extra)


def request(value: Any, destination: str, reply_exchange: str = "", timeout: float = 0.0,
            source: str = CLIENT) -> Tuple[Dict[str, Any], Dict[str, Any], Dict[str, Any]]:
    """Body, headers and extra publish arguments of a call (``reply_exchange``) or a cast.

    ``source`` is the client's service name: a call's answer is routed by it.
    """
    headers: Dict[str, Any] = {
        "correlation_id": str(uuid.uuid4()), "request_id": uuid.uuid4().hex,
        "message_id": uuid.uuid4().hex, "message_type": "request",
        "reply_to": source if reply_exchange else "", "source": source,
        "destination": destination}
    extra: Dict[str, Any] = {}
    if reply_exchange:
        headers[REPLY_EXCHANGE] = reply_exchange
        headers[EXPIRES_AT] = int((time.time() + timeout) * 1000)
        extra["expiration"] = timeout
    return {"payload": {"value": value}, "context": {}}, headers, extra


def call(value: Any, reply_exchange: str, timeout: float,
         source: str) -> Tuple[Dict[str, Any], Dict[str, Any], Dict[str, Any]]:
    """A call of ``echo(value=value)`` from ``source``, answered through ``reply_exchange``."""
    return request(value, ECHO_KEY, reply_exchange, timeout, source)


def answer(request_body: Dict[str, Any], request_headers: Dict[str, Any],
           payload: Dict[str, Any],
           reply_to: str = "") -> Tuple[Dict[str, Any], Dict[str, Any], str, str]:
    """Body, headers, exchange and routing key of the response ``payload`` to a call.

    The context is the request's updated with the request's payload, as a
    tavrida service answers. ``reply_to``: the request's AMQP ``reply_to``
    property (set by the ``direct-reply-to`` lever only).
    """
    headers = {"correlation_id": request_headers["correlation_id"],
               "request_id": request_headers["request_id"], "message_id": uuid.uuid4().hex,
               "message_type": "response", "reply_to": "",
               "source": request_headers["destination"],
               "destination": request_headers["reply_to"]}
    context = dict(request_body.get("context") or {})
    context.update(request_body["payload"])
    body = {"payload": payload, "context": context}
    if reply_to.startswith(DIRECT_REPLY_TO):
        return body, headers, "", reply_to
    if REPLY_QUEUE in request_headers:
        return body, headers, "", request_headers[REPLY_QUEUE]
    return body, headers, request_headers[REPLY_EXCHANGE], request_headers["reply_to"]

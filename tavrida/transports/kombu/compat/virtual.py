"""Fixes to kombu's virtual transports (Redis, ``kombu+memory://``): routing and requeues.

kombu's virtual transports route in the publishing process, with tables
kept in the broker (Redis) or in process. Their defaults lose or duplicate
messages in ways RabbitMQ does not; each fix below says which. Every private
name of ``kombu.transport.virtual`` the adapter uses is here, and
``tests/unit/transports/test_kombu_compat.py`` fails when one changes:

* ``Channel._lookup`` (private; the one place routing is decided): replaced by
  :func:`strict_lookup`, so a message no binding takes raises :class:`NoRoute`
  instead of going to kombu's ``deadletter_queue`` (silently gone).
* ``Channel.Message`` (a class attribute, set per instance by :func:`own_copies`):
  each queue's copy gets its own delivery tag and is requeued to its own queue.
* ``Channel.typeof``, ``Channel.get_table``, ``Channel.state.binding_delete`` and
  the ``table`` rows ``(routing_key, pattern, queue)`` of ``state.exchanges``
  (undocumented): :func:`binding_rows` and :func:`forget_bindings`, used to
  notice and re-declare bindings the broker lost.
* ``Channel._delete`` (private), ``Channel.keyprefix_queue`` (the Redis
  channel's ``_kombu.binding.%s`` key of an exchange's binding rows),
  ``Channel.global_keyprefix`` and ``Channel.conn_or_acquire``:
  :func:`delete_broker_bindings`, so that deleting a queue on Redis also
  deletes the bindings other connections declared.
* ``Message._raw`` (private): :func:`raw_payload`, the stored payload (kombu's
  ``Message`` may have decompressed the body; tavrida hands bytes on untouched).
* ``QoS._flush``, ``QoS._delivered`` (private) and ``QoS.restore_unacked``:
  :func:`restore_unacked`, which gives a lost channel's un-acked messages back
  (kombu's own close raises first when the Redis connection died mid-read).
* ``TopicExchange.lookup`` (subclassed) and ``Channel.exchange_types`` (an
  undocumented table): :class:`RabbitTopicExchange`, put in place by
  :func:`rabbit_topic_routing`, matches as RabbitMQ does (``a.#`` matches ``a``);
  on Redis its subclass :class:`.redis_routing.RedisTopicExchange` routes and
  stores in one script.
* ``Channel._put`` (private; where every routed or requeued message is stored):
  on Redis wrapped by :func:`.redis_delays.delayed_puts` (delay queues); on
  kombu's memory transport replaced by :func:`private_payloads`, so each
  queue stores a copy of its own (kombu stores the publisher's objects: a
  header the publisher changed after publishing, or one consumer changed,
  changed in every queue).
* ``Channel.exchange_delete`` (and, on Redis, ``keyprefix_binding_permanent``,
  the set kombu 5.7 keeps beside ``keyprefix_queue``), plus
  ``Channel.queue_delete``, ``Channel.queues`` and ``Channel.state.has_binding``
  of kombu's memory transport: replaced by :func:`exact_deletes`, so that
  deleting an exchange deletes its bindings only (kombu's deletes all the
  bindings of an empty queue bound to it, to every exchange) and never raises
  ``KeyError`` for one that is gone, and a deleted memory queue (a closed
  transport's reply queue) no longer takes messages (kombu leaves its rows in
  the routing tables and creates the queue again for each message, which
  nobody reads).

:func:`rabbit_channel` applies all fixes a new virtual channel needs.
"""

from __future__ import annotations

import copy
import logging
import re
import uuid
from typing import Any, Dict, Iterable, List, Set, Tuple

from kombu import compression
from kombu.transport import memory as kombu_memory
from kombu.transport.virtual.exchange import TopicExchange
from kombu.utils.encoding import bytes_to_str

from tavrida.transports.base import Binding
from tavrida.transports.topic import topic_matches

LOG = logging.getLogger(__name__)

#: Key under which virtual transports keep a message's original route.
ORIGIN = "x-tavrida-origin"


def raw_payload(message: Any) -> Any:
    """The payload kombu stored for ``message`` (body still encoded, never decompressed)."""
    return message._raw


def binding_rows(channel: Any, exchange: str) -> List[Tuple[Any, ...]]:
    """The broker's binding rows ``(routing_key, pattern, queue)`` of ``exchange``."""
    try:
        return list(channel.get_table(exchange))
    except KeyError:  # kombu's memory transport: an exchange it never saw (or lost)
        return []


def forget_bindings(channel: Any, bindings: Iterable[Binding]) -> None:
    """Drop ``bindings`` from the channel's own records, so declaring them writes them again.

    kombu skips a binding its channel state already records, although the
    broker may have lost it (a deleted queue, a Redis FLUSHALL).
    """
    state = channel.state
    for binding in bindings:
        state.binding_delete(binding.queue, binding.exchange, binding.routing_key)
        table = state.exchanges.get(binding.exchange, {}).get("table")
        if table:
            table[:] = [row for row in table
                        if (row[0], row[-1]) != (binding.routing_key, binding.queue)]


def _glob_escaped(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def delete_broker_bindings(channel: Any, queues: Iterable[str]) -> int:
    """Delete every binding of ``queues`` a Redis broker holds, whoever declared it; how many.

    kombu's ``queue_delete`` deletes only the bindings its own connection
    declared (and, with them, the queue's lists): a queue another process bound
    kept its bindings in the ``_kombu.binding.<exchange>`` sets, so messages
    went on being routed to it. Here every such set (found with ``SCAN``; an
    admin action, not a hot path) loses its rows naming one of ``queues``,
    through the channel's own ``_delete``, and each queue's lists are purged
    (a queue with no binding, like a dead-letter queue, keeps none), with
    its delays and the messages they hold (:mod:`.redis_delays`). Other
    transports keep their bindings in process, where kombu sees them all:
    nothing to do there.
    """
    pattern = getattr(channel, "keyprefix_queue", None)
    if pattern is None:
        return 0
    wanted = set(queues)
    prefix = getattr(channel, "global_keyprefix", "") or ""
    start = prefix + pattern % ("",)
    removed = 0
    with channel.conn_or_acquire() as client:
        keys = [bytes_to_str(key) for key in client.scan_iter(
            match=_glob_escaped(start) + "*", count=1000)]
    for exchange in sorted({key[len(start):] for key in keys}):
        for row in binding_rows(channel, exchange):
            routing_key, match, queue = row[0], row[1], row[-1]
            if queue in wanted:
                channel._delete(queue, exchange, routing_key, match)
                removed += 1
    for queue in wanted:
        channel.queue_purge(queue)
        from tavrida.transports.kombu.compat.redis_delays import delete as delete_delays

        delete_delays(channel, queue)  # its delay queues and the retries they hold
    return removed


def restore_unacked(qos: Any) -> None:
    """Give the un-acked messages a lost virtual channel's QoS holds back to their queues.

    Raises when the broker cannot be reached (the caller tries again later).
    """
    qos._flush()  # forget what was acked meanwhile
    if qos._delivered:
        LOG.info("giving %d un-acked message(s) back to their queue", len(qos._delivered))
        qos.restore_unacked()  # clears _delivered: kombu's own close restores nothing


class RabbitTopicExchange(TopicExchange):
    """kombu's virtual topic exchange, matching as RabbitMQ does.

    kombu turns ``#`` into ``.*?`` between dots, so ``svc.#`` does not match
    ``svc`` -- the routing key of tavrida responses. The binding's own key
    is matched, not the regex kombu stored beside it in Redis, by the very
    function the in-memory transport routes with.
    """

    def lookup(self, table: Iterable[Tuple[Any, ...]], exchange: str, routing_key: str,
               default: Any) -> Set[str]:
        return {queue for key, _, queue in table if topic_matches(key, routing_key)}


def rabbit_topic_routing(channel: Any) -> None:
    """Make the virtual ``channel`` route topic exchanges as RabbitMQ does."""
    channel.exchange_types["topic"] = RabbitTopicExchange(channel)  # type: ignore[no-untyped-call]


def public_payload(message: Any) -> Dict[str, Any]:
    """Public mode's :func:`raw_payload`: the same keys, from the message's public attributes."""
    properties = dict(message.properties or {})
    properties.pop("body_encoding", None)  # the body is decoded already
    properties["delivery_info"] = message.delivery_info
    properties["delivery_tag"] = message.delivery_tag
    headers = copy.deepcopy(message.headers or {})
    body = message.body
    if headers.get("compression"):
        # kombu's Message decompressed it; the sender's bytes are handed on (zlib: the same).
        body = compression.compress(body, headers["compression"])[0]
    return {"properties": properties, "body": body, "headers": headers,
            "content-type": message.content_type,
            "content-encoding": message.content_encoding,
            "redelivered": (message.delivery_info or {}).get("redelivered")}


def check_route(channel: Any, exchange: str, routing_key: str) -> None:
    """Public mode's :func:`strict_lookup`: raise :class:`NoRoute` before an unroutable publish."""
    if not exchange:
        return
    table = binding_rows(channel, exchange)
    if not list(channel.typeof(exchange).lookup(table, exchange, routing_key, None)):
        raise NoRoute()


def public_channel(channel: Any) -> None:
    """Public mode's :func:`rabbit_channel`: RabbitMQ's topic routing and deletes only."""
    rabbit_topic_routing(channel)
    exact_deletes(channel)


def rabbit_channel(channel: Any) -> None:
    """Make a new virtual ``channel`` act as RabbitMQ where kombu's differs.

    Every virtual channel routes topics (:func:`rabbit_topic_routing`) and
    deletes (:func:`exact_deletes`) as RabbitMQ; those of kombu's memory
    transport also store private copies (:func:`private_payloads`), those of
    Redis hold what goes to a delay queue (:func:`.redis_delays.delayed_puts`)
    and route topic exchanges in Redis (:func:`.redis_routing.redis_routing`).
    """
    rabbit_topic_routing(channel)
    exact_deletes(channel)
    if _is_memory(channel):
        private_payloads(channel)
    elif getattr(channel, "keyprefix_queue", None) is not None:  # Redis
        from tavrida.transports.kombu.compat.redis_delays import delayed_puts
        from tavrida.transports.kombu.compat.redis_routing import redis_routing

        delayed_puts(channel)
        redis_routing(channel)


def _is_memory(channel: Any) -> bool:
    """Whether ``channel`` is one of kombu's in-process memory transport."""
    return isinstance(channel, kombu_memory.Channel)


def private_payloads(channel: Any) -> None:
    """Make kombu's memory ``channel`` store a deep copy of each message, one per queue.

    kombu's memory transport puts the publisher's payload object itself in
    every queue a message is routed to: a header table the publisher changed
    after publishing, or one consumer changed, changed for every consumer.
    On a broker each queue holds bytes of its own. Only topic and default
    exchanges (all tavrida declares) store through ``_put``.
    """
    put = channel._put

    def store(queue: str, message: Dict[str, Any], **kwargs: Any) -> Any:
        return put(queue, copy.deepcopy(message), **kwargs)

    channel._put = store


def exact_deletes(channel: Any) -> None:
    """Make the virtual ``channel`` delete queues and exchanges as RabbitMQ does.

    kombu's ``exchange_delete`` deletes every binding (to any exchange) of
    each empty queue bound to the exchange, keeps the bindings of the others,
    and on the memory transport raises ``KeyError`` for an exchange that is
    gone. Here a deleted exchange loses its own bindings, whoever declared
    them (on Redis: its binding sets), and deleting what is gone does nothing.

    kombu's memory ``queue_delete`` forgets the queue's bindings but leaves
    their rows in the exchanges' routing tables (and keeps the messages of a
    queue that had no binding): a deleted queue (a closed transport's reply
    queue) went on taking messages nobody would read. Here it loses its rows
    and its messages. (Redis keeps its tables in the broker, see
    :func:`delete_broker_bindings`.)
    """
    state = channel.state

    def exchange_delete(exchange: str, if_unused: bool = False, nowait: bool = False) -> None:
        for row in binding_rows(channel, exchange):
            state.binding_delete(row[-1], exchange, row[0])
        pattern = getattr(channel, "keyprefix_queue", None)
        if pattern is not None:  # Redis: the binding sets (DEL adds the global key prefix)
            kept = getattr(channel, "keyprefix_binding_permanent", None)
            with channel.conn_or_acquire() as client:
                client.delete(*[key % (exchange,) for key in (pattern, kept) if key])
        state.exchanges.pop(exchange, None)

    channel.exchange_delete = exchange_delete
    if not _is_memory(channel):
        return
    delete_queue = channel.queue_delete

    def queue_delete(queue: str, if_unused: bool = False, if_empty: bool = False,
                     **kwargs: Any) -> Any:
        result = delete_queue(queue, if_unused=if_unused, if_empty=if_empty, **kwargs)
        for exchange, meta in list(state.exchanges.items()):
            table = meta.get("table")
            if table:
                table[:] = [row for row in table
                            if row[-1] != queue or state.has_binding(queue, exchange, row[0])]
        if not if_empty:
            channel.queues.pop(queue, None)
        return result

    channel.queue_delete = queue_delete


def own_copies(channel: Any, queue: str) -> None:
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

    def message(payload: Dict[str, Any], channel: Any = None, **kwargs: Any) -> Any:
        # Copies: the payload kombu stored stays as it was (kombu requeues it).
        properties = dict(payload["properties"])
        info = dict(properties.get("delivery_info") or {})
        if payload.get("redelivered"):  # set by kombu's requeue; public for public mode
            info["redelivered"] = True
        properties.setdefault(ORIGIN, [info.get("exchange") or "", info.get("routing_key") or ""])
        info["exchange"], info["routing_key"] = "", queue
        properties["delivery_info"] = info
        properties["delivery_tag"] = uuid.uuid4().hex
        return make_message(dict(payload, properties=properties), channel=channel, **kwargs)

    channel.Message = message


class NoRoute(Exception):
    """A virtual transport found no queue for a message (nothing was stored)."""


def strict_lookup(channel: Any) -> None:
    """Make a virtual channel's publish raise :class:`NoRoute` when no queue matches.

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
        table = binding_rows(channel, exchange)
        queues = list(channel.typeof(exchange).lookup(table, exchange, routing_key, None))
        if not queues:
            raise NoRoute()
        return queues

    channel._lookup = lookup

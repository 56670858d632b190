"""Every private name of py-amqp, kombu and redis-py the transport uses, and copied code.

The modules of this subpackage are the only ones of tavrida touching
upstream names that start with an underscore (``tests/unit/test_layout.py``
checks it): :mod:`.pyamqp` (tolerant frames, checked messages, the raw
connection), :mod:`.pyamqp_publish` (py-amqp's ``basic_publish`` in fewer
calls), :mod:`.pyamqp_read` (py-amqp's frame reads over plain TCP in fewer
system calls), :mod:`.fast_properties` (py-amqp's frame state machine, copied,
with a reader and writer of the usual properties), :mod:`.virtual` (kombu's
virtual transports made to behave as RabbitMQ), :mod:`.redis_fetch` (a Redis
pop that survives its connection), :mod:`.redis_delays` (delay queues on
Redis) and :mod:`.redis_routing` (a Redis publish in one round trip).
:data:`REGISTRY` lists each name with why it is used and the canary test in
``tests/unit/transports/test_kombu_compat.py`` that fails the day upstream
changes it.

:class:`Compat` switches them off: ``TAVRIDA_KOMBU_PUBLIC_API=1`` in the
environment (read once, at the first transport) or
``KombuTransport(config, compat=Compat.public())`` runs the transport on
the public API of py-amqp and kombu alone, with the fallbacks
:data:`REGISTRY` names (``docs/delivery.rst`` says what is lost).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Tuple

__all__ = ["Compat", "PrivateName", "REGISTRY", "ENVIRONMENT_VARIABLE"]

#: Set to ``1`` to run every kombu transport on public upstream API only.
ENVIRONMENT_VARIABLE = "TAVRIDA_KOMBU_PUBLIC_API"


@dataclasses.dataclass(frozen=True)
class PrivateName:
    """One private upstream name (or copied code) the transport relies on."""

    #: The name, as upstream spells it.
    name: str
    #: ``py-amqp``, ``kombu`` or ``redis-py``.
    upstream: str
    #: The module of this subpackage using it.
    module: str
    #: ``speed`` (a fast path) or ``fix`` (upstream's behaviour is wrong for tavrida).
    kind: str
    #: What it is for.
    why: str
    #: The test of ``tests/unit/transports/test_kombu_compat.py`` that watches it.
    canary: str
    #: What the transport does instead in public mode.
    fallback: str


def _row(name: str, upstream: str, module: str, kind: str, why: str, canary: str,
         fallback: str) -> PrivateName:
    return PrivateName(name, upstream, module, kind, why, canary, fallback)


#: Every private upstream name used, where, why, its canary and its public-mode fallback.
REGISTRY: Tuple[PrivateName, ...] = (
    _row("amqp.serialization._read_item", "py-amqp", "pyamqp", "fix",
         "reads one header-table value for the tolerant parser",
         "test_read_item_is_still_py_amqps_reader_of_one_field_value",
         "py-amqp's own frame handler: a poison frame drops the connection"),
    _row("amqp.method_framing._CONTENT_METHODS", "py-amqp", "fast_properties", "speed",
         "the copied frame handler knows which methods carry content",
         "test_the_content_methods_are_still_py_amqps_private_set",
         "py-amqp's own frame handler"),
    _row("amqp.method_framing.frame_handler (copied code)", "py-amqp", "fast_properties",
         "speed", "the frame state machine, with the fast reader of the usual properties",
         "test_the_frame_handler_calls_back_as_py_amqps_does",
         "py-amqp's own frame handler"),
    _row("amqp.Message._load_properties", "py-amqp", "fast_properties", "speed",
         "reads the usual properties without py-amqp's generic table code",
         "test_fast_read_properties_read_what_py_amqp_reads", "amqp.Message"),
    _row("amqp.Message._serialize_properties", "py-amqp", "pyamqp", "fix",
         "serializes the properties once, to check they fit in one frame (and fast)",
         "test_message_properties_serialize_privately_and_prepare_message_takes_the_class",
         "the headers table measured with the public serialization.dumps"),
    _row("kombu Channel.prepare_message(_Message=)", "kombu", "pyamqp", "fix",
         "makes kombu build the checked message",
         "test_message_properties_serialize_privately_and_prepare_message_takes_the_class",
         "kombu's plain prepare_message"),
    _row("amqp.Channel._basic_publish (copied steps), Connection.frame_writer", "py-amqp",
         "pyamqp_publish", "speed",
         "writes a basic.publish as py-amqp does, reading first only when there is input",
         "test_basic_publish_still_reads_then_writes_as_the_copied_steps_do",
         "channel.basic_publish"),
    _row("amqp.transport.TCPTransport.read_frame, Connection.Transport, "
         "Connection.drain_events (replaced)", "py-amqp",
         "pyamqp_read", "speed",
         "reads a burst of frames in one recv and no settimeout (plain TCP); a frame read "
         "ahead is input a poll of the socket misses: polling.frame_waits tells it",
         "test_py_amqp_still_reads_a_frame_in_three_exact_recvs_within_having_timeout",
         "py-amqp's transport: three recv per frame, two settimeout per frame read in time"),
    _row("kombu.Connection._connection", "kombu", "pyamqp", "fix",
         "the transport connection without kombu's implicit reconnect",
         "test_kombu_connections_still_keep_the_transport_connection_privately",
         "conn.connection when conn.connected, else None"),
    _row("kombu virtual Channel._lookup", "kombu", "virtual", "fix",
         "an unroutable message raises instead of vanishing",
         "test_kombu_virtual_lookup_still_drops_unroutable_messages_silently",
         "the same check before the publish, through the public typeof/get_table"),
    _row("kombu redis Channel._delete", "kombu", "virtual", "fix",
         "deleting a queue deletes the bindings other connections declared",
         "test_kombu_still_deletes_only_the_bindings_its_own_connection_declared",
         "none: other connections' bindings stay"),
    _row("kombu virtual Message._raw", "kombu", "virtual", "fix",
         "the stored payload, to copy a delivery's headers",
         "test_virtual_messages_still_keep_their_raw_payload",
         "the message's public body, headers and properties"),
    _row("kombu virtual QoS._flush, QoS._delivered", "kombu", "virtual", "fix",
         "gives a lost channel's un-acked messages back at once",
         "test_virtual_qos_still_has_the_private_restore_hooks",
         "qos.restore_unacked() alone"),
    _row("kombu memory Channel._put", "kombu", "virtual", "fix",
         "each queue of kombu's memory transport stores its own copy",
         "test_kombu_memory_still_stores_the_publishers_payload_in_every_queue",
         "none: consumers share one payload"),
    _row("kombu redis Channel._put", "kombu", "redis_delays", "fix",
         "a publish to a delay queue is held in a sorted set",
         "test_kombu_redis_still_stores_every_message_through_put",
         "no delay queues on Redis (holds_delays is False: retries wait in the service)"),
    _row("kombu redis Channel._brpop_start, _brpop_read, _in_poll, _brpop_sent_at",
         "kombu", "redis_fetch", "fix",
         "pops with BRPOPLPUSH, so a pop is not lost with its connection",
         "test_kombu_redis_still_pops_with_plain_brpop", "kombu's BRPOP"),
    _row("kombu redis Channel._flush_brpop_reauth", "kombu", "redis_fetch", "fix",
         "kombu 5.7 re-authenticates after a pop; the fetch calls it as kombu does",
         "test_kombu_redis_flushes_a_pending_reauth_after_a_pop", "kombu's BRPOP"),
    _row("kombu virtual Transport._deliver, redis QoS._remove_from_indices", "kombu",
         "redis_fetch", "fix", "hands a fetched message over; forgets a recovered one",
         "test_kombu_redis_still_has_the_attributes_redis_fetch_sets_and_reads",
         "kombu's BRPOP"),
    _row("kombu redis QoS.append, QoS.ack (replaced), Message._raw", "kombu", "redis_fetch",
         "speed", "the un-acked record and the in-flight removal in one script; the ack's "
         "removal of the record in another (one command each, not a MULTI)",
         "test_kombu_redis_still_records_unacked_messages_as_redis_fetch_does",
         "kombu's BRPOP, append and ack"),
    _row("kombu redis Channel._expires, _get_message_priority; TopicExchange.deliver",
         "kombu", "redis_routing", "speed",
         "a publish to a topic exchange routes and pushes in one script (one round trip)",
         "test_kombu_redis_still_routes_topics_by_lookup_then_put",
         "kombu's SMEMBERS then LPUSH, after the routing check (three round trips)"),
    _row("redis-py Connection._sock", "redis-py", "redis_fetch", "fix",
         "tells a silent pop from a slow one",
         "test_the_silent_pop_check_is_kombus_where_it_has_one_else_redis_fetchs",
         "kombu's BRPOP (with kombu 5.7's own health check)"),
)


@dataclasses.dataclass(frozen=True)
class Compat:
    """Whether a transport uses the private names of :data:`REGISTRY` (``private``) or not."""

    private: bool = True

    @classmethod
    def public(cls) -> "Compat":
        """Public upstream API only (the fallbacks of :data:`REGISTRY`)."""
        return cls(private=False)

    @classmethod
    def from_environment(cls) -> "Compat":
        """Public when ``TAVRIDA_KOMBU_PUBLIC_API=1`` (read once per process)."""
        return _from_environment()


@functools.cache
def _from_environment() -> Compat:
    return Compat(private=os.environ.get(ENVIRONMENT_VARIABLE, "") != "1")

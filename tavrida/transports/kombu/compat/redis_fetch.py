"""Reliable consumption on Redis: ``BRPOPLPUSH`` into a per-consumer in-flight list.

kombu's Redis channel pops with ``BRPOP``, which loses a message whose
connection dies as Redis sends it. :class:`RedisFetch` replaces that one
command on the channel; the rest is kombu's. This is a copy of kombu 5.x's
``Channel._brpop_start``/``_brpop_read`` with the command changed, so it
relies on these private names of ``kombu.transport.redis``, checked by
``tests/unit/transports/test_kombu_compat.py``:

* ``Channel._brpop_start(timeout)``, ``Channel._brpop_read(**options)`` and
  ``Channel.handlers["BRPOP"]``: the two halves of kombu's blocking pop, and
  the handler its poller calls;
* ``Channel._in_poll`` (the connection a pop waits on, set as kombu does) and
  ``Channel._brpop_sent_at`` (kombu 5.7+, read by kombu's BRPOP health check;
  set on every kombu, unused below 5.7); ``Channel._flush_brpop_reauth``
  (only when kombu has it, 5.7+);
* ``Channel.active_queues``, ``brpop_timeout`` (read with a default of 1 s,
  kombu's, where a channel lacks it), ``health_check_interval``, ``client``,
  ``conn_or_acquire``, ``connection_errors``, ``global_keyprefix`` and
  ``connection._deliver``; ``connection.cycle``, the channel's
  ``MultiChannelPoller``: its ``maybe_check_brpop_health`` (kombu 5.7+) or, below
  5.7, its ``maybe_restore_messages``, which its ``get`` calls after a poll that
  read nothing (wrapped to run :meth:`RedisFetch.check_silence` there);
* ``QoS.append`` and ``QoS.ack`` (replaced by :meth:`RedisFetch.record` and
  :meth:`RedisFetch.forget`: kombu's ``ZADD``/``HSET`` and ``ZREM``/``HDEL``
  of its un-acked record, each as one script, the record's also removing
  the in-flight copy; then kombu's in-process half, virtual ``QoS.append``
  and ``ack``), ``QoS.unacked_key``, ``unacked_index_key``,
  ``restore_by_tag``, ``Message._raw`` (the record's payload, as kombu's), and
  ``QoS._remove_from_indices`` (to drop records that may half exist);
* of redis-py: ``Connection._sock`` (private: is a reply waiting?, as kombu
  5.7 asks), ``send_command``, ``parse_response`` and ``disconnect``.

A pop whose reply never comes (a half-open connection: Redis or the network
gone without a reset) would wait for ever, as no socket timeout applies to
kombu's poll. kombu 5.7+ drops such a connection once the reply is overdue by
``brpop_timeout + health_check_interval``; on older kombu
:meth:`RedisFetch.check_silence` does the same, in the same place. Either way
kombu then connects again and pops anew, and :meth:`RedisFetch.install`'s pop
first puts back what the abandoned pop may have moved to the in-flight list.

Should kombu ever pop reliably itself, or rename one of these, the canary
test fails instead of the plain BRPOP silently coming back.

Before each pop (at most every :data:`.redis_delays.RELEASE_INTERVAL`) the
retries due in the queue's delay set go back to its list
(:class:`.redis_delays.Releaser`).

Where Redis takes ``CLIENT REPLY SKIP`` (an ACL may refuse it), commands written
ahead of the next pop go without a reply: answers' ``LREM``, acks' record deletions.
"""

from __future__ import annotations

import logging
import queue as queue_module
import select
import time
from typing import Any, List, Optional

from kombu.transport.virtual import QoS as VirtualQoS
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps
from kombu.utils.json import loads as json_loads

from tavrida.transports.kombu.compat.redis_delays import Releaser

LOG = logging.getLogger(__name__)

#: Longest in-flight list put back at once (it holds one message at a time, save accidents).
_MAX_RECOVERED = 10_000

#: kombu's defaults of the Redis channel's ``brpop_timeout`` and ``health_check_interval``.
_BRPOP_TIMEOUT = 1
_HEALTH_CHECK_INTERVAL = 25


#: KEYS: kombu's unacked index, its unacked hash, the in-flight list. ARGV: the time, the
#: delivery tag, kombu's record, the popped item. kombu's ``QoS.append`` and the ``LREM``.
_RECORD = """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('LREM', KEYS[3], 1, ARGV[4])
"""

#: KEYS: kombu's unacked index, its unacked hash. ARGV: the delivery tag. kombu's ``QoS.ack``.
_FORGET = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
"""


def kombu_checks_brpop_health(channel: Any) -> bool:
    """True when kombu itself drops a BRPOP connection whose reply is overdue (kombu 5.7+)."""
    return callable(getattr(channel.connection.cycle, "maybe_check_brpop_health", None))


def replies_skippable(channel: Any) -> bool:
    """Whether the channel's Redis takes ``CLIENT REPLY`` (asked with ``ON``, which changes
    nothing); the connection error if Redis cannot be reached."""
    import redis  # here: a RabbitMQ process never loads redis-py

    try:
        with channel.conn_or_acquire() as client:
            client.execute_command("CLIENT", "REPLY", "ON")
    except redis.exceptions.ResponseError as exc:  # an unknown command, or NOPERM
        LOG.debug("Redis refuses CLIENT REPLY (%s): commands ahead of a pop are answered", exc)
        return False
    return True


def _readable(sock: Any) -> bool:
    """Whether ``sock`` has data waiting (without reading it)."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([sock], [], [], 0)[0])


class RedisFetch:
    """Takes one queue's messages on Redis without a moment where only the network holds them.

    kombu pops with ``BRPOP``: Redis removes the message as it sends it, and
    kombu records it as un-acked only after reading it. A connection lost in
    between loses the message: the reply dies on the wire, or the record
    cannot be written (both seen under cuts). Here the pop is a
    ``BRPOPLPUSH`` into a list of this consumer's own,
    ``<queue>.tavrida-inflight.<consumer tag>``; the copy there is removed
    as kombu's record of the message is written, in the same script
    (:meth:`record`), or, for a queue taken without acks (a reply queue),
    in the same write as the next pop; whatever else is left in the list
    goes back to the queue when the consumer starts again (after a
    reconnect). Only the queue's plain list is consumed: tavrida never
    publishes with a priority, so kombu's priority lists stay empty.
    """

    def __init__(self, queue: str, tag: str) -> None:
        self.queue = queue
        self.inflight = f"{queue}.tavrida-inflight.{tag}"
        #: Items handed to kombu whose in-flight copy is still to be removed: taken
        #: without an ack (removed with the next pop), or whose removal failed (the
        #: un-acked restore brings them back). Their copy must go, not be restored.
        self.handed: List[bytes] = []
        #: Delivery tags whose un-acked record may have been written although
        #: kombu failed (the reply was lost): the in-flight copy wins.
        self.maybe_unacked: List[str] = []
        #: Delivery tags whose record may have been written, in-flight copy removed, by
        #: a script whose reply was lost (:meth:`record`): the record, if any, wins.
        self.maybe_recorded: List[str] = []
        #: The item being handed to kombu, until its in-flight copy is removed.
        self.popped: Optional[bytes] = None
        #: Items of :attr:`handed` whose LREM went out with the pop waiting (run before it).
        self.removing: List[bytes] = []
        #: Redis takes ``CLIENT REPLY SKIP`` (probed at :meth:`install`).
        self.skips_replies = False
        #: Delivery tags whose record deletion went out without a reply (:meth:`forget`)
        #: until the pop's reply shows it ran; run again (harmless) if the connection is lost.
        self.forgetting: List[str] = []
        #: Why the pop's connection failed under :meth:`forget`: raised by the next pop.
        self.lost: Optional[BaseException] = None
        self._record: Any = None
        self._forget: Any = None
        #: When the pop waiting for its reply was sent (monotonic), None when none waits.
        self.sent_at: Optional[float] = None
        #: Moves the queue's due retries back from its delay set before a pop.
        self.releaser = Releaser(queue)

    def install(self, channel: Any) -> None:
        """Replace the channel's BRPOP by BRPOPLPUSH (call before consuming).

        Raises the connection error when Redis cannot be reached (the caller
        reconnects and this runs again).
        """
        fetch = self
        prefix = getattr(channel, "global_keyprefix", "") or ""
        fetch.skips_replies = replies_skippable(channel)

        def brpop_start(timeout: Optional[float] = None) -> None:
            if timeout is None:
                timeout = getattr(channel, "brpop_timeout", _BRPOP_TIMEOUT)
            if fetch.queue not in channel.active_queues:
                return
            if fetch.lost is not None:
                lost, fetch.lost = fetch.lost, None
                raise lost
            if fetch.sent_at is not None:
                # The last pop's connection was dropped unanswered (kombu's health
                # check, or check_silence): what it may have moved goes back first.
                fetch.recover(channel)
            fetch.releaser.release_due(channel)  # delay queues (see .redis_delays)
            connection = channel.client.connection
            channel._in_poll = connection
            channel._brpop_sent_at = fetch.sent_at = time.monotonic()
            pop = ("BRPOPLPUSH", prefix + fetch.queue, prefix + fetch.inflight, timeout or 0)
            if not fetch.handed:
                connection.send_command(*pop)
                return
            # What was taken without an ack leaves the in-flight list with this pop, in
            # one write (bench.redis_trips "call, client"), with no reply where skipped: a
            # poll and a read less per answer (bench.profiling "call, tavrida: client").
            fetch.removing = list(fetch.handed)
            commands: List[Any] = []
            for item in fetch.removing:
                if fetch.skips_replies:
                    commands.append(("CLIENT", "REPLY", "SKIP"))
                commands.append(("LREM", prefix + fetch.inflight, 1, item))
            commands.append(pop)
            connection.send_packed_command(connection.pack_commands(commands))

        def brpop_read(**options: Any) -> bool:
            waiting = False
            try:
                connection = channel.client.connection
                try:
                    if fetch.removing and not fetch.skips_replies:
                        while fetch.removing:  # the LREMs sent before the pop
                            channel.client.parse_response(connection, "LREM")
                            fetch.handed.remove(fetch.removing.pop(0))
                        waiting = not connection.can_read(timeout=0)
                        if waiting:  # only their answers came: the pop waits on
                            raise queue_module.Empty()
                    item = channel.client.parse_response(connection, "BRPOPLPUSH", **options)
                    while fetch.removing:  # their replies skipped: run before the pop's
                        fetch.handed.remove(fetch.removing.pop(0))
                    fetch.forgetting.clear()  # written before the pop: run too
                except channel.connection_errors:
                    waiting = False
                    connection.disconnect()
                    raise
                if item is None:
                    raise queue_module.Empty()
                fetch.popped = item  # the un-acked record removes it (see record)
                channel.connection._deliver(json_loads(bytes_to_str(item)), fetch.queue)
                if fetch.popped is not None:  # taken without an ack: no record was written
                    fetch.handed.append(item)  # its copy goes with the next pop
                return True
            finally:
                fetch.popped = None
                if not waiting:
                    fetch.removing = []  # read, or the connection is gone (recover removes)
                    channel._in_poll = None
                    fetch.sent_at = None  # read, or failed: a lost connection reconnects
                    flush = getattr(channel, "_flush_brpop_reauth", None)
                    if flush is not None:
                        flush()

        qos = channel.qos
        append = qos.append

        def append_noting_failures(message: Any, delivery_tag: Any) -> None:
            if fetch.popped is not None:
                fetch.record(channel, message, delivery_tag)
                return
            try:
                append(message, delivery_tag)
            except BaseException:
                fetch.maybe_unacked.append(delivery_tag)
                raise

        def ack(delivery_tag: Any) -> None:
            fetch.forget(channel, delivery_tag)
            VirtualQoS.ack(qos, delivery_tag)  # kombu's in-process half of ack

        channel._brpop_start = brpop_start
        channel._brpop_read = brpop_read
        channel.handlers["BRPOP"] = brpop_read
        qos.append = append_noting_failures
        qos.ack = ack
        if not kombu_checks_brpop_health(channel):
            cycle = channel.connection.cycle
            after_empty_poll = cycle.maybe_restore_messages

            def check_then_restore() -> Any:
                fetch.check_silence(channel)
                return after_empty_poll()

            cycle.maybe_restore_messages = check_then_restore

    def record(self, channel: Any, message: Any, delivery_tag: str) -> None:
        """kombu's un-acked record of ``message``, the in-flight copy removed, in one round trip.

        kombu's ``QoS.append`` writes the record (``ZADD`` and ``HSET`` in a
        ``MULTI``), then the ``LREM`` of the popped item took a round trip of
        its own. Here one script does all three (``_RECORD``): atomic, the
        message is in the record or in the in-flight list, never both, never
        neither. A script whose reply was lost may have run: :meth:`recover`
        then puts the record back in the queue if it exists.
        """
        item, prefix = self.popped, getattr(channel, "global_keyprefix", "") or ""
        qos, info = channel.qos, message.delivery_info
        try:
            with channel.conn_or_acquire() as client:
                if self._record is None:
                    self._record = client.register_script(_RECORD)
                # One script, not kombu's MULTI: 1 command, not 5 (bench.redis_trips), and
                # ~150 Python calls a message less (bench.profiling "cast, tavrida: service").
                # kombu's prefixed client prefixes the first key of an EVALSHA itself.
                self._record(keys=[qos.unacked_index_key, prefix + qos.unacked_key,
                                   prefix + self.inflight],
                             args=[time.time(), delivery_tag,
                                   dumps([message._raw, info["exchange"], info["routing_key"]]),
                                   item], client=client)
        except BaseException:
            self.maybe_recorded.append(delivery_tag)
            raise
        self.popped = None
        VirtualQoS.append(qos, message, delivery_tag)  # kombu's in-process half of append

    def forget(self, channel: Any, delivery_tag: Any) -> None:
        """Delete the un-acked record of an acked message (kombu's ``QoS.ack``, as a script).

        One script, not kombu's ``MULTI``: ~250 Python calls a message less
        (bench.profiling "cast, tavrida: service"); as atomic. While consuming with
        no pop waiting, it goes out ahead of the next pop with no reply: no round trip
        (bench.redis_trips "cast, tavrida: service"; :attr:`forgetting`).
        """
        prefix = getattr(channel, "global_keyprefix", "") or ""
        qos = channel.qos
        connection = getattr(channel.client, "connection", None)
        if (self.skips_replies and self.sent_at is None and connection is not None
                and self.queue in channel.active_queues):
            try:
                connection.send_packed_command(connection.pack_commands([
                    ("CLIENT", "REPLY", "SKIP"),
                    ("EVAL", _FORGET, 2, prefix + qos.unacked_index_key,
                     prefix + qos.unacked_key, delivery_tag)]))
            except channel.connection_errors as exc:
                # redis-py dropped it; kombu's poll would reopen it unnoticed: the next pop
                # reports the loss (un-acked messages go back). The script runs below.
                self.lost = exc
            else:
                self.forgetting.append(delivery_tag)
                return
        self._forget_now(channel, delivery_tag)

    def _forget_now(self, channel: Any, delivery_tag: Any) -> None:
        """:meth:`forget`'s script, waiting for its reply on a connection of the pool."""
        prefix = getattr(channel, "global_keyprefix", "") or ""
        qos = channel.qos
        with channel.conn_or_acquire() as client:
            if self._forget is None:
                self._forget = client.register_script(_FORGET)
            self._forget(keys=[qos.unacked_index_key, prefix + qos.unacked_key],
                         args=[delivery_tag], client=client)

    def check_silence(self, channel: Any) -> bool:
        """Drop the pop's connection once its reply is overdue; True when it did.

        Redis answers a pop within ``brpop_timeout``; no reply
        ``health_check_interval`` seconds after that (0: never checked, as in
        kombu) means a half-open connection. kombu 5.7+ does this itself
        (``maybe_check_brpop_health``); :meth:`install` runs this on older kombu.
        """
        connection = channel._in_poll
        timeout = getattr(channel, "brpop_timeout", _BRPOP_TIMEOUT)
        grace = getattr(channel, "health_check_interval", _HEALTH_CHECK_INTERVAL)
        if not connection or self.sent_at is None or not timeout or not grace:
            return False
        waited = time.monotonic() - self.sent_at
        sock = getattr(connection, "_sock", None)
        if waited < timeout + grace or sock is None or _readable(sock):
            return False
        LOG.warning("Redis sent no reply to a pop from %s for %.0f s; dropping the connection",
                    self.queue, waited)
        connection.disconnect()
        return True

    def recover(self, channel: Any) -> int:
        """Put what an earlier connection left in flight back in the queue; how many.

        Raises the connection error when Redis cannot be reached (the caller
        reconnects and this runs again).
        """
        prefix = getattr(channel, "global_keyprefix", "") or ""
        self.sent_at = None
        self.lost = None  # a new connection
        self.removing = []  # their LREMs were lost with the pop's connection: again below
        for tag in list(self.forgetting):  # maybe lost with the pop's connection: again
            self._forget_now(channel, tag)
            self.forgetting.remove(tag)
        for tag in list(self.maybe_unacked):
            channel.qos._remove_from_indices(tag).execute()
            self.maybe_unacked.remove(tag)
        for tag in list(self.maybe_recorded):
            channel.qos.restore_by_tag(tag)  # nothing when the transaction did not run
            self.maybe_recorded.remove(tag)
        moved = 0
        with channel.conn_or_acquire() as client:
            for item in list(self.handed):
                client.execute_command("LREM", prefix + self.inflight, 1, item)
                self.handed.remove(item)
            # RPOPLPUSH: the oldest first, to the back of the queue (as kombu restores).
            while moved < _MAX_RECOVERED and client.execute_command(
                    "RPOPLPUSH", prefix + self.inflight, prefix + self.queue) is not None:
                moved += 1
        if moved:
            LOG.info("put %d message(s) left in flight back in %s", moved, self.queue)
        return moved

"""Delay queues on Redis: a sorted set per queue, moved back by the consumers' fetch.

kombu's Redis transport has neither message TTLs nor dead-lettering, so a
:class:`~tavrida.transports.base.DelayQueue` is kept in two keys named
after its target queue (``global_keyprefix`` first, as kombu's own keys):

* ``<queue>.tavrida-delays``: a set of the declared delays, in milliseconds
  (written by ``declare``; it says which ``<queue>.retry.<ms>`` names are
  delay queues);
* ``<queue>.tavrida-delayed``: a sorted set of held messages (kombu's stored
  payloads), scored by the time they are due, in milliseconds of the Redis
  server's clock (``TIME``: every host agrees).

A publish to ``<queue>.retry.<ms>`` through the default exchange reaches
kombu's ``Channel._put`` (private; wrapped here by :func:`delayed_puts`),
which adds the payload to the sorted set instead of the list, in one Lua
script; on Redis such names are reserved for delay queues, and one whose
delay was not declared raises :class:`~.virtual.NoRoute` (the publish is
``Unroutable``) rather than land in a list nobody reads. Each consumer of
``<queue>`` moves what is due to the end of the queue's list before it pops
(:meth:`Releaser.release_due`, called by :class:`~.redis_fetch.RedisFetch`,
at most every :data:`RELEASE_INTERVAL` seconds; every :data:`IDLE_INTERVAL`
for a queue with no delays, such as a client's reply queue), also
atomically in a Lua script: a message is in the set or in the list, never in
both or neither. Held messages
live in Redis, so they outlive the service; they move once any consumer of
the queue runs again. The wait is thus the delay plus up to the consumer's
pop timeout (``brpop_timeout``, 1 s by default).
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any, Dict, Optional, Tuple

from kombu.utils.json import dumps

from tavrida.transports.kombu.compat.virtual import NoRoute

LOG = logging.getLogger(__name__)

#: Shortest time between two moves of due messages by one consumer.
RELEASE_INTERVAL = 0.25
#: Time between two looks at a queue with no delays declared (a client's reply queue).
IDLE_INTERVAL = 5.0
#: Most messages moved at once (the rest on the next pop).
RELEASE_BATCH = 100

_DELAY_NAME = re.compile(r"^(?P<target>.+)\.retry\.(?P<ms>[0-9]+)$")

_NOW_MS = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

#: KEYS: the delays set, the held set. ARGV: delay (ms), payload. 1 if held, 0 if undeclared.
_HOLD = _NOW_MS + """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[1]), ARGV[2])
return 1
"""

#: KEYS: the held set, the queue's list, the delays set. ARGV: most to move.
#: How many moved; -1 when the queue has no delays (nothing can be held for it).
_RELEASE = """
if redis.call('EXISTS', KEYS[3]) == 0 then return -1 end
""" + _NOW_MS + """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, item in ipairs(due) do
  redis.call('LPUSH', KEYS[2], item)
  redis.call('ZREM', KEYS[1], item)
end
return #due
"""


def delays_key(queue: str) -> str:
    """The set of ``queue``'s declared delays (without the global key prefix)."""
    return f"{queue}.tavrida-delays"


def held_key(queue: str) -> str:
    """The sorted set of messages held for ``queue`` (without the global key prefix)."""
    return f"{queue}.tavrida-delayed"


def parse(name: str) -> Optional[Tuple[str, int]]:
    """``(target, delay_ms)`` of a delay queue's name, None for other names."""
    match = _DELAY_NAME.match(name)
    return (match.group("target"), int(match.group("ms"))) if match else None


def _prefix(channel: Any) -> str:
    return getattr(channel, "global_keyprefix", "") or ""


def declare(channel: Any, target: str, delay_ms: int) -> None:
    """Record that ``<target>.retry.<delay_ms>`` is a delay queue (idempotent)."""
    with channel.conn_or_acquire() as client:
        client.execute_command("SADD", _prefix(channel) + delays_key(target), delay_ms)


def delete(channel: Any, queue: str) -> None:
    """Delete ``queue``'s delays and the messages held for it."""
    prefix = _prefix(channel)
    with channel.conn_or_acquire() as client:
        client.execute_command("DEL", prefix + delays_key(queue), prefix + held_key(queue))


def delayed_puts(channel: Any) -> None:
    """Make a Redis ``channel`` hold what is stored to a delay queue (see the module)."""
    put = channel._put

    def store(queue: str, message: Dict[str, Any], **kwargs: Any) -> Any:
        parsed = parse(queue)
        if parsed is None:
            return put(queue, message, **kwargs)
        target, delay_ms = parsed
        prefix = _prefix(channel)
        with channel.conn_or_acquire() as client:
            held = client.execute_command(
                "EVAL", _HOLD, 2, prefix + delays_key(target), prefix + held_key(target),
                delay_ms, dumps(message))
        if not held:
            LOG.warning("no delay of %d ms is declared for queue %s", delay_ms, target)
            raise NoRoute()
        return None

    channel._put = store


class Releaser:
    """Moves the due messages of one queue back to its list, at most every RELEASE_INTERVAL."""

    def __init__(self, queue: str) -> None:
        self.queue = queue
        self._next = 0.0

    def release_due(self, channel: Any) -> int:
        """Move what is due to the end of the queue (atomically); how many moved.

        Errors other than lost connections are logged, not raised: the pop
        goes on, and the move is tried again later.
        """
        now = time.monotonic()
        if now < self._next:
            return 0
        self._next = now + RELEASE_INTERVAL
        prefix = _prefix(channel)
        try:
            with channel.conn_or_acquire() as client:
                moved = int(client.execute_command(
                    "EVAL", _RELEASE, 3, prefix + held_key(self.queue), prefix + self.queue,
                    prefix + delays_key(self.queue), RELEASE_BATCH))
        except channel.connection_errors:
            raise
        except Exception as exc:  # noqa: BLE001 - a script error must not stop consuming
            LOG.error("could not move due retries back to %s: %s", self.queue, exc)
            return 0
        if moved < 0:
            self._next = now + IDLE_INTERVAL  # no delays (yet): look again later
            return 0
        if moved:
            LOG.debug("moved %d due message(s) back to %s", moved, self.queue)
            self._next = now  # there may be more
        return moved

"""Publishing to a topic exchange on Redis in one round trip: route and push in one script.

kombu's virtual transports route in the publishing process: ``SMEMBERS``
of the exchange's ``_kombu.binding.<exchange>`` set (``Channel.get_table``),
matched here (:class:`~.virtual.RabbitTopicExchange`), then an ``LPUSH`` per
queue (``Channel._put``): two round trips per message. A Lua script does
the same in Redis (:data:`ROUTE`): it reads the set, matches each binding's
key as RabbitMQ does (the rules of :func:`tavrida.transports.topic.topic_matches`),
and pushes the message to every queue matched; it answers 0 when none
matched (nothing was stored: :class:`~.virtual.NoRoute`, ``Unroutable``).
Routing and storing are atomic: a binding deleted meanwhile is either seen
whole or not at all. The publish path is kombu's otherwise: its
``basic_publish`` builds the payload, :meth:`RedisTopicExchange.deliver`
replaces ``TopicExchange.deliver`` (kombu's ``_lookup`` then ``_put``).

kombu's path is kept where ``_put`` does more than an ``LPUSH``: a queue
matched whose name is a delay queue's (``<queue>.retry.<ms>``,
:mod:`.redis_delays`; the script then pushes nothing and names the queues),
a channel with queues declared with ``x-expires``, a message with a
priority, kombu's batch publish (``kwargs``).

It relies on kombu's Redis ``Channel.keyprefix_queue``, ``Channel.sep`` (the
members are ``<routing key><sep><pattern><sep><queue>``), ``global_keyprefix``,
``_expires`` (private), ``_get_message_priority`` (private) and on
``TopicExchange.deliver(message, exchange, routing_key, **kwargs)`` being
how ``basic_publish`` stores a message sent to a topic exchange, checked by
``tests/unit/transports/test_kombu_compat.py``. The queues' list keys are
built in the script (Redis Cluster is not supported by kombu anyway).
"""

from __future__ import annotations

from typing import Any, List

from kombu.utils.json import dumps

from tavrida.transports.kombu.compat.virtual import NoRoute, RabbitTopicExchange

#: KEYS: the exchange's binding set. ARGV: routing key, kombu's separator, the global key
#: prefix, the payload. The number of queues pushed to; 0: none matched (nothing stored);
#: a list of the queues matched when one is a delay queue (nothing stored).
ROUTE = r"""
local function split(text)
  local words, start = {}, 1
  if text == '' then return words end
  while true do
    local dot = string.find(text, '.', start, true)
    if not dot then
      words[#words + 1] = string.sub(text, start)
      return words
    end
    words[#words + 1] = string.sub(text, start, dot - 1)
    start = dot + 1
  end
end

local function matches(pattern, key)
  local words = {}
  for _, word in ipairs(split(pattern)) do
    if not (word == '#' and words[#words] == '#') then words[#words + 1] = word end
  end
  if #words == 1 and words[1] == '#' then return true end
  local wild = false
  for _, word in ipairs(words) do
    if word == '#' or word == '*' then wild = true end
  end
  if not wild then return pattern == key end
  if key == '' then return false end
  local parts = split(key)
  local previous = {[0] = true}
  for j = 1, #parts do previous[j] = false end
  for _, word in ipairs(words) do
    local current = {}
    current[0] = (word == '#') and previous[0]
    for j = 1, #parts do
      if word == '#' then
        current[j] = previous[j] or current[j - 1]
      elseif word == '*' then
        current[j] = previous[j - 1]
      else
        current[j] = previous[j - 1] and parts[j] == word
      end
    end
    previous = current
  end
  return previous[#parts]
end

local key, sep, prefix, payload = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local queues, seen, held = {}, {}, false
for _, member in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local first = string.find(member, sep, 1, true)
  local second = first and string.find(member, sep, first + #sep, true)
  if second then
    local queue = string.sub(member, second + #sep)
    if not seen[queue] and matches(string.sub(member, 1, first - 1), key) then
      seen[queue] = true
      queues[#queues + 1] = queue
      if string.find(queue, '%.retry%.%d+$') then held = true end
    end
  end
end
if held then return queues end
for _, queue in ipairs(queues) do
  redis.call('LPUSH', prefix .. queue, payload)
end
return #queues
"""


class RedisTopicExchange(RabbitTopicExchange):
    """A topic exchange of a Redis channel whose publishes route in Redis (see the module)."""

    def __init__(self, channel: Any) -> None:
        super().__init__(channel)  # type: ignore[no-untyped-call]
        self._script: Any = None

    def deliver(self, message: Any, exchange: str, routing_key: str, **kwargs: Any) -> None:
        channel = self.channel
        if (kwargs or getattr(channel, "_expires", None)  # kombu 5.7+: x-expires queues
                or channel._get_message_priority(message, reverse=False)):
            self._deliver_by_kombu(message, exchange, routing_key, **kwargs)
            return
        prefix = getattr(channel, "global_keyprefix", "") or ""
        with channel.conn_or_acquire() as client:
            if self._script is None:
                self._script = client.register_script(ROUTE)
            # kombu's prefixed client prefixes the first key of an EVALSHA itself.
            result = self._script(keys=[channel.keyprefix_queue % (exchange,)],
                                  args=[routing_key, channel.sep, prefix, dumps(message)],
                                  client=client)
        if isinstance(result, list):  # a delay queue among them: each through _put
            for queue in result:
                channel._put(queue.decode() if isinstance(queue, bytes) else queue, message)
        elif not result:
            raise NoRoute()

    def _deliver_by_kombu(self, message: Any, exchange: str, routing_key: str,
                          **kwargs: Any) -> None:
        """kombu's ``TopicExchange.deliver``, a queue-less message raising :class:`NoRoute`."""
        queues: List[str] = list(self.channel._lookup(exchange, routing_key))
        if not queues:
            raise NoRoute()
        for queue in queues:
            self.channel._put(queue, message, **kwargs)


def redis_routing(channel: Any) -> None:
    """Make the Redis ``channel``'s topic exchanges route in Redis (see the module)."""
    channel.exchange_types["topic"] = RedisTopicExchange(channel)

"""In-process transport: a small RabbitMQ look-alike living in this process.

Every :class:`MemoryTransport` whose config names the same virtual host
(``memory://name``; ``memory://`` is ``"/"``) talks to one shared
:class:`MemoryBroker`, so servers and clients in one process -- in threads
or in a single thread -- exchange messages without a real broker.

The broker behaves like RabbitMQ where tavrida can tell the difference:

* exchanges are topic exchanges (``*`` is exactly one word, ``#`` zero or
  more); a message goes once to every queue with a matching binding. A
  message no queue takes is counted in :attr:`MemoryBroker.unroutable`;
  publishing raises :class:`~tavrida.exceptions.Unroutable` for it unless
  the envelope is not ``mandatory`` (a notification nobody subscribes to),
  which is dropped with a DEBUG line;
* the default exchange ``""`` routes to the queue named by the routing key
  (unroutable when there is no such queue, as on RabbitMQ);
  publishing to an exchange that was never declared raises
  :class:`~tavrida.exceptions.PublishFailed`;
* queues are FIFO; competing consumers get messages round-robin, each up to
  its prefetch count; rejected-with-requeue and un-acked messages of a closed
  transport go back to the head of their queue marked ``redelivered``;
* delay queues (:attr:`Topology.delays <tavrida.transports.base.Topology.delays>`)
  hold each message for their delay on the broker's own clock, then move it
  to their target queue (see :mod:`.delays`; a test moves the clock
  with :meth:`MemoryBroker.advance`).

The package keeps the transport and its broker apart, as RabbitMQ is from
its clients: :mod:`.broker` (:class:`MemoryBroker`: exchanges, queues,
routing, dispatch), :mod:`.records` (the records it keeps and the
:class:`MemoryDelivery` it hands out), :mod:`.inbox` (:class:`~.inbox.Inbox`:
the one object of a transport the broker touches), :mod:`.transport`
(:class:`MemoryTransport`), :mod:`.delays` and :mod:`.store` (central
discovery's records on ``memory://``).

Only bytes, header tables and properties cross the broker, always copied,
so a consumer never shares mutable state with its publisher. There are no
background threads: the broker hands messages to consumers when they are
published (as RabbitMQ pushes them), and a transport runs its callbacks only
inside :meth:`MemoryTransport.drain`. A single thread therefore sees a
deterministic order of events.

With :attr:`MemoryBroker.inline_calls` set (opt-in), blocking calls take
an in-thread path: while a caller waits for its answer,
its drain runs the callbacks of a server whose own thread is blocked waiting
for work, in the caller's thread, so a call to a server thread of the same
process costs no thread hand-off (the server's callbacks still run one at a
time and in order, and its drain returns only after them). A handler run that
way delays its caller even past the call's timeout, which is why it is
off by default (a call to a stuck handler must still time out).
"""

from tavrida.transports.memory.broker import DEFAULT_EXCHANGE, MemoryBroker
from tavrida.transports.memory.records import MemoryDelivery, MemoryTransportError
from tavrida.transports.memory.transport import MemoryTransport
from tavrida.transports.topic import topic_matches

__all__ = [
    "DEFAULT_EXCHANGE",
    "MemoryBroker",
    "MemoryDelivery",
    "MemoryTransport",
    "MemoryTransportError",
    "topic_matches",
]

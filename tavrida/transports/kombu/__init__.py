"""The kombu transport's facade: RabbitMQ (``amqp://``), Redis (``redis://``), kombu's ``memory://``.

:class:`KombuTransport` is a facade over objects that each own their state,
one module per concept. Shared by both connections: :mod:`.context`
(``KombuContext``: config, the thread's deadline, the lifecycle, the
:mod:`.connector`, the :mod:`.reconnect` policy and its one retry loop),
with :mod:`.lifecycle` (closed, interrupted), :mod:`.deadlines`,
:mod:`.nodes`, :mod:`.polling` and :mod:`.severing` (deadlines of cancel and
close). The consuming side is :mod:`.consuming_connection`
(``ConsumingConnection``: its lock, draining, cancel, close), composed of
:mod:`.link` (the kombu connection: connecting, reconnecting, dropping),
:mod:`.consumers` (``ConsumerSet``: consumers and the deliveries they
received, :mod:`.deliveries`), :mod:`.settlement` (acks and rejects,
coalesced), :mod:`.declarer` (declaring, deleting, declaring again; what
was declared: :mod:`.declarations`) and :mod:`.heartbeat`. The publishing
side is :mod:`.publishing_connection` (``PublishingConnection``: its lock,
connection, confirm channel and publishes), with :mod:`.confirm_tracker`
(publishes awaiting their confirm; acks, nacks, returns, channel errors),
:mod:`.confirm_reader` (waiters reading confirms for each other; ``drain``
for handles with callbacks), :mod:`.kombu_confirmation` (the pending
handle), :mod:`.outgoing_message` and :mod:`.batch`. :mod:`.transport` puts
them together and closes. Every private name of kombu, py-amqp and redis-py, and code copied
from them, is in the :mod:`.compat` subpackage, listed in its ``REGISTRY``.

:class:`KombuTransport` moves opaque bytes plus a header table; it knows
nothing about tavrida messages. It holds two long-lived connections:

* the *consuming* connection is driven by :meth:`drain` (one thread at a
  time; callbacks run on that thread). It carries the declarations, one
  channel per :meth:`consume` call (so each consumer has its own prefetch
  window) and a control channel. It is only touched under its lock
  (``ConsumingConnection``'s); :meth:`drain` releases that lock while
  callbacks run, so a callback may ack, declare or send heartbeats at will.
* the *publishing* connection (:class:`.publishing_connection.PublishingConnection`)
  has one channel in publisher-confirm mode, shared by every thread under
  its own lock. It has no heartbeats (nothing reads it between publishes,
  as with celery's producer connections); a dead socket shows up as an
  error on the next publish, which reconnects and retries. It asks the
  consuming side only through a narrow seam (:class:`.publishing_connection.Consuming`).

:meth:`KombuTransport.publish` returns a
:class:`~tavrida.transports.confirmation.Confirmation` and never raises for
the message. With confirms over plain TCP it returns once the message is
written: the handle is pending, and whoever waits on it reads the confirms
(one waiter at a time, for everyone, the reply queue's socket too); handles
with callbacks nobody waits for are read and settled by :meth:`drain`,
oldest first, their acks coalesced. A batch is several handles
(``confirm_all``): all written, then confirmed together. Elsewhere (Redis,
kombu's memory, confirms off, ``amqps://``) the publish is done in full
and the handle is settled at once. A publish lost with its connection or
channel before its confirm is written again (at least once) unless its
handle was cancelled.

With ``heartbeat_interval`` set (RabbitMQ), :meth:`drain` pumps heartbeats
and a small thread sends them whenever nobody has drained for half an
interval -- a handler running on the draining thread -- so a long handler
does not lose its connection (and its message with it) without calling
:meth:`heartbeat`. A client with a reply queue checks, before publishing,
that the consuming connection was not closed meanwhile (and reconnects,
declaring the queue again), so no answer is routed to a queue that is gone.

Acks and rejects from other threads are queued and performed by whoever
holds the consuming connection next: the caller itself when the connection
is idle, otherwise :meth:`drain` after its current read. While deliveries
are out with handlers, those reads last 1 ms, doubling up to
:attr:`KombuTransport.poll_interval`, so a quick worker's ack goes out
within a few milliseconds and a slow one costs few wake-ups.
Concurrent reads and writes on one socket are never allowed, which keeps
``amqps://`` (whose SSL objects are not thread safe) correct.

Unroutable messages: every AMQP publish is ``mandatory``; RabbitMQ returns
one no queue takes before confirming it, and
:meth:`.confirm_tracker.ConfirmTracker.on_return` matches the return to its
publish, so the confirm does not count
(``Unroutable``; a non-mandatory envelope -- a notification -- is only logged at
DEBUG). A consumer RabbitMQ cancels (its queue was deleted) makes the
consuming connection declare the topology again and consume again.

Deadlines: every blocking operation (connecting, reconnecting, declaring,
publishing, draining) honours the calling thread's :meth:`KombuTransport.deadline`
and publishes also ``publish_timeout``; reconnect sleeps end at once on
:meth:`KombuTransport.close` or :meth:`KombuTransport.interrupt`. Giving up
raises :class:`~tavrida.exceptions.ConnectionFailed`. An interrupt ends
reconnect attempts only: a publish on a healthy connection (a stopping
server's answer) still goes out. :meth:`KombuTransport.cancel` and
:meth:`KombuTransport.close` wait for the broker at most
:attr:`KombuTransport.stop_step_timeout` (or the thread's deadline), then shut
the connection's sockets down (:mod:`.severing`): a stalled connection cannot
hold a stop.

Bytes are never interpreted: bodies are not decoded, decompressed or
unpickled, whatever the content type or headers say. py-amqp decodes AMQP
short strings (content_type, correlation_id, reply_to, routing key, ...)
strictly, so one invalid UTF-8 property breaks its frame parser and poisons
the queue; :func:`.compat.pyamqp.tolerant_frame_handler` decodes such
strings with ``surrogateescape`` instead (``value.encode("utf-8", "surrogateescape")``
gives the original bytes back). Header *values* that are not UTF-8 arrive
as ``bytes`` (py-amqp's own fallback); such header *keys* arrive as text
with surrogates and go out again as their bytes. Header timestamps no
``datetime`` can hold and tables nested past 32 levels, which make py-amqp
raise, are read by ``_lenient_table`` (a number, raw bytes). A message
whose headers do not fit in one frame (or cannot be written) fails alone
with ``PublishFailed(unencodable=[...])``, before RabbitMQ would close the
connection over it.

Differences on kombu's virtual transports (Redis and ``memory://``):

* no publisher confirms: a publish returns once Redis has the message. A
  message no binding matches raises ``Unroutable`` when it is ``mandatory``
  (see :func:`.virtual.strict_lookup`); on the default exchange it goes
  to the list named by its routing key, as kombu does.
* nobody tells a consumer that its queue or bindings were deleted: the
  consuming connection compares them with kombu's tables every
  :attr:`KombuTransport.topology_check_interval` and declares them again.
* topic routing runs in the publishing process; kombu's ``#`` needs at
  least one word, so tavrida installs RabbitMQ's rule (``a.#`` matches ``a``).
* a requeued or lost un-acked message goes back to the queue it came from
  only (kombu would route it through the exchange again, duplicating it to
  every other bound queue), and each queue's copy has its own delivery tag
  (kombu shares one, so on Redis acking one copy could lose another).
* reply queues are deleted by :meth:`KombuTransport.close`; a process that
  dies without closing leaves them behind (Redis has no exclusive queues).
* on Redis a message is popped with ``BRPOPLPUSH`` into the consumer's
  in-flight list (not kombu's ``BRPOP``, which lost the message when the
  connection died as Redis sent it); see :class:`.redis_fetch.RedisFetch`. A
  pop whose reply is overdue (a half-open connection) is dropped and sent
  again, what it moved put back first. Un-acked
  messages of a lost connection go back to their queue on reconnect; those
  of a crashed consumer come back after kombu's ``visibility_timeout`` (one
  hour by default); ``memory://`` drops them on close (kombu does not
  restore them there).
* deleting a queue on Redis deletes its bindings whoever declared them (kombu
  deletes only its own connection's); see :func:`.virtual.delete_broker_bindings`.
  Deleting an exchange deletes its own bindings only (kombu's deletes every
  binding of an empty queue bound to it), and what is gone is fine; a
  deleted queue on ``memory://`` takes no more messages (kombu's goes on
  routing to it, nobody reading); see :func:`.virtual.exact_deletes`.
* on ``memory://`` each queue stores its own copy of a message (kombu stores
  the publisher's objects, so a header changed after publishing, or by one
  consumer, changed everywhere); see :func:`.virtual.private_payloads`.
* heartbeats are an AMQP feature; :meth:`KombuTransport.heartbeat` is a no-op.
"""

from tavrida.transports.kombu.deliveries import KombuDelivery
from tavrida.transports.kombu.transport import KombuTransport

__all__ = ["KombuDelivery", "KombuTransport"]

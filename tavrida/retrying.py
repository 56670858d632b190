"""Retrying on a server: publish a copy to the broker's delay queue, then ack.

How often and how late is :mod:`tavrida.retries` (the policy); this is what
:class:`tavrida.server.Server` does with it when a handler raises a
:class:`~tavrida.exceptions.NackableException`. The copy goes through the
default exchange to the delay queue of its backoff
(:class:`~tavrida.transports.base.DelayQueue`, which gives it back to the
server's queue once the delay is over), counting the attempts in
:data:`~tavrida.retries.ATTEMPTS_HEADER`; the original is acked only once the
copy is confirmed, so a crash in between duplicates the message, never loses
it, and nothing waits in the server. On a transport that cannot hold delays
the server holds the delivery for the delay (:class:`~tavrida.retries.RetryTimer`)
and then publishes the copy straight to its queue. After the last attempt a
call is answered with an Error and anything else is dead-lettered (see
:mod:`tavrida.answering`).
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import Tuple

from tavrida import exceptions, messages
from tavrida.answering import Answering
from tavrida.retries import ATTEMPTS_HEADER, RetryPolicy, RetryTimer, attempts_of
from tavrida.service import ServiceController
from tavrida.transports.base import (
    DEAD_LETTER_EXCHANGE_HEADER,
    DEAD_LETTER_ROUTING_KEY_HEADER,
    DelayQueue,
    Delivery,
    OutgoingEnvelope,
    Topology,
)

# Logged as the server: its records stay where operators look for them.
LOG = logging.getLogger("tavrida.server")

#: Headers RabbitMQ adds when a delay queue dead-letters a message back; not copied
#: into the next retry (they are the broker's record of that hop, not the message's).
_BROKER_DEATH_HEADERS = ("x-death", "x-first-death-exchange", "x-first-death-queue",
                         "x-first-death-reason", "x-last-death-exchange",
                         "x-last-death-queue", "x-last-death-reason")


class Retrying(Answering):
    """A server's retries of a message whose handler asked for one."""

    queue_name: str
    retry_policy: RetryPolicy
    _retry_timer: RetryTimer
    _stopping: threading.Event
    _started: bool
    _inflight: int
    _inflight_lock: threading.Lock
    queue_type: str

    def retry_delays(self) -> Tuple[DelayQueue, ...]:
        """The delay queues of this server's retries, one per backoff step."""
        return tuple(DelayQueue(self.queue_name, delay_ms)
                     for delay_ms in self.retry_policy.delays_ms())

    def _say_where_retries_wait(self, topology: Topology) -> None:
        """Log (at start) when the transport cannot hold delays and retries wait here."""
        assert self.transport is not None
        if topology.delays and not self.transport.holds_delays:
            LOG.info("%r cannot hold retry delays: retries of queue %s wait in this server, "
                     "each holding a prefetch slot", self.transport, self.queue_name)

    def _retry(self, delivery: Delivery, controller: ServiceController, method_name: str,
               message: messages.Message, exc: Exception) -> None:
        """Run the message again after its backoff, or give up after the last attempt."""
        attempt = attempts_of(delivery.headers) + 1
        policy = self.retry_policy
        why = f"handler {method_name} asked for a retry: {messages.get_fqcn(exc)}: {exc}"
        if not policy.exhausted(attempt):
            delay_ms = policy.delay_ms(attempt)
            LOG.warning("%s on %r (attempt %d of %s); running it again in %.3g s", why, message,
                        attempt, policy.max_attempts or "unlimited", delay_ms / 1000)
            self.hooks.retrying()
            assert self.transport is not None
            if delay_ms and not self.transport.holds_delays:
                if not self._retry_timer.schedule(delay_ms / 1000, functools.partial(
                        self._retry_later, delivery, attempt)):
                    LOG.info("server closing: the broker will deliver the message again")
            else:
                self._republish(delivery, attempt, delay_ms)
            return
        self._notify(message, exc, by_handler=True)
        if isinstance(message, messages.IncomingRequestCall):
            LOG.warning("%s on %r; giving up after %d attempts, answering with an Error", why,
                        message, attempt)
            self._send_answer(controller, self._error_answer(controller, message, exc),
                              delivery)
        else:
            self._dead_letter(delivery, f"{why} (gave up after {attempt} attempts)",
                              {ATTEMPTS_HEADER: attempt})
        delivery.ack()

    def _retry_later(self, delivery: Delivery, attempt: int) -> None:
        # On the retry timer's thread, once the delay is over.
        if self._stopping.is_set() or not self._started:
            return  # never acked: the broker gives the original back
        with self._inflight_lock:
            self._inflight += 1
        try:
            self._republish(delivery, attempt)
        finally:
            with self._inflight_lock:
                self._inflight -= 1
            if self.transport is not None:
                self.transport.stop()  # let the loop perform the ack now

    def _republish(self, delivery: Delivery, attempt: int, delay_ms: int = 0) -> None:
        """Publish a copy counting ``attempt`` runs; once confirmed, ack the original.

        The copy goes to the delay queue of ``delay_ms`` (to this queue when
        0). A crash between the two leaves both (a duplicate, never a loss); a
        publish that fails gives the original back to the queue.
        """
        headers = dict(delivery.headers or {})
        if ATTEMPTS_HEADER not in headers:
            # The copy goes through the default exchange: keep where it was first sent.
            headers[DEAD_LETTER_EXCHANGE_HEADER] = delivery.exchange or ""
            headers[DEAD_LETTER_ROUTING_KEY_HEADER] = delivery.routing_key or ""
        for name in _BROKER_DEATH_HEADERS:
            headers.pop(name, None)
        headers[ATTEMPTS_HEADER] = attempt
        properties = delivery.properties or {}
        queue = DelayQueue(self.queue_name, delay_ms).name if delay_ms else self.queue_name
        envelope = OutgoingEnvelope("", queue, bytes(delivery.body or b""), headers,
                                    content_type=properties.get("content_type"),
                                    content_encoding=properties.get("content_encoding"),
                                    persistent=properties.get("delivery_mode") != 1)
        assert self.transport is not None
        try:
            try:
                self.transport.publish(envelope)
            except exceptions.Unroutable:
                if not delay_ms:
                    raise
                # Its delay queue was deleted under us: declare the delays again, once.
                LOG.warning("delay queue %s is missing; declaring it again", queue)
                self.transport.declare(Topology.build(delays=self.retry_delays(),
                                                      queue_type=self.queue_type))
                self.transport.publish(envelope)
        except Exception as exc:  # noqa: BLE001 - any failure: the broker keeps the original
            if isinstance(exc, exceptions.PublishFailed) and exc.unencodable:
                self._dead_letter(delivery, f"cannot publish its retry: {exc}",
                                  {ATTEMPTS_HEADER: attempt})
                delivery.ack()
                return
            LOG.error("could not publish attempt %d of a message from %s (%s); giving it back "
                      "to the queue", attempt + 1, delivery.queue, exc)
            delivery.reject(requeue=True)
            return
        delivery.ack()

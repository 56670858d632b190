"""Retries: how often, and how late, a message whose handler asked for one runs again.

A handler asks for a retry by raising a
:class:`~tavrida.exceptions.NackableException`. The server then publishes a
copy of the message, with :data:`ATTEMPTS_HEADER` counting the attempts made,
to the delay queue of that attempt's backoff
(:class:`~tavrida.transports.base.DelayQueue`, one per value of
:meth:`RetryPolicy.delays_ms`), waits for the broker's confirm and only then
acks the original: a crash in between duplicates the message, never loses
it. The broker holds the copy for the delay and gives it back to the queue;
nothing waits in the server. After :attr:`RetryPolicy.max_attempts` runs it
gives up: the message is dead-lettered (a call is answered with an Error
instead).

A transport that cannot hold delays (kombu's ``kombu+memory://``) falls back
to :class:`RetryTimer`: the server holds the delivery un-acked for the delay
(a prefetch slot), then publishes the copy to the queue itself; see
:doc:`/delivery`.
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
import itertools
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, List, Mapping, Optional, Tuple

from tavrida import defaults, exceptions, messages
from tavrida import headers as header_names
from tavrida.transports.base import (
    DEAD_LETTER_EXCHANGE_HEADER,
    DEAD_LETTER_ROUTING_KEY_HEADER,
    DelayQueue,
    Delivery,
    OutgoingEnvelope,
    Topology,
    Transport,
)

if TYPE_CHECKING:
    from tavrida.answers import Answers
    from tavrida.dead_letters import DeadLetters
    from tavrida.observability.hooks import HookList
    from tavrida.service import ServiceController

LOG = logging.getLogger(__name__)
#: What a server does with a retry is logged as the server: where operators look.
SERVER_LOG = logging.getLogger("tavrida.server")

#: Header of a retried copy: how many times the handler already ran on this message.
ATTEMPTS_HEADER = header_names.ATTEMPTS

DEFAULT_MAX_ATTEMPTS = defaults.MAX_ATTEMPTS
DEFAULT_RETRY_BACKOFF = defaults.RETRY_BACKOFF
DEFAULT_RETRY_BACKOFF_MAX = defaults.RETRY_BACKOFF_MAX
_MAX_COUNT = 2 ** 31 - 1


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """At most ``max_attempts`` runs (None: no limit), ``backoff`` doubling up to ``backoff_max``.

    The n-th retry waits ``min(backoff * 2 ** (n - 1), backoff_max)`` seconds:
    with the defaults 0.5, 1, 2 and 4 s, then the message is dead-lettered
    after its 5th run (7.5 s in all). ``backoff=0`` retries at once.
    """

    max_attempts: Optional[int] = DEFAULT_MAX_ATTEMPTS
    backoff: float = DEFAULT_RETRY_BACKOFF
    backoff_max: float = DEFAULT_RETRY_BACKOFF_MAX

    def __post_init__(self) -> None:
        from tavrida import exceptions

        if self.max_attempts is not None and (
                not isinstance(self.max_attempts, int) or self.max_attempts < 1):
            raise exceptions.IncorrectAMQPConfig(
                reason=f"max_attempts must be a whole number >= 1 or None, "
                       f"got {self.max_attempts!r}")
        if not self.backoff >= 0 or not self.backoff_max >= 0:
            raise exceptions.IncorrectAMQPConfig(
                reason="retry_backoff and retry_backoff_max must be >= 0 seconds")

    def exhausted(self, attempt: int) -> bool:
        """True when run number ``attempt`` (from 1) was the last one allowed."""
        return self.max_attempts is not None and attempt >= self.max_attempts

    def delay(self, attempt: int) -> float:
        """Seconds to wait after run number ``attempt`` (from 1) before the next."""
        if self.backoff <= 0:
            return 0.0
        # Capped before it can overflow: 2 ** 64 half-seconds is never reached.
        return min(self.backoff * 2.0 ** min(attempt - 1, 64), self.backoff_max)

    def delay_ms(self, attempt: int) -> int:
        """:meth:`delay` in whole milliseconds (0: at once), as delay queues hold it."""
        return _milliseconds(self.delay(attempt))

    def delays_ms(self) -> Tuple[int, ...]:
        """Every distinct :meth:`delay_ms` a message can wait, shortest first.

        A bounded set (the doubling stops at ``backoff_max``, or at the last
        attempt): one delay queue each. Empty when retries run at once.
        """
        found: List[int] = []
        attempt = 1
        while not self.exhausted(attempt) and attempt <= 66:
            delay = self.delay_ms(attempt)
            if delay and delay not in found:
                found.append(delay)
            if self.delay(attempt) >= self.backoff_max:
                break  # capped: every later attempt waits as long
            attempt += 1
        return tuple(sorted(found))


def _milliseconds(seconds: float) -> int:
    """``seconds`` rounded to milliseconds; at least 1 ms when not zero."""
    if seconds <= 0:
        return 0
    return max(1, min(int(round(seconds * 1000)), _MAX_COUNT))


def attempts_of(headers: Mapping[str, Any]) -> int:
    """Runs already made on a message, from its :data:`ATTEMPTS_HEADER` (0 if none or bad)."""
    raw = headers.get(ATTEMPTS_HEADER)
    if raw is None:
        return 0
    if isinstance(raw, (bytes, bytearray)):
        raw = bytes(raw).decode("ascii", "replace")
    try:
        value = int(raw)
    except (TypeError, ValueError, OverflowError):
        return 0
    return min(max(value, 0), _MAX_COUNT)  # a hostile value stays a header int can hold


class RetryTimer:
    """Runs callbacks after their delay, on one daemon thread started on first use.

    :meth:`cancel` forgets what has not run yet: the server never waits for
    a pending retry to stop; its un-acked original goes back to the queue.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._heap: List[Tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._thread: Optional[threading.Thread] = None
        self._closed = False
        self._running = 0

    def __len__(self) -> int:
        """Callbacks waiting for their time or running."""
        with self._cond:
            return len(self._heap) + self._running

    def schedule(self, delay: float, callback: Callable[[], None]) -> bool:
        """Run ``callback`` on the timer thread in ``delay`` seconds; False once closed."""
        with self._cond:
            if self._closed:
                return False
            heapq.heappush(self._heap, (time.monotonic() + delay, next(self._seq), callback))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify()
        return True

    def cancel(self) -> int:
        """Forget every callback not yet run; returns how many."""
        with self._cond:
            count = len(self._heap)
            self._heap.clear()
            return count

    def close(self) -> int:
        """Cancel what is pending and end the thread (does not wait for it)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        return self.cancel()

    def reopen(self) -> None:
        """Accept callbacks again after :meth:`close` (a server started again)."""
        with self._cond:
            if self._closed:
                self._closed = False
                self._thread = None

    def _run(self) -> None:
        me = threading.current_thread()
        while True:
            with self._cond:
                while True:
                    if self._closed or self._thread is not me:
                        return
                    if self._heap:
                        wait = self._heap[0][0] - time.monotonic()
                        if wait <= 0:
                            _, _, callback = heapq.heappop(self._heap)
                            self._running += 1
                            break
                    else:
                        wait = None
                    self._cond.wait(wait)
            try:
                callback()
            except Exception:  # noqa: BLE001 - a retry must not end the timer thread
                LOG.exception("retry callback failed on %s", self._name)
            finally:
                with self._cond:
                    self._running -= 1


#: Headers RabbitMQ adds when a delay queue dead-letters a message back; not copied
#: into the next retry (they are the broker's record of that hop, not the message's).
_BROKER_DEATH_HEADERS = ("x-death", "x-first-death-exchange", "x-first-death-queue",
                         "x-first-death-reason", "x-last-death-exchange",
                         "x-last-death-queue", "x-last-death-reason")


class Retries:
    """One server's retries: publish a copy to the delay queue of its backoff, then ack.

    The copy goes through the default exchange to the delay queue
    (:class:`~tavrida.transports.base.DelayQueue`, which gives it back to
    ``queue_name`` once the delay is over), counting the attempts in
    :data:`ATTEMPTS_HEADER`; the original is acked only once the copy is
    confirmed. On a transport that cannot hold delays the delivery waits in
    ``timer``, and ``in_hand(work)`` runs the publish later as a message the
    server holds (not at all once it stops). After the last attempt a call is
    answered with an Error (``answers``), anything else dead-lettered.
    """

    def __init__(self, transport: Transport, queue_name: str, queue_type: str,
                 policy: RetryPolicy, timer: RetryTimer, answers: Answers,
                 dead_letters: DeadLetters, hooks: HookList,
                 in_hand: Callable[[Callable[[], None]], None]) -> None:
        self.transport = transport
        self.queue_name = queue_name
        self.queue_type = queue_type
        self.policy = policy
        self.timer = timer
        self._answers = answers
        self._dead_letters = dead_letters
        self._hooks = hooks
        self._in_hand = in_hand

    def delays(self) -> Tuple[DelayQueue, ...]:
        """The delay queues of this server's retries, one per backoff step."""
        return tuple(DelayQueue(self.queue_name, delay_ms)
                     for delay_ms in self.policy.delays_ms())

    def say_where_retries_wait(self, topology: Topology) -> None:
        """Log (at start) when the transport cannot hold delays and retries wait here."""
        if topology.delays and not self.transport.holds_delays:
            SERVER_LOG.info("%r cannot hold retry delays: retries of queue %s wait in this "
                            "server, each holding a prefetch slot", self.transport,
                            self.queue_name)

    def retry(self, delivery: Delivery, controller: ServiceController, method_name: str,
               message: messages.Message, exc: Exception) -> None:
        """Run the message again after its backoff, or give up after the last attempt."""
        attempt = attempts_of(delivery.headers) + 1
        policy = self.policy
        said = messages.error_payload(exc)["message"]  # even when str(exc) raises
        why = f"handler {method_name} asked for a retry: {messages.get_fqcn(exc)}: {said}"
        if not policy.exhausted(attempt):
            delay_ms = policy.delay_ms(attempt)
            SERVER_LOG.warning("%s on %r (attempt %d of %s); running it again in %.3g s", why,
                               message, attempt, policy.max_attempts or "unlimited",
                               delay_ms / 1000)
            self._hooks.retrying()
            if delay_ms and not self.transport.holds_delays:
                if not self.timer.schedule(delay_ms / 1000, functools.partial(
                        self._retry_later, delivery, attempt)):
                    SERVER_LOG.info("server closing: the broker will deliver the message again")
            else:
                self._republish(delivery, attempt, delay_ms)
            return
        self._hooks.failed(message, exc, True)
        if isinstance(message, messages.IncomingRequestCall):
            SERVER_LOG.warning("%s on %r; giving up after %d attempts, answering with an Error",
                               why, message, attempt)
            self._answers.send(controller, self._answers.error_answer(controller, message, exc),
                               delivery)
        else:
            self._dead_letters.send(delivery, f"{why} (gave up after {attempt} attempts)",
                              {ATTEMPTS_HEADER: attempt})
        delivery.ack()

    def _retry_later(self, delivery: Delivery, attempt: int) -> None:
        # On the retry timer's thread, once the delay is over: as a message in hand.
        self._in_hand(functools.partial(self._republish, delivery, attempt))

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
        try:
            try:
                self.transport.publish(envelope).wait()
            except exceptions.Unroutable:
                if not delay_ms:
                    raise
                # Its delay queue was deleted under us: declare the delays again, once.
                SERVER_LOG.warning("delay queue %s is missing; declaring it again", queue)
                self.transport.declare(Topology.build(delays=self.delays(),
                                                      queue_type=self.queue_type))
                self.transport.publish(envelope).wait()
        except Exception as exc:  # noqa: BLE001 - any failure: the broker keeps the original
            if isinstance(exc, exceptions.PublishFailed) and exc.unencodable:
                # The copy cannot go as it is: a call's caller gets an Error, else a dead letter.
                if not self._answers.answer_failure(delivery, exc, "its retry cannot be sent"):
                    self._dead_letters.send(delivery, f"cannot publish its retry: {exc}",
                                            {ATTEMPTS_HEADER: attempt})
                delivery.ack()
                return
            SERVER_LOG.error("could not publish attempt %d of a message from %s (%s); giving it "
                             "back to the queue", attempt + 1, delivery.queue, exc)
            delivery.reject(requeue=True)
            return
        delivery.ack()

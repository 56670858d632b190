"""The server: consumes one queue and runs the handlers of its services.

What happens to each message (the delivery guarantees):

* it is acked only after its handler returned and any answer was published (and, with
  publisher confirms, confirmed; at-least-once: a crash before that means a redelivery);
  inside :meth:`Server.run` a call's ack may come after the next messages were taken, once
  its answer's confirm arrived (pipelined answers: see
  :meth:`~tavrida.transports.base.Transport.publish`);
* a call always gets exactly one answer: the handler's Response, an empty Response when the
  handler returned None, or an Error when it raised, a middleware refused it, or its answer
  cannot be sent (not JSON, too large: see :mod:`tavrida.answers`);
* a message that cannot be handled (bad headers or body, no such service or handler, a
  failing cast or notification handler) is logged and, unless an Error answer went back to a
  caller, copied to the dead-letter queue ``<queue>.dead`` with the reason, then acked;
* a handler raising a :class:`~tavrida.exceptions.NackableException` has its message run
  again after a backoff delay the broker holds (delay queues ``<queue>.retry.<ms>``), up
  to ``max_attempts`` runs (:mod:`tavrida.retries`), then dead-lettered (a call gets an Error);
* a request whose caller gave up (a blocking call's
  :data:`~tavrida.messages.EXPIRES_AT_HEADER` is past) is logged and acked, never run;
* a stop (:meth:`Server.stop`, SIGTERM, SIGINT) takes no new message and finishes, answers
  and acks those in hand within ``stop_timeout``; what is still in hand then, or at a second
  signal, goes back to the queue unacked, each named in the log, and ``async def`` handlers
  still running are cancelled (see :mod:`tavrida.shutdown`).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, List, Optional, Tuple, Union

from tavrida import config as config_mod
from tavrida import declarations, exceptions, wire
from tavrida.answers import Answers, check_reply_exchanges
from tavrida.answers import ErrorHook as ErrorHook
from tavrida.async_handlers import AsyncHandlers
from tavrida.dead_letters import DEAD_LETTER_DROPPED_HEADER as DEAD_LETTER_DROPPED_HEADER
from tavrida.dead_letters import DeadLetters
from tavrida.handling import Handling
from tavrida.observability.hooks import HookList, ServerHook
from tavrida.retries import Retries, RetryPolicy, RetryTimer
from tavrida.router import Router, check_service_classes
from tavrida.sender import Sender
from tavrida.service import ServiceController
from tavrida.shutdown import Shutdown, StopNow
from tavrida.transports import create_transport
from tavrida.transports.base import (
    DelayQueue,
    Delivery,
    Topology,
    Transport,
    check_queue_type,
    dead_letter_queue_name,
)
from tavrida.workers import InFlight, Workers

LOG = logging.getLogger(__name__)


class Server:
    """Serves ``service_list`` on ``queue_name``, bound to ``exchange_name``.

    ``config`` is a :class:`~tavrida.config.ConnectionConfig` or a URL. ``workers`` > 0
    runs handlers in that many threads (acks still happen on the connection's thread);
    ``prefetch_count`` bounds the un-acked messages held (default: the config's). A
    handler raising a :class:`~tavrida.exceptions.NackableException` runs again after
    ``retry_backoff`` seconds, doubling up to ``retry_backoff_max``, at most
    ``max_attempts`` times in all (None: no limit); see :mod:`tavrida.retries`.
    :meth:`run` blocks until :meth:`stop` is called from another thread or SIGTERM/SIGINT
    arrives; the messages in hand are then finished within ``stop_timeout`` seconds (see
    :meth:`stop`). ``queue_type="quorum"`` declares the queue and its dead-letter queue as
    RabbitMQ quorum queues (new names only; see :class:`~tavrida.transports.base.Topology`),
    ``max_attempts`` being the broker's delivery limit too. ``reply_exchanges="known"``
    answers a call only on a reply exchange its services' discovery knows (see
    :meth:`~tavrida.answers.Answers.reply_refused`); ``"any"`` (the default) answers where
    it says.
    """

    #: In :meth:`run` (with workers if ``pipelined_workers``), take the next message while the
    #: broker confirms a call's answer; ack the call at the confirm (hooks see it finished
    #: then). False: each acked before :meth:`handle` returns. Also ``Server(pipelined_answers=)``.
    pipelined_answers = True
    pipelined_workers = False  # and with workers: the drain acks at the confirm (aio.Server)

    def __init__(self, config: Union[config_mod.ConnectionConfig, str], queue_name: str,
                 exchange_name: str, service_list: Iterable[type], *, workers: int = 0,
                 prefetch_count: Optional[int] = None,
                 max_body_size: int = wire.DEFAULT_MAX_BODY_SIZE,
                 transport: Optional[Transport] = None,
                 hooks: Iterable[ServerHook] = (),
                 max_attempts: Optional[int] = RetryPolicy.max_attempts,
                 retry_backoff: float = RetryPolicy.backoff,
                 retry_backoff_max: float = RetryPolicy.backoff_max,
                 queue_type: str = "classic", reply_exchanges: str = "any",
                 stop_timeout: float = config_mod.DEFAULT_STOP_TIMEOUT,
                 pipelined_answers: Optional[bool] = None) -> None:
        if not queue_name or not exchange_name:
            raise exceptions.IncorrectAMQPConfig(
                reason="Server needs a queue_name and an exchange_name")
        if workers < 0:
            raise exceptions.IncorrectAMQPConfig(reason="workers must be >= 0")
        if not stop_timeout >= 0:
            raise exceptions.IncorrectAMQPConfig(reason="stop_timeout must be >= 0 seconds")
        self.config = config_mod.as_config(config)
        self.queue_name = queue_name
        self.exchange_name = exchange_name
        self.service_classes = check_service_classes(service_list)
        self.workers = workers
        self.prefetch_count = (self.config.prefetch_count if prefetch_count is None
                               else prefetch_count)
        self.max_body_size = max_body_size
        self.retry_policy = RetryPolicy(max_attempts, retry_backoff, retry_backoff_max)
        self._retry_timer = RetryTimer(f"tavrida-retry-{queue_name}")
        if pipelined_answers is not None:
            self.pipelined_answers = pipelined_answers
        self.dead_letter_queue = dead_letter_queue_name(queue_name)
        self.queue_type = check_queue_type(queue_type)
        self.reply_exchanges = check_reply_exchanges(reply_exchanges)
        self.transport = transport
        self.controllers: List[ServiceController] = []
        self.router: Optional[Router] = None
        #: Access log, metrics, traces, health (see :mod:`tavrida.observability`).
        self.hooks = HookList(hooks, self)
        #: Grace period of a stop: seconds the messages in hand have to finish.
        self.stop_timeout = stop_timeout
        self._shutdown = Shutdown(queue_name, stop_timeout)
        self._stopping = self._shutdown.requested
        self._started = False
        self._workers: Optional[Workers[Delivery]] = None
        #: Messages held outside the loop's thread (in workers, due retries).
        self._inflight = InFlight()
        # Built at start, on the transport (see _collaborators).
        self._handling: Optional[Handling] = None
        self._async_handlers = AsyncHandlers(self.config)

    @classmethod
    def from_config(cls, path: str, url: Optional[str] = None) -> "Server":
        """A server built from a config file (see :mod:`tavrida.config_file`).

        Binds each configured service class to its discovery. ``url`` (or
        the ``TAVRIDA_URL`` environment variable) overrides the file's URL.
        Raises :class:`tavrida.config_file.ConfigError` naming the culprit.
        """
        from tavrida.config_file import ServiceConfig

        conf = ServiceConfig(path, url)
        conf.bind_discovery()
        return cls(conf.connection, conf.queue, conf.exchange, conf.service_classes,
                   workers=conf.workers, hooks=conf.hooks(),
                   max_attempts=conf.retry_policy.max_attempts,
                   retry_backoff=conf.retry_policy.backoff,
                   retry_backoff_max=conf.retry_policy.backoff_max,
                   queue_type=conf.queue_type, reply_exchanges=conf.reply_exchanges,
                   stop_timeout=conf.stop_timeout, pipelined_answers=conf.pipelined_answers)

    # -- topology ---------------------------------------------------------

    def topology(self) -> Topology:
        """Exchanges, queues and bindings this server declares at start."""
        return declarations.of_server(self.queue_name, self.exchange_name,
                                      self.service_classes, self.queue_type,
                                      self.retry_policy)

    # -- life cycle -------------------------------------------------------

    def start(self) -> None:
        """Connect, create the controllers, declare the topology and start consuming."""
        if self._started:
            return
        self._retry_timer.reopen()
        topology = self.topology()
        if self.transport is None:
            self.transport = create_transport(self.config)
        # The answers to its services' own calls come back on the server's exchange.
        self.controllers = [cls(Sender(self.transport, cls.get_discovery(), self.config.persistent,
                                       source=cls.service_name(),
                                       reply_exchange=self.exchange_name))
                            for cls in self.service_classes]
        self._async_handlers.adopt(self.controllers)
        self.router = Router(self.controllers)
        self._collaborators(self.transport, self.router)
        self.transport.declare(topology)
        assert self._handling is not None
        self._handling.retries.say_where_retries_wait(topology)
        if self.workers:
            self._workers = Workers(self.workers, f"tavrida-{self.queue_name}",
                                    self._handle_in_worker)
            on_message = self._submit
        else:
            on_message = self.handle
        self.transport.consume(self.queue_name, on_message, self.prefetch_count)
        self._started = True
        for cls in self.service_classes:  # central discovery registers them (others: no-op)
            cls.get_discovery().announce(cls.service_name(), self.exchange_name,
                                         queue=self.queue_name)
        LOG.info("server on queue %s started with services %s (%s)", self.queue_name,
                 ", ".join(c.service_name() for c in self.controllers), self.config.safe_url)
        self.hooks.started(self)

    def retry_delays(self) -> Tuple[DelayQueue, ...]:
        """The delay queues of this server's retries, one per backoff step."""
        return declarations.retry_delays(self.queue_name, self.retry_policy)

    def _collaborators(self, transport: Transport, router: Router) -> None:
        """The objects a server handles and settles messages with; each owns its state."""
        dead_letters = DeadLetters(transport, self.dead_letter_queue, self.hooks)
        answers = Answers(transport, router, self.controllers, dead_letters, self.hooks,
                          self.reply_exchanges, self.max_body_size)
        retries = Retries(transport, self.queue_name, self.queue_type, self.retry_policy,
                          self._retry_timer, answers, dead_letters, self.hooks, self._in_hand)
        self._handling = Handling(router, answers, dead_letters, retries, self.hooks,
                                  self.max_body_size, self.reply_exchanges)

    @property
    def dead_letters(self) -> DeadLetters:
        """Where this server copies what it cannot handle (after :meth:`start`)."""
        assert self._handling is not None, "the server has not started"
        return self._handling.dead_letters

    @property
    def handled(self) -> int:
        """Messages taken so far (handled, answered or dead-lettered)."""
        return self._handling.handled if self._handling is not None else 0

    def _awaiting(self) -> int:
        """Calls whose answer is out unconfirmed (pipelined): acked at its confirm."""
        return self._handling.awaiting if self._handling is not None else 0

    def _in_hand(self, work: Callable[[], None]) -> None:
        """Run ``work`` (a due retry, on the timer's thread) as a message in hand."""
        if self._stopping.is_set() or not self._started:
            return  # never acked: the broker gives the original back
        try:
            with self._inflight.held():
                work()
        finally:
            if self.transport is not None:
                self.transport.stop()  # let the loop perform the ack now

    def drain(self, timeout: float = 0.0) -> bool:
        """Handle what is waiting, waiting at most ``timeout`` seconds for it."""
        self.start()
        assert self.transport is not None
        return self.transport.drain(timeout)

    def run(self) -> None:
        """Serve until :meth:`stop` (or SIGTERM / SIGINT in the main thread).

        Raises :class:`~tavrida.exceptions.ConnectionFailed` when the broker cannot be
        reached (first connect, or reconnect attempts ran out). Stopping during an outage
        returns at once: the messages in hand cannot be acked, and the broker delivers
        them again.
        """
        shutdown = self._shutdown
        restore = shutdown.install_signal_handlers(self.stop)
        try:
            self.start()
            assert self.transport is not None
            assert self._handling is not None
            self._handling.awaiting = 0
            self._handling.pipelined = self.pipelined_answers and (
                self.pipelined_workers or not self.workers)
            if restore:
                shutdown.abortable(True)  # a second signal ends it at once (StopNow)
            if not self.workers and (restore or self._async_handlers.adopted):
                shutdown.watch(self._async_handlers.give_up)  # (past the grace period)
            try:
                while not self._stopping.is_set():
                    self.transport.drain(1.0)
                    if self.hooks:
                        self.hooks.tick(self)
                self._finish()
            except StopNow:
                shutdown.abortable(False)
                self._abandon(shutdown.why())
            finally:
                shutdown.finished()
        finally:
            if self._handling is not None:
                self._handling.pipelined = False
            shutdown.restore_signal_handlers(restore)
            self.close()

    def stop(self) -> None:
        """Ask :meth:`run` to stop: take no new message, finish and ack those in hand.

        The handlers running finish, their answers are published (and confirmed) and
        their requests acked, and so are the messages already taken for the workers,
        within ``stop_timeout`` seconds; what is still in hand then goes back to the
        queue unacked (the broker delivers it again), the log names it, and the
        ``async def`` handlers still running are cancelled. A second call (a second
        SIGTERM or SIGINT) gives back what is in hand at once. Also stops reconnecting:
        while the broker is unreachable, :meth:`run` returns within a fraction of a
        second (safe from a signal handler).
        """
        self._shutdown.request()
        if self.transport is not None:
            self.transport.interrupt()
            self.transport.stop()

    @property
    def pending_retries(self) -> int:
        """Messages this server holds un-acked, waiting for their retry's delay.

        Always 0 on a transport that holds delays (:attr:`~tavrida.transports.base.
        Transport.holds_delays`): the waiting copies are in the broker's delay queues.
        """
        return len(self._retry_timer)

    def close(self) -> None:
        """Close the connection; un-acked messages go back to the queue.

        Retries waiting in the broker's delay queues come back to the queue when due,
        whether a server runs or not. (A transport that cannot hold delays: their
        originals were never acked, so the broker delivers them again.) Bounded (see
        :attr:`KombuTransport.stop_step_timeout
        <tavrida.transports.kombu.KombuTransport.stop_step_timeout>`) even on a stalled
        connection.
        """
        self._retry_timer.close()
        workers, self._workers = self._workers, None
        if workers is not None:
            # After an abandoned stop the handlers still running are not waited for.
            workers.close(0 if self._shutdown.immediate.is_set() else None)
        if self.transport is not None:
            self.transport.close()
        self._async_handlers.close()  # cancels those a stop gave up on (given back, above)
        if self._started:
            for cls in self.service_classes:
                cls.get_discovery().withdraw(cls.service_name())
            self.hooks.closed(self)
        self._started = False

    def _finish(self) -> None:
        # Stop deliveries first, then keep the loop turning so that acks
        # queued by workers are performed before the connection closes.
        assert self.transport is not None
        shutdown = self._shutdown
        LOG.info("server on queue %s stopping: no new messages, %d in flight (at most "
                 "%.3g s)", self.queue_name, self._inflight.count + self._awaiting(),
                 shutdown.remaining())
        self.hooks.stopping(self, self._inflight.count + self._awaiting())
        with self.transport.deadline(max(shutdown.remaining(), 1.0)):
            self.transport.cancel()  # (a healthy broker answers within milliseconds)
        # Answers not yet confirmed are settled within the grace period.
        while self._inflight.count or self._awaiting():
            left = shutdown.remaining()
            if left <= 0 or shutdown.immediate.is_set():
                shutdown.abortable(False)  # ended here: no StopNow on top of it
                self._abandon(shutdown.why())
                return
            self.transport.drain(min(0.05, left))
        LOG.info("server on queue %s stopped", self.queue_name)

    def _abandon(self, why: str) -> None:
        """End the stop now: name what is in hand; closing gives it back to the broker."""
        self._shutdown.immediate.set()
        waiting = self._workers.take_waiting() if self._workers is not None else []
        self._inflight.add(-len(waiting))
        self._shutdown.report(why, [delivery.headers for delivery in waiting],
                              self._awaiting())

    # -- handling ---------------------------------------------------------

    def _submit(self, delivery: Delivery) -> None:
        self._inflight.add(1)
        assert self._workers is not None
        self._workers.submit(delivery)

    def _handle_in_worker(self, delivery: Delivery) -> None:
        try:
            self.handle(delivery)
        except StopNow:
            pass  # its async handler was cancelled by the stop: given back, named in the log
        finally:
            self._inflight.add(-1)
            if self.transport is not None:
                self.transport.stop()

    def handle(self, delivery: Delivery) -> None:
        """Handle one delivery to the end: answer, dead-letter or requeue, then ack.

        (With pipelined answers, inside :meth:`run`, a call's ack waits for
        its answer's confirm, read later by the transport's drain.)

        Never raises: when the broker fails us half-way (a dead letter or an
        answer cannot be published) the message is requeued, not lost.
        """
        shutdown = self._shutdown
        key = id(delivery)
        shutdown.running(key, delivery.headers)  # named in the log if a stop gives it back
        assert self._handling is not None
        self.hooks.observe(self, delivery, self._handling.handle)
        shutdown.done(key)  # (not when StopNow ends it: then it is named, given back)

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

"""The server: consumes one queue and runs the handlers of its services.

What happens to each message (the delivery guarantees):

* it is acked only after its handler returned and any answer was
  published (at-least-once: a crash before that means a redelivery);
* a call always gets exactly one answer: the handler's Response, an empty
  Response when the handler returned None, or an Error when it raised;
* a message that cannot be handled (bad headers or body, no such service
  or handler, a failing cast or notification handler) is logged and,
  unless an Error answer went back to a caller, copied to the dead-letter
  queue ``<queue>.dead`` with the reason, then acked;
* a handler raising a :class:`~tavrida.exceptions.NackableException` has
  its message run again after a backoff delay, up to ``max_attempts`` runs
  (see :mod:`tavrida.retries`), then dead-lettered (a call gets an Error);
* a request whose caller gave up (a blocking call's
  :data:`~tavrida.messages.EXPIRES_AT_HEADER` is past) is logged and acked,
  never run.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import signal
import threading
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Type, Union

from tavrida import config as config_mod
from tavrida import exceptions, messages, wire
from tavrida.observability.hooks import HookList, ServerHook
from tavrida.proxies import RPCProxy
from tavrida.retries import ATTEMPTS_HEADER, RetryPolicy, RetryTimer, attempts_of
from tavrida.router import Router, check_service_classes
from tavrida.sender import Sender
from tavrida.service import ServiceController
from tavrida.transports import create_transport
from tavrida.transports.base import (
    DEAD_LETTER_EXCHANGE_HEADER,
    DEAD_LETTER_QUEUE_HEADER,
    DEAD_LETTER_REASON_HEADER,
    DEAD_LETTER_ROUTING_KEY_HEADER,
    Binding,
    Delivery,
    OutgoingEnvelope,
    Topology,
    Transport,
    check_queue_type,
    dead_letter_queue_name,
)

LOG = logging.getLogger(__name__)

#: Header of a dead letter whose original headers could not be copied: why.
DEAD_LETTER_DROPPED_HEADER = "x-tavrida-dropped-headers"

#: Called with (message or None, exception, raised_by_handler) on every failure.
ErrorHook = Callable[[Optional[messages.Message], BaseException, bool], None]


class Server:
    """Serves ``service_list`` on ``queue_name``, bound to ``exchange_name``.

    ``config`` is a :class:`~tavrida.config.ConnectionConfig` or a URL.
    ``workers`` > 0 runs handlers in that many threads (acks still happen on
    the connection's thread); ``prefetch_count`` bounds the un-acked
    messages held (default: the config's). A handler raising a
    :class:`~tavrida.exceptions.NackableException` runs again after
    ``retry_backoff`` seconds, doubling up to ``retry_backoff_max``, at most
    ``max_attempts`` times in all (None: no limit); see :mod:`tavrida.retries`.
    :meth:`run` blocks until :meth:`stop` is called from another thread or
    SIGTERM/SIGINT arrives. ``queue_type="quorum"`` declares the queue and
    its dead-letter queue as RabbitMQ quorum queues (new names only; see
    :class:`~tavrida.transports.base.Topology`), ``max_attempts`` being
    the broker's delivery limit too.
    """

    def __init__(self, config: Union[config_mod.ConnectionConfig, str], queue_name: str,
                 exchange_name: str, service_list: Iterable[type], *, workers: int = 0,
                 prefetch_count: Optional[int] = None,
                 max_body_size: int = wire.DEFAULT_MAX_BODY_SIZE,
                 transport: Optional[Transport] = None,
                 hooks: Iterable[ServerHook] = (),
                 max_attempts: Optional[int] = RetryPolicy.max_attempts,
                 retry_backoff: float = RetryPolicy.backoff,
                 retry_backoff_max: float = RetryPolicy.backoff_max,
                 queue_type: str = "classic") -> None:
        if not queue_name or not exchange_name:
            raise exceptions.IncorrectAMQPConfig(
                reason="Server needs a queue_name and an exchange_name")
        if workers < 0:
            raise exceptions.IncorrectAMQPConfig(reason="workers must be >= 0")
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
        self.dead_letter_queue = dead_letter_queue_name(queue_name)
        self.queue_type = check_queue_type(queue_type)
        self.transport = transport
        self.controllers: List[ServiceController] = []
        self.router: Optional[Router] = None
        #: Access log, metrics, traces, health (see :mod:`tavrida.observability`).
        self.hooks = HookList(hooks)
        #: Called on every handler or message failure (the test helpers use it).
        self.error_hooks: List[ErrorHook] = [self.hooks.failed]
        self._stopping = threading.Event()
        self._started = False
        self._executor: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._inflight = 0
        self._inflight_lock = threading.Lock()
        #: Messages taken so far (handled, answered or dead-lettered).
        self.handled = 0

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
                   queue_type=conf.queue_type)

    # -- topology ---------------------------------------------------------

    def topology(self) -> Topology:
        """Exchanges, queues and bindings this server declares at start."""
        exchanges = [self.exchange_name]
        bindings = []
        for cls in self.service_classes:
            discovery = cls.get_discovery()
            for group in discovery.get_all_exchanges().values():
                exchanges.extend(group.values())
            dispatcher = cls.get_dispatcher()
            name = cls.service_name()
            if any(True for _ in dispatcher.get_request_entry_services()) or \
                    dispatcher.handles_answers():
                bindings.append(Binding(self.queue_name, self.exchange_name, f"{name}.#"))
            for ep in dispatcher.get_publishers():
                exchange = discovery.get_remote_publisher(ep.service)
                exchanges.append(exchange)
                bindings.append(Binding(self.queue_name, exchange,
                                        f"{ep.service}.{ep.method}.#"))
        return Topology.build(exchanges, [self.queue_name, self.dead_letter_queue], bindings,
                              self.queue_type, self.retry_policy.max_attempts)

    # -- life cycle -------------------------------------------------------

    def start(self) -> None:
        """Connect, create the controllers, declare the topology and start consuming."""
        if self._started:
            return
        self._retry_timer.reopen()
        topology = self.topology()
        if self.transport is None:
            self.transport = create_transport(self.config)
        self.controllers = [cls(self._sender(cls)) for cls in self.service_classes]
        self.router = Router(self.controllers)
        self.transport.declare(topology)
        if self.workers:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                self.workers, thread_name_prefix=f"tavrida-{self.queue_name}")
            on_message = self._submit
        else:
            on_message = self.handle
        self.transport.consume(self.queue_name, on_message, self.prefetch_count)
        self._started = True
        LOG.info("server on queue %s started with services %s (%s)", self.queue_name,
                 ", ".join(c.service_name() for c in self.controllers), self.config.safe_url)
        self.hooks.started(self)

    def _sender(self, cls: Type[ServiceController]) -> Sender:
        sender = Sender(self.transport, cls.get_discovery(), self.config.persistent,
                        source=cls.service_name())
        sender.reply_exchange = self.exchange_name  # answers to its calls come back here
        return sender

    def drain(self, timeout: float = 0.0) -> bool:
        """Handle what is waiting, waiting at most ``timeout`` seconds for it."""
        self.start()
        assert self.transport is not None
        return self.transport.drain(timeout)

    def run(self) -> None:
        """Serve until :meth:`stop` (or SIGTERM / SIGINT in the main thread).

        Raises :class:`~tavrida.exceptions.ConnectionFailed` when the broker
        cannot be reached (first connect, or reconnect attempts ran out).
        Stopping during an outage returns at once: the messages in hand
        cannot be acked, and the broker delivers them again.
        """
        restore = self._install_signal_handlers()
        try:
            self.start()
            assert self.transport is not None
            while not self._stopping.is_set():
                self.transport.drain(1.0)
                self.hooks.tick(self)
            self._finish()
        finally:
            for signum, handler in restore:
                signal.signal(signum, handler)
            self.close()

    def stop(self) -> None:
        """Ask :meth:`run` to stop: take no new message, finish and ack those in hand.

        Also stops reconnecting: while the broker is unreachable, :meth:`run`
        returns within a fraction of a second (safe from a signal handler).
        """
        self._stopping.set()
        if self.transport is not None:
            self.transport.interrupt()

    @property
    def pending_retries(self) -> int:
        """Messages held un-acked, waiting for the delay before their next attempt."""
        return len(self._retry_timer)

    def close(self) -> None:
        """Close the connection; un-acked messages go back to the queue.

        Retries still waiting for their delay are not waited for: their
        originals were never acked, so the broker delivers them again.
        """
        self._retry_timer.close()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self.transport is not None:
            self.transport.close()
        if self._started:
            self.hooks.closed(self)
        self._started = False

    def _finish(self) -> None:
        # Stop deliveries first, then keep the loop turning so that acks
        # queued by workers are performed before the connection closes.
        assert self.transport is not None
        LOG.info("server on queue %s stopping: no new messages, %d in flight", self.queue_name,
                 self._inflight)
        self.hooks.stopping(self, self._inflight)
        self.transport.cancel()
        while self._inflight:
            self.transport.drain(0.05)
        LOG.info("server on queue %s stopped", self.queue_name)

    def _install_signal_handlers(self) -> List[Tuple[int, Any]]:
        if threading.current_thread() is not threading.main_thread():
            return []
        restore: List[Tuple[int, Any]] = []
        for signum in (signal.SIGTERM, signal.SIGINT):
            restore.append((signum, signal.getsignal(signum)))
            signal.signal(signum, lambda *_: self.stop())
        return restore

    # -- handling ---------------------------------------------------------

    def _submit(self, delivery: Delivery) -> None:
        with self._inflight_lock:
            self._inflight += 1
        assert self._executor is not None
        self._executor.submit(self._handle_in_worker, delivery)

    def _handle_in_worker(self, delivery: Delivery) -> None:
        try:
            self.handle(delivery)
        finally:
            with self._inflight_lock:
                self._inflight -= 1
            if self.transport is not None:
                self.transport.stop()

    def handle(self, delivery: Delivery) -> None:
        """Handle one delivery to the end: answer, dead-letter or requeue, then ack.

        Never raises: when the broker fails us half-way (a dead letter or an
        answer cannot be published) the message is requeued, not lost.
        """
        if self.hooks:
            self.hooks.observe(self, delivery, self._handle_safely)
        else:
            self._handle_safely(delivery)

    def _handle_safely(self, delivery: Delivery) -> None:
        try:
            self._handle(delivery)
        except Exception as exc:  # noqa: BLE001
            LOG.exception("could not finish a message from %s", delivery.queue)
            self._recover(delivery, exc)

    def _recover(self, delivery: Delivery, exc: Exception) -> None:
        # First failure: requeue (the broker or a publish may be back next
        # time). A redelivered message that fails again goes to the
        # dead-letter queue, so it cannot spin for ever.
        try:
            if delivery.redelivered:
                self._dead_letter(delivery, f"failed twice: {messages.get_fqcn(exc)}: {exc}")
                delivery.ack()
            else:
                delivery.reject(requeue=True)
        except Exception:  # noqa: BLE001
            LOG.exception("could not settle the message; the broker will redeliver it")

    def _handle(self, delivery: Delivery) -> None:
        self.handled += 1
        try:
            message = wire.decode(delivery.body, delivery.headers, delivery.properties,
                                  self.max_body_size)
        except exceptions.IncorrectMessage as exc:
            LOG.error("bad message on queue %s (routing key %r): %s", delivery.queue,
                      delivery.routing_key, exc)
            self._notify(None, exc)
            if exc.headers is None or not self._answer_bad(exc.headers, exc):
                self._dead_letter(delivery, str(exc))
            delivery.ack()
            return
        if messages.EXPIRES_AT_HEADER in message.headers and \
                message.message_type == messages.REQUEST:
            late = messages.late_by(message.headers)
            if late is not None:
                # Its caller already got CallTimeout: running it now would do work
                # nobody waits for. Acked, not dead-lettered: nothing is lost.
                LOG.warning("dropping a request to %s (correlation id %s) unrun: its caller "
                            "gave up %.3f s ago", message.destination, message.correlation_id,
                            late)
                delivery.ack()
                return
        message.update_context(message.payload)
        assert self.router is not None
        try:
            targets = self.router.route(message)
        except exceptions.TavridaError as exc:
            LOG.error("cannot dispatch %r: %s", message, exc)
            self._fail(delivery, message, exc)
            delivery.ack()
            return
        for controller, handler in targets:
            proxy = RPCProxy(controller.postprocessor, self._proxy_source(message, controller,
                                                                          handler.method_name),
                             message.context, message.correlation_id,
                             messages.user_headers(message.headers))
            try:
                answer = controller.process(handler, message, proxy)
            except Exception as exc:  # noqa: BLE001 - any handler failure is reported
                if isinstance(exc, exceptions.NackableException):
                    self._retry(delivery, controller, handler.method_name, message, exc)
                    return
                self._notify(message, exc, by_handler=True)
                if isinstance(message, messages.IncomingRequestCall):
                    LOG.warning("handler %s raised %s: %s on %r; answering with an Error",
                                handler.method_name, messages.get_fqcn(exc), exc, message,
                                exc_info=LOG.isEnabledFor(logging.DEBUG))
                    answer = self._error_answer(controller, message, exc)
                else:
                    LOG.exception("handler %s failed on %r", handler.method_name, message)
                    self._dead_letter(delivery, f"handler {handler.method_name} raised "
                                                f"{messages.get_fqcn(exc)}: {exc}")
                    continue
            if answer is not None and isinstance(message, messages.IncomingRequestCall):
                self._send_answer(controller, answer, delivery)
            controller.message_done(message, answer)
        delivery.ack()

    def _retry(self, delivery: Delivery, controller: ServiceController, method_name: str,
               message: messages.Message, exc: Exception) -> None:
        """Run the message again after its backoff, or give up after the last attempt."""
        attempt = attempts_of(delivery.headers) + 1
        policy = self.retry_policy
        why = f"handler {method_name} asked for a retry: {messages.get_fqcn(exc)}: {exc}"
        if not policy.exhausted(attempt):
            delay = policy.delay(attempt)
            LOG.warning("%s on %r (attempt %d of %s); running it again in %.3g s", why, message,
                        attempt, policy.max_attempts or "unlimited", delay)
            self.hooks.retrying()
            if delay > 0:
                if not self._retry_timer.schedule(delay, functools.partial(
                        self._retry_later, delivery, attempt)):
                    LOG.info("server closing: the broker will deliver the message again")
            else:
                self._republish(delivery, attempt)
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

    def _republish(self, delivery: Delivery, attempt: int) -> None:
        """Publish a copy counting ``attempt`` runs to this queue; once confirmed, ack the original.

        A crash between the two leaves both (a duplicate, never a loss); a
        publish that fails gives the original back to the queue.
        """
        headers = dict(delivery.headers or {})
        if ATTEMPTS_HEADER not in headers:
            # The copy goes through the default exchange: keep where it was first sent.
            headers[DEAD_LETTER_EXCHANGE_HEADER] = delivery.exchange or ""
            headers[DEAD_LETTER_ROUTING_KEY_HEADER] = delivery.routing_key or ""
        headers[ATTEMPTS_HEADER] = attempt
        properties = delivery.properties or {}
        envelope = OutgoingEnvelope("", self.queue_name, bytes(delivery.body or b""), headers,
                                    content_type=properties.get("content_type"),
                                    content_encoding=properties.get("content_encoding"),
                                    persistent=properties.get("delivery_mode") != 1)
        assert self.transport is not None
        try:
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

    @staticmethod
    def _proxy_source(message: messages.Message, controller: ServiceController,
                      method_name: str) -> str:
        if message.message_type == messages.REQUEST:
            return str(message.destination)
        return f"{controller.service_name()}.{method_name}"

    @staticmethod
    def _error_answer(controller: ServiceController, message: messages.Message,
                      exc: BaseException) -> messages.Error:
        """The Error answering ``message``, through the outgoing middlewares.

        A middleware that fails on it makes the answer an Error of that failure.
        """
        error = messages.Error.create_by_request(message, exc)
        try:
            return controller.run_outgoing(error)
        except Exception as middleware_exc:  # noqa: BLE001
            LOG.exception("outgoing middleware failed on %r", error)
            return messages.Error.create_by_request(message, middleware_exc)

    def _send_answer(self, controller: ServiceController, answer: messages.Message,
                     delivery: Delivery) -> None:
        """Publish an answer; one that cannot be routed dead-letters its request.

        An answer no queue takes (:class:`~tavrida.exceptions.Unroutable`:
        the caller's reply queue is gone) dead-letters its request too. Broker
        trouble propagates, so :meth:`handle` requeues the request.
        """
        try:
            controller.postprocessor.send(answer)
        except (exceptions.UnableToDiscover, exceptions.IncorrectOutgoingMessage,
                exceptions.PublishFailed) as exc:
            if (isinstance(exc, exceptions.PublishFailed) and not exc.unencodable
                    and not isinstance(exc, exceptions.Unroutable)
                    and not self._routed_by_call(controller, answer)):
                raise  # the broker's trouble, not the answer's: requeue the request
            LOG.error("cannot send %r: %s", answer, exc)
            self._notify(answer, exc)
            self._dead_letter(delivery, f"answer not sent: {exc}")

    @staticmethod
    def _routed_by_call(controller: ServiceController, answer: messages.Message) -> bool:
        """True when an answer goes to the exchange its call named (no discovery entry).

        Such an exchange is the caller's to declare; when the broker refuses it
        (it does not exist) a retry would only run the handler again.
        """
        if not answer.reply_exchange:
            return False
        try:
            controller.postprocessor.discovery.get_remote(answer.destination.service)
        except exceptions.TavridaError:
            return True
        return False

    def _fail(self, delivery: Delivery, message: messages.Message,
              exc: exceptions.TavridaError) -> None:
        """Answer a call that cannot be dispatched with an Error, or dead-letter it."""
        self._notify(message, exc)
        if isinstance(message, messages.IncomingRequestCall):
            controller = self._controller_for(message)
            if controller is not None:
                self._send_answer(controller, messages.Error.create_by_request(message, exc),
                                  delivery)
                return
        self._dead_letter(delivery, str(exc))

    def _answer_bad(self, headers: Dict[str, Any], exc: exceptions.IncorrectMessage) -> bool:
        """Send an Error for a malformed call whose headers could be read."""
        if headers.get("message_type") != messages.REQUEST or not headers.get("reply_to"):
            return False
        request = messages.IncomingRequestCall(headers, {}, {})
        controller = self._controller_for(request)
        if controller is None:
            return False
        try:
            controller.postprocessor.send(messages.Error.create_by_request(request, exc))
        except Exception as send_exc:  # noqa: BLE001
            LOG.error("cannot answer bad message: %s", send_exc)
            return False
        return True

    def _controller_for(self, message: messages.Message) -> Optional[ServiceController]:
        """A controller whose discovery can reach the caller of ``message``."""
        assert self.router is not None
        own = self.router.services.get(message.destination.service)
        candidates = [own] if own is not None else []
        candidates += [c for c in self.controllers if c is not own]
        reply = message.reply_to
        for controller in candidates:
            try:
                controller.postprocessor.discovery.get_remote(reply.service)
            except exceptions.TavridaError:
                continue
            return controller
        if message.reply_exchange and candidates:
            return candidates[0]  # no discovery knows the caller: its call named the exchange
        return None

    def _dead_letter(self, delivery: Delivery, reason: str,
                     extra: Optional[Mapping[str, Any]] = None) -> None:
        """Copy the original bytes and headers to the dead-letter queue with the reason."""
        why: Dict[str, Any] = {DEAD_LETTER_REASON_HEADER: reason,
                               DEAD_LETTER_QUEUE_HEADER: delivery.queue,
                               DEAD_LETTER_EXCHANGE_HEADER: delivery.exchange or "",
                               DEAD_LETTER_ROUTING_KEY_HEADER: delivery.routing_key or ""}
        original = delivery.headers or {}
        if ATTEMPTS_HEADER in original and not delivery.exchange:
            # A retried copy came through the default exchange; it says where it was first sent.
            for name in (DEAD_LETTER_EXCHANGE_HEADER, DEAD_LETTER_ROUTING_KEY_HEADER):
                if name in original:
                    why[name] = original[name]
        why.update(extra or {})
        properties = delivery.properties or {}
        envelope = OutgoingEnvelope("", self.dead_letter_queue, bytes(delivery.body or b""),
                                    {**(delivery.headers or {}), **why},
                                    content_type=properties.get("content_type"),
                                    content_encoding=properties.get("content_encoding"),
                                    persistent=True)
        assert self.transport is not None
        try:
            self.transport.publish(envelope)
        except exceptions.PublishFailed as exc:
            if not exc.unencodable:
                raise
            # Its headers cannot travel again (too large for a frame, a type the broker
            # library cannot write): the copy keeps the body and tavrida's headers only.
            # (Text that is not UTF-8, e.g. a routing key, is escaped so that it encodes.)
            why[DEAD_LETTER_DROPPED_HEADER] = str(exc)
            envelope.headers = {name: str(value)[:2000].encode("utf-8", "backslashreplace")
                                .decode("utf-8") for name, value in why.items()}
            self.transport.publish(envelope)
        LOG.warning("dead-lettered a message from %s to %s: %s", delivery.queue,
                    self.dead_letter_queue, reason)
        self.hooks.dead_lettered(reason)

    def _notify(self, message: Optional[messages.Message], exc: BaseException,
                by_handler: bool = False) -> None:
        for hook in self.error_hooks:
            hook(message, exc, by_handler)

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

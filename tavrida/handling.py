"""Handling: what happens to one message a server takes, from its bytes to its ack.

Decode, drop an expired call, route, run the handler, answer (pipelined or
not), retry or dead-letter, then settle; see the guarantees in
:mod:`tavrida.server`. One :class:`Handling` per started server, built on its
router and collaborators (:class:`~tavrida.answers.Answers`,
:class:`~tavrida.dead_letters.DeadLetters`, :class:`~tavrida.retries.Retries`).
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import Optional

from tavrida import exceptions, messages, wire
from tavrida.answers import Answers
from tavrida.dead_letters import DeadLetters
from tavrida.observability.hooks import HookList
from tavrida.proxies import RPCProxy
from tavrida.retries import Retries
from tavrida.router import Router
from tavrida.service import ServiceController
from tavrida.transports.base import Delivery

# Logged as the server: its records stay where operators look for them.
LOG = logging.getLogger("tavrida.server")


class Handling:
    """Handles the messages of one server, each to its end."""

    def __init__(self, router: Router, answers: Answers, dead_letters: DeadLetters,
                 retries: Retries, hooks: HookList, max_body_size: int,
                 reply_exchanges: str) -> None:
        self.router = router
        self.answers = answers
        self.dead_letters = dead_letters
        self.retries = retries
        self.hooks = hooks
        self.max_body_size = max_body_size
        self.reply_exchanges = reply_exchanges
        #: Answer calls pipelined: ack a call at its answer's confirm (set by ``Server.run``).
        self.pipelined = False
        #: Calls whose answer went out unconfirmed: acked once it is confirmed.
        self.awaiting = 0
        self._awaiting_lock = threading.Lock()  # workers add, the drain's callbacks take
        #: Messages taken so far (handled, answered or dead-lettered).
        self.handled = 0

    def handle(self, delivery: Delivery) -> None:
        """Handle one delivery to the end; never raises (see :meth:`Server.handle`)."""
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
                if not self.answers.answer_failure(delivery, exc):
                    said = messages.error_payload(exc)["message"]
                    self.dead_letters.send(delivery,
                                            f"failed twice: {messages.get_fqcn(exc)}: {said}")
                delivery.ack()
            else:
                delivery.reject(requeue=True)
        except Exception:  # noqa: BLE001
            LOG.exception("could not settle the message; the broker will redeliver it")

    def _handle(self, delivery: Delivery) -> None:
        self.handled += 1
        answers, dead_letters = self.answers, self.dead_letters
        try:
            message = wire.decode(delivery.body, delivery.headers, delivery.properties,
                                  self.max_body_size)
        except exceptions.IncorrectMessage as exc:
            LOG.error("bad message on queue %s (routing key %r): %s", delivery.queue,
                      delivery.routing_key, exc)
            self.hooks.failed(None, exc, False)
            if exc.headers is None or not answers.answer_bad(exc.headers, exc):
                dead_letters.send(delivery, str(exc))
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
                self.hooks.expired()
                delivery.ack()
                return
        if self.reply_exchanges != "any" and answers.reply_refused(delivery, message):
            return
        message.update_context(message.payload)
        try:
            targets = self.router.route(message)
        except exceptions.TavridaError as exc:
            LOG.error("cannot dispatch %r: %s", message, exc)
            answers.refuse(delivery, message, exc)
            delivery.ack()
            return
        for controller, handler in targets:
            proxy = RPCProxy(controller.postprocessor, proxy_source(message, controller,
                                                                          handler.method_name),
                             message.context, message.correlation_id,
                             messages.user_headers(message.headers))
            try:
                answer = controller.process(handler, message, proxy)
            except Exception as exc:  # noqa: BLE001 - any handler failure is reported
                if isinstance(exc, exceptions.NackableException):
                    self.retries.retry(delivery, controller, handler.method_name, message, exc)
                    return
                self.hooks.failed(message, exc, True)
                what = self._failure(handler.method_name, exc)
                if isinstance(message, messages.IncomingRequestCall):
                    LOG.warning("%s on %r; answering with an Error", what, message,
                                exc_info=LOG.isEnabledFor(logging.DEBUG))
                    answer = answers.error_answer(controller, message, exc)
                else:
                    # A payload refused is the sender's fault: no traceback of ours.
                    LOG.error("%s on %r", what, message,
                              exc_info=not isinstance(exc, exceptions.InvalidPayload))
                    dead_letters.send(delivery, what)
                    continue
            if answer is not None and isinstance(message, messages.IncomingRequestCall):
                if self.pipelined and len(targets) == 1:
                    deferred = answers.send(controller, answer, delivery, functools.partial(
                        self._answer_confirmed, controller, answer, delivery))
                    if deferred:
                        with self._awaiting_lock:
                            self.awaiting += 1
                        controller.message_done(message, answer)
                        return  # acked once its answer is confirmed
                else:
                    answers.send(controller, answer, delivery)
            controller.message_done(message, answer)
        delivery.ack()

    @staticmethod
    def _failure(method_name: str, exc: Exception) -> str:
        """What went wrong, for the log and a dead letter's reason."""
        said = messages.error_payload(exc)["message"]  # even when str(exc) raises
        if isinstance(exc, exceptions.InvalidPayload):  # refused before the handler ran
            return f"payload refused for handler {method_name}: {said}"
        return f"handler {method_name} raised {messages.get_fqcn(exc)}: {said}"

    def _answer_confirmed(self, controller: ServiceController, answer: messages.Message,
                          delivery: Delivery, exc: Optional[exceptions.PublishFailed]) -> None:
        """The outcome of a pipelined answer: ack its request, or settle it as handle() would.

        Runs inside drain() on the server's thread. A failed answer is
        handled as a failed synchronous publish: dead-lettered when it
        cannot be routed, else the request goes back to the queue.
        """
        with self._awaiting_lock:
            self.awaiting -= 1
        if exc is not None and delivery.redelivery_due:
            # Lost with the connection (perhaps after the caller got it): the request
            # comes again and is answered again, so it is not dead-lettered now.
            LOG.warning("answer %r not confirmed (%s); its request will be delivered again",
                        answer, exc)
            self.hooks.given_back(delivery)
            return
        try:
            if exc is None:
                delivery.ack()
                return
            with self.hooks.recording(delivery):  # the outcome goes to this message's record
                self.answers.failed(controller, answer, delivery, exc)
                delivery.ack()
        except Exception as err:  # noqa: BLE001
            LOG.error("could not finish a message from %s: %s", delivery.queue, err)
            self._recover(delivery, err)


def proxy_source(message: messages.Message, controller: ServiceController,
                 method_name: str) -> str:
    """The source of what a handler sends: a request's destination, else its own entry point."""
    if message.message_type == messages.REQUEST:
        return message.destination.to_routing_key()
    return f"{controller.service_name()}.{method_name}"

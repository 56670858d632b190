"""Answers: what a server sends the caller of a call, whatever happened to it.

A call gets exactly one answer: its handler's, or an Error when the handler
raised, the call could not be dispatched or its body could not be read (when
its headers say where to answer), or when the handler's answer cannot be sent
(not JSON, headers that cannot be written, a body the broker refuses for its
size: :class:`~tavrida.exceptions.UnsendableAnswer` in its place). A message
nobody can answer goes to the dead letters (:mod:`tavrida.dead_letters`).
:class:`Answers` is held by :class:`tavrida.server.Server` (see the guarantees
in :mod:`tavrida.server`).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional

from tavrida import exceptions, messages, wire
from tavrida.config import check_choice
from tavrida.dead_letters import DeadLetters
from tavrida.observability.hooks import HookList
from tavrida.router import Router
from tavrida.service import ServiceController
from tavrida.transports.base import Delivery, Transport

# Logged as the server: its records stay where operators look for them.
LOG = logging.getLogger("tavrida.server")

#: ``reply_exchanges`` of a server: answer where a call says, or only on exchanges discovery knows.
REPLY_EXCHANGES = ("any", "known")


def check_reply_exchanges(value: str) -> str:
    """``value`` if it is one of :data:`REPLY_EXCHANGES`; else a clear error."""
    return check_choice("reply_exchanges", value, REPLY_EXCHANGES)


#: Told the verdict on a pipelined answer: None once confirmed, else why it failed.
OnConfirmed = Callable[[Optional[exceptions.PublishFailed]], None]

#: Called with (message or None, exception, raised_by_handler) on every failure.
ErrorHook = Callable[[Optional[messages.Message], BaseException, bool], None]


class Answers:
    """Error answers, answers that cannot be sent, and refused calls of one server.

    Works on the server's ``transport``, ``router`` and ``controllers``; what
    cannot be answered goes to ``dead_letters``; failures and Errors sent are
    told to ``hooks``.
    """

    def __init__(self, transport: Transport, router: Router,
                 controllers: List[ServiceController], dead_letters: DeadLetters,
                 hooks: HookList, reply_exchanges: str, max_body_size: int) -> None:
        self.transport = transport
        self.router = router
        self.controllers = controllers
        self.dead_letters = dead_letters
        self.hooks = hooks
        self.reply_exchanges = check_reply_exchanges(reply_exchanges)
        self.max_body_size = max_body_size

    @staticmethod
    def error_answer(controller: ServiceController, message: messages.Message,
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

    def send(self, controller: ServiceController, answer: messages.Message,
             delivery: Delivery, on_confirmed: Optional[OnConfirmed] = None) -> bool:
        """Publish an answer; one that cannot go is replaced by an Error or dead-letters.

        An answer that cannot be sent as it is (see :meth:`failed`)
        goes as an Error in its place; one no queue takes
        (:class:`~tavrida.exceptions.Unroutable`: the caller's reply queue is
        gone) dead-letters its request. Broker trouble propagates, so
        :meth:`tavrida.server.Server.handle` requeues the request. With
        ``on_confirmed`` the answer is not waited for when the transport
        returns its confirmation pending: True then, its verdict going to
        ``on_confirmed`` later (in the thread running the transport's drain).
        """
        try:
            if on_confirmed is None:
                controller.postprocessor.send(answer)
                self.answered(answer)
                return False
            confirmation = controller.postprocessor.publish(answer)
            if confirmation.done():
                confirmation.wait()  # settled at once: its failure is handled here
                self.answered(answer)
                return False
            confirmation.add_done_callback(
                lambda settled: on_confirmed(settled.failure()))
            self.answered(answer)  # (a failed confirm is settled later as failed() says)
            return True
        except (exceptions.UnableToDiscover, exceptions.IncorrectOutgoingMessage,
                exceptions.PublishFailed) as exc:
            self.failed(controller, answer, delivery, exc)
            return False

    def answered(self, answer: messages.Message) -> None:
        """Tell the hooks what went back to the caller (an Error: outcome ``error``)."""
        if self.hooks and answer.message_type == messages.ERROR:
            self.hooks.answered_error(answer.payload.get("name") or "")

    def failed(self, controller: ServiceController, answer: messages.Message,
                       delivery: Delivery, exc: exceptions.TavridaError) -> None:
        """An answer that cannot go: an Error in its place, else dead-letter its request.

        Broker trouble (not the answer's fault) is re-raised: the request is requeued.
        """
        if (isinstance(exc, exceptions.PublishFailed) and not exc.unencodable
                and not isinstance(exc, exceptions.Unroutable)
                and not self._routed_by_call(controller, answer)):
            raise exc  # the broker's trouble, not the answer's: requeue the request
        LOG.error("cannot send %r: %s", answer, exc)
        self.hooks.failed(answer, exc, False)
        if self._unsendable(exc) and self._send_instead(controller, answer, exc):
            return
        self.dead_letters.send(delivery, f"answer not sent: {exc}")

    @staticmethod
    def _unsendable(exc: exceptions.TavridaError) -> bool:
        """True when the answer itself cannot go (an Error in its place may)."""
        if isinstance(exc, exceptions.IncorrectOutgoingMessage):
            return True
        return isinstance(exc, exceptions.PublishFailed) and bool(exc.unencodable)

    def _send_instead(self, controller: ServiceController, answer: messages.Message,
                      exc: exceptions.TavridaError) -> bool:
        """Send the caller an :class:`~tavrida.exceptions.UnsendableAnswer` for ``answer``.

        First with the answer's user headers and context, then bare (they may be
        what cannot go). Not through the outgoing middlewares: they made or saw
        the answer that failed. False when neither could go.
        """
        reason = exc.kwargs.get("reason") if isinstance(exc.kwargs.get("reason"), str) else None
        error = exceptions.UnsendableAnswer(
            entry_point=answer.source.to_routing_key(), reason=reason or str(exc))
        for bare in (False, True):
            headers = {name: value for name, value in answer.headers.items()
                       if name != "message_id" and not (bare and _users(name))}
            instead = messages.Error(headers, {} if bare else answer.context, error)
            try:
                controller.postprocessor.send(instead)
            except (exceptions.IncorrectOutgoingMessage, exceptions.PublishFailed) as again:
                if not self._unsendable(again):
                    raise  # broker trouble: the request is requeued
                LOG.error("cannot send %r either: %s", instead, again)
                continue
            LOG.warning("answered %s (correlation id %s) with %s", answer.destination,
                        answer.correlation_id, error)
            self.answered(instead)
            return True
        return False

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

    def refuse(self, delivery: Delivery, message: messages.Message,
              exc: exceptions.TavridaError) -> None:
        """Answer a call that cannot be dispatched with an Error, or dead-letter it."""
        self.hooks.failed(message, exc, False)
        if isinstance(message, messages.IncomingRequestCall):
            controller = self.controller_for(message)
            if controller is not None:
                self.send(controller, messages.Error.create_by_request(message, exc),
                                  delivery)
                return
        self.dead_letters.send(delivery, str(exc))

    def answer_bad(self, headers: Dict[str, Any], exc: exceptions.IncorrectMessage) -> bool:
        """Send an Error for a malformed call whose headers could be read."""
        if headers.get("message_type") != messages.REQUEST or not headers.get("reply_to"):
            return False
        request = messages.IncomingRequestCall(headers, {}, {})
        controller = self.controller_for(request)
        if controller is None:
            return False
        error = messages.Error.create_by_request(request, exc)
        try:
            controller.postprocessor.send(error)
        except Exception as send_exc:  # noqa: BLE001
            LOG.error("cannot answer bad message: %s", send_exc)
            return False
        self.answered(error)
        return True

    def answer_failure(self, delivery: Delivery, exc: Exception,
                       why: str = "it failed twice") -> bool:
        """Send the caller of a call that cannot be finished an Error of ``exc``.

        For a message that failed twice (see :meth:`tavrida.server.Server.handle`)
        or whose retry cannot be sent: True when an Error went, so the request
        need not be dead-lettered.
        """
        try:
            message = wire.decode(delivery.body, delivery.headers, delivery.properties,
                                  self.max_body_size)
            if not isinstance(message, messages.IncomingRequestCall):
                return False
            controller = self.controller_for(message)
            if controller is None:
                return False
            error = messages.Error.create_by_request(message, exc)
            controller.postprocessor.send(error)
        except Exception as send_exc:  # noqa: BLE001 - then it is dead-lettered
            LOG.error("cannot answer a message that cannot be finished: %s", send_exc)
            return False
        LOG.warning("answered %s (correlation id %s) with an Error: %s",
                    message.destination, message.correlation_id, why)
        self.answered(error)
        return True

    def reply_refused(self, delivery: Delivery, message: messages.Message) -> bool:
        """With ``reply_exchanges="known"``: dead-letter a call whose answer would go astray.

        A call whose caller discovery does not know, naming a reply exchange
        that discovery does not know either, is not run: logged, dead-lettered
        with the reason and acked; its caller gets nothing (its exchange is
        not trusted).
        """
        if not message.reply_exchange or message.message_type != messages.REQUEST:
            return False
        controller = self.router.services.get(message.destination.service)
        if controller is None or self._reply_allowed(controller, message):
            return False
        reason = (f"reply exchange {message.reply_exchange!r} of caller "
                  f"{message.reply_to.service!r} is unknown to discovery "
                  f"(reply_exchanges = known)")
        LOG.warning("refused %r: %s", message, reason)
        self.dead_letters.send(delivery, reason)
        delivery.ack()
        return True

    def _reply_allowed(self, controller: ServiceController, message: messages.Message) -> bool:
        """True when the answer to ``message`` goes to an exchange discovery knows."""
        disc = controller.postprocessor.discovery
        try:
            disc.get_remote(message.reply_to.service)
            return True  # answered on the discovered exchange, not the header's
        except exceptions.TavridaError:
            return bool(message.reply_exchange) and disc.knows_exchange(message.reply_exchange)

    def controller_for(self, message: messages.Message) -> Optional[ServiceController]:
        """A controller whose discovery can reach the caller of ``message``."""
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
        if message.reply_exchange and candidates and (
                self.reply_exchanges == "any" or self._reply_allowed(candidates[0], message)):
            return candidates[0]  # no discovery knows the caller: its call named the exchange
        return None


def _users(name: str) -> bool:
    """True for a header of the user's (not one of tavrida's own)."""
    return name not in messages.TAVRIDA_HEADERS and name != messages.REPLY_EXCHANGE_HEADER

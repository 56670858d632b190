"""Answers and dead letters: how a server settles a message it cannot simply ack.

A call gets exactly one answer: its handler's, or an Error when the handler
raised, the call could not be dispatched or its body could not be read (when
its headers say where to answer), or when the handler's answer cannot be sent
(not JSON, headers that cannot be written, a body the broker refuses for its
size: :class:`~tavrida.exceptions.UnsendableAnswer` in its place). A message
nobody can answer is copied, bytes and headers unchanged, to the dead-letter
queue ``<queue>.dead`` with the reason. :class:`Answering` holds these steps
for :class:`tavrida.server.Server`, which mixes it in; it works on the
server's transport, router, controllers and hooks (see the guarantees in
:mod:`tavrida.server`).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Mapping, Optional

from tavrida import exceptions, messages, wire
from tavrida import headers as header_names
from tavrida.observability.hooks import HookList
from tavrida.retries import ATTEMPTS_HEADER
from tavrida.router import Router
from tavrida.service import ServiceController
from tavrida.transports.base import (
    DEAD_LETTER_EXCHANGE_HEADER,
    DEAD_LETTER_QUEUE_HEADER,
    DEAD_LETTER_REASON_HEADER,
    DEAD_LETTER_ROUTING_KEY_HEADER,
    Delivery,
    OnConfirmed,
    OutgoingEnvelope,
    Transport,
)

# Logged as the server: its records stay where operators look for them.
LOG = logging.getLogger("tavrida.server")

#: Header of a dead letter whose original headers could not be copied: why.
DEAD_LETTER_DROPPED_HEADER = header_names.DEAD_LETTER_DROPPED

#: ``reply_exchanges`` of a server: answer where a call says, or only on exchanges discovery knows.
REPLY_EXCHANGES = ("any", "known")


def check_reply_exchanges(value: str) -> str:
    """``value`` if it is one of :data:`REPLY_EXCHANGES`; else a clear error."""
    if value not in REPLY_EXCHANGES:
        raise exceptions.IncorrectAMQPConfig(
            reason=f"reply_exchanges must be one of {', '.join(REPLY_EXCHANGES)}, not {value!r}")
    return value


#: Called with (message or None, exception, raised_by_handler) on every failure.
ErrorHook = Callable[[Optional[messages.Message], BaseException, bool], None]


class Answering:
    """Error answers, answers that cannot be sent, and dead letters of a server."""

    transport: Optional[Transport]
    router: Optional[Router]
    controllers: List[ServiceController]
    dead_letter_queue: str
    max_body_size: int
    hooks: HookList
    error_hooks: List[ErrorHook]
    reply_exchanges: str

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
                     delivery: Delivery,
                     on_confirmed: Optional[OnConfirmed] = None) -> bool:
        """Publish an answer; one that cannot go is replaced by an Error or dead-letters.

        An answer that cannot be sent as it is (see :meth:`_answer_failed`)
        goes as an Error in its place; one no queue takes
        (:class:`~tavrida.exceptions.Unroutable`: the caller's reply queue is
        gone) dead-letters its request. Broker trouble propagates, so
        :meth:`handle` requeues the request. With ``on_confirmed``, the
        transport may return before the confirm
        (:meth:`~tavrida.transports.base.Transport.deferring`): True then,
        the outcome going to ``on_confirmed`` later.
        """
        try:
            if on_confirmed is None:
                controller.postprocessor.send(answer)
                self._answered(answer)
                return False
            assert self.transport is not None
            with self.transport.deferring(on_confirmed) as deferral:
                controller.postprocessor.send(answer)
            return deferral.taken
        except (exceptions.UnableToDiscover, exceptions.IncorrectOutgoingMessage,
                exceptions.PublishFailed) as exc:
            self._answer_failed(controller, answer, delivery, exc)
            return False

    def _answered(self, answer: messages.Message) -> None:
        """Tell the hooks what went back to the caller (an Error: outcome ``error``)."""
        if self.hooks and answer.message_type == messages.ERROR:
            self.hooks.answered_error(answer.payload.get("name") or "")

    def _answer_failed(self, controller: ServiceController, answer: messages.Message,
                       delivery: Delivery, exc: exceptions.TavridaError) -> None:
        """An answer that cannot go: an Error in its place, else dead-letter its request.

        Broker trouble (not the answer's fault) is re-raised: the request is requeued.
        """
        if (isinstance(exc, exceptions.PublishFailed) and not exc.unencodable
                and not isinstance(exc, exceptions.Unroutable)
                and not self._routed_by_call(controller, answer)):
            raise exc  # the broker's trouble, not the answer's: requeue the request
        LOG.error("cannot send %r: %s", answer, exc)
        self._notify(answer, exc)
        if self._unsendable(exc) and self._send_instead(controller, answer, exc):
            return
        self._dead_letter(delivery, f"answer not sent: {exc}")

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
            self._answered(instead)
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
        error = messages.Error.create_by_request(request, exc)
        try:
            controller.postprocessor.send(error)
        except Exception as send_exc:  # noqa: BLE001
            LOG.error("cannot answer bad message: %s", send_exc)
            return False
        self._answered(error)
        return True

    def _answer_failure(self, delivery: Delivery, exc: Exception) -> bool:
        """Send the caller of a call that cannot be finished an Error of ``exc``.

        For a message that failed twice (see :meth:`tavrida.server.Server.handle`):
        True when an Error went, so the request need not be dead-lettered.
        """
        try:
            message = wire.decode(delivery.body, delivery.headers, delivery.properties,
                                  self.max_body_size)
            if not isinstance(message, messages.IncomingRequestCall):
                return False
            controller = self._controller_for(message)
            if controller is None:
                return False
            error = messages.Error.create_by_request(message, exc)
            controller.postprocessor.send(error)
        except Exception as send_exc:  # noqa: BLE001 - then it is dead-lettered
            LOG.error("cannot answer a message that failed twice: %s", send_exc)
            return False
        LOG.warning("answered %s (correlation id %s) with an Error: it failed twice",
                    message.destination, message.correlation_id)
        self._answered(error)
        return True

    def _reply_refused(self, delivery: Delivery, message: messages.Message) -> bool:
        """With ``reply_exchanges="known"``: dead-letter a call whose answer would go astray.

        A call whose caller discovery does not know, naming a reply exchange
        that discovery does not know either, is not run: logged, dead-lettered
        with the reason and acked; its caller gets nothing (its exchange is
        not trusted).
        """
        if not message.reply_exchange or message.message_type != messages.REQUEST:
            return False
        assert self.router is not None
        controller = self.router.services.get(message.destination.service)
        if controller is None or self._reply_allowed(controller, message):
            return False
        reason = (f"reply exchange {message.reply_exchange!r} of caller "
                  f"{message.reply_to.service!r} is unknown to discovery "
                  f"(reply_exchanges = known)")
        LOG.warning("refused %r: %s", message, reason)
        self._dead_letter(delivery, reason)
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
        if message.reply_exchange and candidates and (
                self.reply_exchanges == "any" or self._reply_allowed(candidates[0], message)):
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


def _users(name: str) -> bool:
    """True for a header of the user's (not one of tavrida's own)."""
    return name not in messages.TAVRIDA_HEADERS and name != messages.REPLY_EXCHANGE_HEADER

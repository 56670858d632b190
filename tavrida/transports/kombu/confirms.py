"""Publisher confirms and returns: which publish an ack, nack or basic.return is about.

Confirms are pipelined (tavrida's own bookkeeping, not py-amqp's
``confirm_publish``, which waits for each message): every publish gets the
next sequence number in :attr:`_pub_waiting`; acks and nacks settle one or
all up to a tag; a return (every AMQP publish is ``mandatory``) comes
before its message's confirm and is matched to the first unconfirmed
publish with its exchange, routing key and body.
"""

from __future__ import annotations

import logging
import select
import socket
import time
from typing import Any, Callable, List

import amqp

from tavrida.transports.kombu.batch import Batch, ConfirmTimeout
from tavrida.transports.kombu.draining import KombuDraining
from tavrida.transports.kombu.pyamqp_compat import raw_connection

LOG = logging.getLogger(__name__)


class KombuConfirms(KombuDraining):
    """The confirms part of :class:`~tavrida.transports.kombu.KombuTransport`."""

    def _unrouted(self, batch: Batch, index: int) -> None:
        """Envelope ``index`` reached no queue: an Unroutable failure, or fine if not mandatory."""
        envelope = batch.envelopes[index]
        if envelope.mandatory:
            batch.fail(index, "no queue is bound with a matching key", unroutable=True)
        else:
            LOG.debug("nobody takes %s/%s: dropped", envelope.exchange, envelope.routing_key)
            batch.todo.pop(index, None)

    def _wait_for_confirms(self) -> None:
        deadline = time.monotonic() + self.confirm_timeout
        own = getattr(self._local, "deadline", None)
        if own is not None:
            deadline = min(deadline, own)
        raw = raw_connection(self._pub_conn)
        answered = self._pub_answered
        if answered is not None and not self._config.ssl and hasattr(select, "poll"):
            self._wait_for_confirm_or_answer(raw, deadline, answered)
            return
        while self._pub_waiting:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ConfirmTimeout()
            try:
                raw.drain_events(timeout=remaining)
            except socket.timeout:
                continue

    def _wait_for_confirm_or_answer(self, raw: Any, deadline: float,
                                    answered: Callable[[], bool]) -> None:
        """Wait for the confirms and read the reply queue meanwhile; done once ``answered()``.

        The answer proves the request was routed: the request is settled and
        its confirm, read by a later publish, matches nothing waiting then
        (delivery tags only grow on a channel). A return or a nack read
        before the answer fails the request as usual. The two sockets are
        polled together (plain TCP: py-amqp reads no further than the frame
        it needs, so a socket with nothing to read has no frame buffered).
        """
        poller = select.poll()
        pub_fd = raw.transport.sock.fileno()
        poller.register(pub_fd, select.POLLIN)
        reply_fd = -1
        contended = False
        while self._pub_waiting:
            if answered():
                batch = self._pub_batch
                for index in self._pub_waiting.values():
                    if batch is not None:
                        batch.todo.pop(index, None)
                self._pub_waiting.clear()
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ConfirmTimeout()
            fd = self._reply_fd()
            if fd != reply_fd:
                if reply_fd >= 0:
                    poller.unregister(reply_fd)
                if fd >= 0:
                    poller.register(fd, select.POLLIN)
                reply_fd = fd
            # Another thread drains the replies: it hands the answer over unseen by poll.
            wait = min(remaining, self.min_poll_interval if contended else self.poll_interval)
            contended = False
            for fd, _ in poller.poll(wait * 1000):
                if fd == pub_fd:
                    try:
                        raw.drain_events(timeout=remaining)
                    except socket.timeout:
                        pass
                elif not self._read_answers():
                    contended = True

    def _on_confirm(self, delivery_tag: int, multiple: bool) -> None:
        batch = self._pub_batch
        for index in self._resolve(delivery_tag, multiple):
            if batch is not None:
                batch.todo.pop(index, None)

    def _on_nack(self, delivery_tag: int, multiple: bool) -> None:
        batch = self._pub_batch
        for index in self._resolve(delivery_tag, multiple):
            if batch is not None:
                batch.fail(index, "the broker nacked it")

    def _resolve(self, delivery_tag: int, multiple: bool) -> List[int]:
        """Indexes of the envelopes a basic.ack/nack settles."""
        waiting = self._pub_waiting
        if not multiple:
            index = waiting.pop(delivery_tag, None)
            return [] if index is None else [index]
        settled = []
        while waiting:
            tag = next(iter(waiting))
            if tag > delivery_tag:
                break
            settled.append(waiting.pop(tag))
        return settled

    def _on_return(self, exc: Exception, exchange: str, routing_key: str, message: Any) -> None:
        """RabbitMQ returned a message no queue took; it comes before that message's confirm.

        Returns come in publish order, so the returned message is the first
        unconfirmed one after the last returned that has its exchange,
        routing key and body (identical messages are interchangeable).
        """
        batch = self._pub_batch
        if batch is not None and self._confirms:
            body = message.body
            if not isinstance(body, bytes):
                body = body.encode("utf-8") if isinstance(body, str) else bytes(body)
            for seq, index in self._pub_waiting.items():
                if seq <= self._pub_returned_seq or index not in batch.todo:
                    continue
                envelope = batch.envelopes[index]
                if (envelope.exchange == exchange and envelope.routing_key == routing_key
                        and bytes(envelope.body) == body):
                    self._pub_returned_seq = seq
                    self._unrouted(batch, index)
                    return
        LOG.warning("the broker returned a message for %s/%s (%s); it reached no queue "
                    "(without publisher confirms it cannot be told which publish it was)",
                    exchange, routing_key, exc)

    def _on_channel_error(self, batch: Batch, exc: amqp.ChannelError) -> None:
        """The broker closed the publishing channel (py-amqp has reopened it)."""
        reason = f"{exc.reply_code} {exc.reply_text}".strip() if exc.reply_text else str(exc)
        unconfirmed = list(self._pub_waiting.values())
        self._pub_waiting.clear()
        self._pub_confirming = False
        if not self._confirms:
            # The culprit was an earlier, already returned publish: nothing to blame now.
            LOG.warning("the broker closed the publishing channel: %s", reason)
            return
        # The broker names the missing exchange; other unconfirmed messages are innocent
        # and go out again on the fresh channel.
        culprits = [index for index in unconfirmed
                    if f"'{batch.envelopes[index].exchange}'" in (exc.reply_text or "")]
        # Nothing unconfirmed to blame: fail what is left rather than loop for ever.
        for index in culprits or unconfirmed or list(batch.todo):
            batch.fail(index, reason)

"""The publishes waiting for their publisher confirm, and what each ack, nack or return settles.

Confirms are pipelined (not py-amqp's ``confirm_publish``, which waits for
each message): :class:`ConfirmTracker` numbers the publishes of the
confirm channel; acks and nacks settle one or all up to a tag; a return
(every AMQP publish is ``mandatory``) comes before its message's confirm and
is matched to the first unconfirmed publish with its exchange, routing key
and body; a channel error fails the publishes it names.
"""

from __future__ import annotations

import collections
import logging
import re
from typing import Any, List, Optional, Tuple

import amqp

from tavrida.transports.base import OutgoingEnvelope
from tavrida.transports.kombu.batch import Batch

LOG = logging.getLogger(__name__)

#: One publish: its batch and its envelope's index there.
Entry = Tuple[Batch, int]

#: RabbitMQ's words (406 PRECONDITION_FAILED) for a body over its ``max_message_size``.
TOO_LARGE = re.compile(r"message size (\d+) is larger than (?:configured )?max size (\d+)")


class ConfirmTracker:
    """Which publish each confirm, nack or return of the publishing channel is about.

    Every publish gets the channel's next sequence number. No I/O here;
    guarded by the publishing connection's lock (its methods are the
    channel's event handlers, run while that lock's holder reads).
    """

    def __init__(self, confirms: bool) -> None:
        #: The channel is in confirm mode (RabbitMQ with ``publisher_confirms``).
        self.confirms = confirms
        #: Sequence number of the last publish on the channel.
        self.seq = 0
        #: Sequence number of the last publish RabbitMQ returned (see :meth:`returned`).
        self.returned_seq = 0
        #: Unconfirmed publishes, oldest first: sequence number -> (batch, index).
        self.waiting: "collections.OrderedDict[int, Entry]" = collections.OrderedDict()

    def register(self, batch: Batch, index: int) -> None:
        """Envelope ``index`` of ``batch`` was just written: its confirm is the next tag."""
        self.seq += 1
        self.waiting[self.seq] = (batch, index)
        batch.inflight.add(self.seq)

    def reset(self) -> None:
        """A channel put in confirm mode anew: tags start again; nothing is waiting."""
        self.seq = 0
        self.returned_seq = 0
        self.lose_all()

    def resolve(self, delivery_tag: int, multiple: bool) -> List[Entry]:
        """The publishes a basic.ack/nack settles, no longer waiting."""
        waiting = self.waiting
        if not multiple:
            entry = waiting.pop(delivery_tag, None)
            if entry is None:
                return []
            entry[0].inflight.discard(delivery_tag)
            return [entry]
        settled = []
        while waiting:
            tag = next(iter(waiting))
            if tag > delivery_tag:
                break
            entry = waiting.pop(tag)
            entry[0].inflight.discard(tag)
            settled.append(entry)
        return settled

    def forget(self, batch: Batch) -> None:
        """Stop waiting for the confirms of ``batch``."""
        for seq in list(batch.inflight):
            self.waiting.pop(seq, None)
        batch.inflight.clear()

    def lose_all(self) -> List[Entry]:
        """The channel is gone: what was unconfirmed is pending again (returned, oldest first)."""
        lost = list(self.waiting.values())
        for batch, _ in lost:
            batch.inflight.clear()
        self.waiting.clear()
        return lost

    def returned(self, exchange: str, routing_key: str, body: bytes) -> Optional[Entry]:
        """The publish a basic.return is about, if one is waiting.

        Returns come in publish order, before their message's confirm: the
        returned message is the first unconfirmed one after the last
        returned that has its exchange, routing key and body (identical
        messages are interchangeable).
        """
        for seq, (batch, index) in self.waiting.items():
            if seq <= self.returned_seq or index not in batch.todo:
                continue
            envelope: OutgoingEnvelope = batch.envelopes[index]
            if (envelope.exchange == exchange and envelope.routing_key == routing_key
                    and bytes(envelope.body) == body):
                self.returned_seq = seq
                return batch, index
        return None

    # ------------------------------------------------------------------ channel events

    def on_ack(self, delivery_tag: int, multiple: bool) -> None:
        """basic.ack: the publishes up to the tag are confirmed."""
        for batch, index in self.resolve(delivery_tag, multiple):
            batch.todo.pop(index, None)

    def on_nack(self, delivery_tag: int, multiple: bool) -> None:
        """basic.nack: the broker refused the publishes up to the tag."""
        for batch, index in self.resolve(delivery_tag, multiple):
            batch.fail(index, "the broker nacked it")

    def on_return(self, exc: Exception, exchange: str, routing_key: str,
                  message: Any) -> None:
        """RabbitMQ returned a message no queue took (see :meth:`returned`)."""
        if self.confirms:
            body = message.body
            if not isinstance(body, bytes):
                body = body.encode("utf-8") if isinstance(body, str) else bytes(body)
            entry = self.returned(exchange, routing_key, body)
            if entry is not None:
                unrouted(*entry)
                return
        LOG.warning("the broker returned a message for %s/%s (%s); it reached no queue "
                    "(without publisher confirms it cannot be told which publish it was)",
                    exchange, routing_key, exc)

    def on_channel_error(self, batch: Optional[Batch], exc: amqp.ChannelError) -> None:
        """The broker closed the publishing channel (py-amqp has reopened it).

        ``batch``: the one being written when it happened (None: read by a
        waiting publish). Fails the culprits the broker names; the other
        unconfirmed publishes are pending again (written anew).
        """
        reason = f"{exc.reply_code} {exc.reply_text}".strip() if exc.reply_text else str(exc)
        unconfirmed = self.lose_all()
        if not self.confirms:
            # The culprit was an earlier, already returned publish: nothing to blame now.
            LOG.warning("the broker closed the publishing channel: %s", reason)
            return
        rest = [] if batch is None else [(batch, index) for index in list(batch.todo)]
        too_large = TOO_LARGE.search(exc.reply_text or "")
        if too_large:
            # Bodies over the broker's limit can never go as they are (unencodable: the
            # server answers their caller with an Error); the others go out again.
            limit = int(too_large.group(2))
            culprits = [(owner, index) for owner, index in unconfirmed + rest
                        if len(owner.envelopes[index].body) > limit]
            for owner, index in culprits:
                owner.fail(index, reason, unencodable=True)
            if culprits:
                return
        # The broker names the missing exchange; other unconfirmed messages are innocent
        # and go out again on the fresh channel.
        culprits = [(owner, index) for owner, index in unconfirmed
                    if f"'{owner.envelopes[index].exchange}'" in (exc.reply_text or "")]
        # Nothing unconfirmed to blame: fail what is left rather than loop for ever.
        for owner, index in culprits or unconfirmed or rest:
            owner.fail(index, reason)


def unrouted(batch: Batch, index: int) -> None:
    """Envelope ``index`` reached no queue: an Unroutable failure, or fine if not mandatory."""
    envelope = batch.envelopes[index]
    if envelope.mandatory:
        batch.fail(index, "no queue is bound with a matching key", unroutable=True)
    else:
        LOG.debug("nobody takes %s/%s: dropped", envelope.exchange, envelope.routing_key)
        batch.todo.pop(index, None)

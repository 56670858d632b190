"""The publishes waiting for their publisher confirm: :class:`ConfirmTracker`."""

from __future__ import annotations

import collections
from typing import List, Optional, Tuple

from tavrida.transports.base import OutgoingEnvelope
from tavrida.transports.kombu.batch import Batch

#: One publish: its batch and its envelope's index there.
Entry = Tuple[Batch, int]


class ConfirmTracker:
    """Which publish each confirm, nack or return of the publishing channel is about.

    Confirms are pipelined (not py-amqp's ``confirm_publish``, which waits
    for each message): every publish gets the channel's next sequence
    number; an ack or nack settles one tag or every tag up to its own. No
    I/O here; guarded by the publishing connection's lock.
    """

    def __init__(self) -> None:
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
        for seq in batch.inflight:
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

"""Delay queues of the in-memory broker, and the clock they run on.

A :class:`~tavrida.transports.base.DelayQueue` declared on a
:class:`~tavrida.transports.memory.MemoryBroker` is a queue like the others
(``queue_size``, ``messages`` and ``delete`` see it), whose messages leave
it for their target queue once they have waited its delay, as RabbitMQ's
``x-message-ttl`` plus dead-lettering does. Every message of one delay queue
waits as long, so they leave in the order they came.

The broker has no thread of its own: due messages move whenever a transport
of the broker drains (a waiting drain wakes up when the next one is due) or
the clock is advanced. The clock is the broker's: monotonic time plus what
:meth:`MemoryDelays.advance` skipped, so a test can run a 10 s backoff at
once.
"""

from __future__ import annotations

import collections
import copy
import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tavrida.transports.memory.broker import MemoryBroker
    from tavrida.transports.memory.records import QueueRecord

LOG = logging.getLogger(__name__)


class MemoryDelays:
    """Due times of the messages in a broker's delay queues; guarded by the broker's lock."""

    def __init__(self) -> None:
        #: Seconds the clock was moved ahead of monotonic time.
        self.skipped = 0.0
        #: Delay queue -> the due time of each message it holds, oldest first.
        self._due: dict[QueueRecord, collections.deque[float]] = {}

    def __bool__(self) -> bool:
        """True while any delay queue holds a message."""
        return any(self._due.values())

    def now(self) -> float:
        """The broker's clock, in seconds (monotonic, plus what was skipped)."""
        return time.monotonic() + self.skipped

    def add(self, queue: QueueRecord) -> None:
        """``queue`` is a delay queue (declared)."""
        self._due.setdefault(queue, collections.deque())

    def remove(self, queue: QueueRecord) -> None:
        """``queue`` was deleted, with what it held."""
        self._due.pop(queue, None)

    def hold(self, queue: QueueRecord) -> None:
        """The message just appended to delay queue ``queue`` waits its delay from now."""
        self._due[queue].append(self.now() + queue.delay_ms / 1000)

    def next_due(self) -> float | None:
        """Seconds until the next message is due (0 if one is), None when none waits."""
        heads = [due[0] for due in self._due.values() if due]
        return max(min(heads) - self.now(), 0.0) if heads else None

    def release(self, broker: MemoryBroker) -> int:
        """Move every due message to the end of its target queue; how many moved.

        A message whose target queue is gone is dropped and counted as
        unroutable (RabbitMQ drops a dead letter nothing takes).
        """
        now = self.now()
        moved = 0
        for queue, due in self._due.items():
            target_name = queue.delay_target
            while due and due[0] <= now:
                due.popleft()
                message, _ = queue.messages.popleft()
                target = broker.find_queue(target_name)
                if target is None or target.delay_ms:
                    broker.unroutable += 1
                    LOG.warning("delay queue %s: its target queue %s is gone; message dropped",
                                queue.name, target_name)
                    continue
                message = copy.copy(message)  # dead-lettered: routed by the target's name
                message.exchange, message.routing_key = "", target_name
                target.messages.append((message, False))
                if target.consumers:
                    broker.dispatch(target)
                moved += 1
        return moved

"""Idempotency: let a handler see each message once, despite redeliveries.

A broker redelivers a message whose ack was lost (a connection cut after
the handler ran, a server killed before it acked), and a client may publish
a request again after a lost publisher confirm. Both copies carry the same
``message_id``. :class:`IdempotencyMiddleware` remembers the ids of the
messages it saw handled and the answers they got: a copy of a handled call
gets the same answer again without running the handler; a copy of anything
else is acked and dropped.

It is opt-in, per service::

    def __init__(self, postprocessor):
        super().__init__(postprocessor)
        self.add_incoming_middleware(idempotency.IdempotencyMiddleware())

The memory is per process and bounded (``max_entries``, oldest forgotten
first): put the middleware on every server of a queue and size it to cover
the window in which redeliveries happen.
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import Any, Optional

from tavrida import messages
from tavrida.middleware import Middleware

LOG = logging.getLogger(__name__)


class IdempotencyMiddleware(Middleware):
    """Skips messages whose ``message_id`` was already handled; replays their answer."""

    def __init__(self, max_entries: int = 100_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        #: How many duplicates were skipped.
        self.duplicates = 0
        self._handled: collections.OrderedDict[str, Optional[messages.Message]] = (
            collections.OrderedDict())
        self._lock = threading.Lock()

    def process(self, message: Any) -> Any:
        with self._lock:
            if message.message_id not in self._handled:
                return message
            answer = self._handled[message.message_id]
            self.duplicates += 1
        LOG.info("skipping duplicate %s %s from %s", message.message_type, message.message_id,
                 message.source)
        if isinstance(answer, (messages.Response, messages.Error)):
            return answer
        # Not a call, or a call that got no answer: stop here; nothing is sent.
        return messages.Response.create_by_request(message, {})

    def done(self, message: Any, answer: Any) -> None:
        with self._lock:
            self._handled[message.message_id] = answer
            self._handled.move_to_end(message.message_id)
            while len(self._handled) > self.max_entries:
                self._handled.popitem(last=False)

    def __contains__(self, message_id: str) -> bool:
        with self._lock:
            return message_id in self._handled

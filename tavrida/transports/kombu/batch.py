"""The envelopes of one publish call and what became of each."""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Set

from tavrida import exceptions
from tavrida.transports.base import OutgoingEnvelope, publish_error

#: Called with None once a deferred publish was confirmed, or with why it failed.
OnConfirmed = Callable[[Optional[exceptions.PublishFailed]], None]


class Deferral:
    """A publish allowed to return before its confirm (see :mod:`.deferring`)."""

    def __init__(self, on_confirmed: OnConfirmed) -> None:
        self.on_confirmed = on_confirmed
        #: True once a publish was written and its outcome left to ``on_confirmed``.
        self.taken = False


class ConfirmTimeout(Exception):
    """The broker did not confirm in time."""


class Batch:
    """Envelopes of one publish call and what became of each."""

    def __init__(self, envelopes: List[OutgoingEnvelope]) -> None:
        self.envelopes = envelopes
        self.todo: Dict[int, None] = dict.fromkeys(range(len(envelopes)))
        self.failed: Dict[int, str] = {}
        #: Failed because they cannot be written at all: trying again cannot help.
        self.unencodable: Set[int] = set()
        #: Failed because no queue took them (mandatory ones).
        self.unroutable: Set[int] = set()
        #: Sequence numbers of its publishes waiting for their confirm.
        self.inflight: Set[int] = set()
        #: Why the rest failed, when the broker could not be reached.
        self.connection_failed: Optional[exceptions.ConnectionFailed] = None
        #: A deferred publish (see :mod:`.deferring`): told its outcome by drain().
        self.on_confirmed: Optional[OnConfirmed] = None
        #: A deferred publish: when its confirm is late (monotonic seconds).
        self.deadline = 0.0

    def fail(self, index: int, reason: str, unencodable: bool = False,
             unroutable: bool = False) -> None:
        """Record why envelope ``index`` failed, unless it is settled already."""
        if index in self.todo:
            del self.todo[index]
            self.failed[index] = reason
            if unencodable:
                self.unencodable.add(index)
            if unroutable:
                self.unroutable.add(index)

    def error(self) -> exceptions.PublishFailed:
        """The PublishFailed that names every failed envelope.

        ``failed``: index -> reason; ``envelopes``: the failed ones, for
        callers that retry; ``unencodable``: the indexes that can never be
        published as they are; ``unroutable``: those no queue took.
        """
        error = publish_error(self.envelopes, self.failed, self.unencodable, self.unroutable)
        cause = self.connection_failed
        if cause is None:
            return error
        return exceptions.PublishConnectionFailed(
            safe_url=cause.safe_url, cause=cause.cause, reason=error.kwargs["reason"],
            exchange=error.exchange, routing_key=error.routing_key, failed=error.failed,
            envelopes=error.envelopes, unencodable=error.unencodable,
            unroutable=error.unroutable)

"""The envelopes of one publish and what became of each (the record a confirm settles)."""

from __future__ import annotations

from typing import Dict, List, Optional, Set

from tavrida import exceptions
from tavrida.transports.base import OutgoingEnvelope
from tavrida.transports.confirmation import publish_error

#: What ``todo.pop`` gives for an envelope settled already.
_GONE = object()


#: Why a publish had no confirm in time (the words callers see; ``.format(confirm_timeout)``).
CONFIRM_LATE = ("no confirm from the broker in time (confirm_timeout {}s, "
                "or the publish deadline)")


class ConfirmTimeout(Exception):
    """The broker did not confirm in time."""


class Batch:
    """Envelopes of one publish and what became of each.

    A publish through a pending :class:`~.kombu_confirmation.KombuConfirmation`
    is a batch of one; the publishing connection writes it, the
    :class:`~.confirm_tracker.ConfirmTracker` settles it as confirms come.
    """

    def __init__(self, envelopes: List[OutgoingEnvelope]) -> None:
        self.envelopes = envelopes
        # A literal for the usual one: no fromkeys() call (bench.profiling "bulk, tavrida").
        self.todo: Dict[int, None] = ({0: None} if len(envelopes) == 1
                                      else dict.fromkeys(range(len(envelopes))))
        self.failed: Dict[int, str] = {}
        #: Failed because they cannot be written at all: trying again cannot help.
        self.unencodable: Set[int] = set()
        #: Failed because no queue took them (mandatory ones).
        self.unroutable: Set[int] = set()
        #: Sequence numbers of its publishes waiting for their confirm.
        self.inflight: Set[int] = set()
        #: Why the rest failed, when the broker could not be reached.
        self.connection_failed: Optional[exceptions.ConnectionFailed] = None
        #: When its confirm is late (monotonic seconds; pending publishes).
        self.deadline = 0.0

    def fail(self, index: int, reason: str, unencodable: bool = False,
             unroutable: bool = False) -> None:
        """Record why envelope ``index`` failed, unless it is settled already."""
        # pop, not del: a cancel (another thread) may clear todo meanwhile.
        if self.todo.pop(index, _GONE) is not _GONE:
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

"""A pending publish of the kombu transport: :class:`KombuConfirmation`.

Its verdict comes on the publishing connection's socket, which nobody
reads in the background: the thread that waits for it reads it (sharing
the reading with the other waiters, :mod:`.confirm_reader`), and so does
the transport's ``drain`` for handles with callbacks. Either thread then
settles the handle, so callbacks run there, outside the transport's locks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional

from tavrida.transports.base import OutgoingEnvelope
from tavrida.transports.confirmation import _CANCELLED, _CONFIRMED, _PENDING, Confirmation
from tavrida.transports.kombu.batch import Batch

if TYPE_CHECKING:
    from tavrida.transports.kombu.publishing_connection import PublishingConnection


class KombuConfirmation(Confirmation):
    """The verdict on one publish written on a confirm channel, read by its waiters."""

    __slots__ = ("batch", "_publisher", "watched")

    def __init__(self, envelope: OutgoingEnvelope, batch: Batch,
                 publisher: PublishingConnection) -> None:
        super().__init__(envelope)
        #: The publish as the tracker sees it (a batch of one): settled there first.
        self.batch = batch
        self._publisher = publisher
        #: Handed to ``drain`` (it has callbacks); set once.
        self.watched = False

    def settle(self) -> None:
        """Settle the handle as its batch says (in this thread: callbacks run here)."""
        batch = self.batch
        if batch.failed:
            self.set_failed(batch.error())
        else:  # set_confirmed()'s one step: bench.profiling "cast, tavrida: client"
            self._settle(_CONFIRMED, None)

    def done(self) -> bool:
        """True once settled, or once its verdict was read (then settled here)."""
        if self.batch.todo:
            return False  # pending (a settled or cancelled handle has nothing to do)
        if not super().done():
            self.settle()
        return True

    def add_done_callback(self, fn: Callable[[Confirmation], None]) -> None:
        """As for any handle; a pending one is then also settled by ``drain``."""
        super().add_done_callback(fn)
        if self.batch.todo and not self.watched:
            self.watched = True
            self._publisher.reader.watch(self)

    def cancel(self) -> bool:
        """As for any handle; a cancelled publish is no longer tracked (never sent again)."""
        # _settle() direct, not Confirmation.cancel(): bench.profiling "call, tavrida: client".
        if not self._settle(_CANCELLED, None):
            return self._state == _CANCELLED
        self.batch.todo.clear()  # a late confirm or return now matches nothing
        reader = self._publisher.reader
        if reader.idle:  # its waiter may wait (the test here: bench.profiling "call, ...")
            reader.cancelled(self)
        return True

    def _await(self, timeout: Optional[float]) -> bool:
        # Read already (a batch's later handles): no reader call (bench.profiling "bulk").
        if self.batch.todo and not self._publisher.reader.wait(self.batch, timeout):
            return False
        if self._state == _PENDING:  # else cancelled meanwhile (by its answer)
            # settle()'s steps: bench.profiling "cast, tavrida: client" calls/message.
            batch = self.batch
            if batch.failed:
                self.set_failed(batch.error())
            else:
                self._settle(_CONFIRMED, None)
        return True

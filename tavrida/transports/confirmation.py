"""The broker's verdict on one publish, as a handle the publisher holds.

:meth:`Transport.publish <tavrida.transports.base.Transport.publish>`
returns a :class:`Confirmation`: pending until the broker confirms the
message or the transport knows it failed, then settled exactly once.
It is shaped like :class:`concurrent.futures.Future` (``done``, ``wait``
for ``result``, ``exception``, ``add_done_callback``, ``cancel``) so that
the asyncio API can wrap it without a thread of its own::

    future = loop.create_future()
    confirmation.add_done_callback(
        lambda c: loop.call_soon_threadsafe(_copy_verdict, c, future))

A batch is several handles: :func:`confirm_all` waits for them and reports
every failure at once, as :func:`publish_error` words it.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import CancelledError
from typing import TYPE_CHECKING, Callable, Iterable, List, Mapping, Optional, Sequence

from tavrida import exceptions

if TYPE_CHECKING:
    from tavrida.transports.base import OutgoingEnvelope

LOG = logging.getLogger(__name__)

__all__ = ["Confirmation", "confirm_all", "publish_error"]

_PENDING = "pending"
_CONFIRMED = "confirmed"
_FAILED = "failed"
_CANCELLED = "cancelled"


class Confirmation:
    """The broker's verdict on one publish: pending, then confirmed, failed or cancelled, once.

    Safe from any thread. The publisher waits (:meth:`wait`), asks
    (:meth:`done`, :meth:`exception`) or is told (:meth:`add_done_callback`);
    the transport settles it (:meth:`set_confirmed`, :meth:`set_failed`),
    outside its own locks, since callbacks run in the settling thread.
    """

    __slots__ = ("_callbacks", "_event", "_exception", "_state", "envelope")

    #: One lock for every handle: it guards a few assignments, never a wait or a call,
    #: and a lock per publish cost a call (bench.profiling "cast, tavrida: client").
    _lock = threading.Lock()

    def __init__(self, envelope: OutgoingEnvelope, _state: str = _PENDING,
                 _exception: Optional[exceptions.PublishFailed] = None) -> None:
        #: The message this is the verdict on.
        self.envelope = envelope
        self._state = _state
        self._exception = _exception
        self._callbacks: List[Callable[[Confirmation], None]] = []
        #: Made by the first thread that waits (most handles are never waited for).
        self._event: Optional[threading.Event] = None

    @classmethod
    def confirmed(cls, envelope: OutgoingEnvelope) -> Confirmation:
        """A handle settled as confirmed already (a transport that knows at once)."""
        return cls(envelope, _CONFIRMED)

    @classmethod
    def failed(cls, envelope: OutgoingEnvelope,
               exception: exceptions.PublishFailed) -> Confirmation:
        """A handle settled as failed already, with ``exception``."""
        return cls(envelope, _FAILED, exception)

    def __repr__(self) -> str:
        envelope = self.envelope
        return (f"<Confirmation {envelope.exchange!r}/{envelope.routing_key!r}: "
                f"{self._state}>")

    # ------------------------------------------------------------------ for the publisher

    def done(self) -> bool:
        """True once confirmed, failed or cancelled."""
        return self._state != _PENDING

    def cancelled(self) -> bool:
        """True when :meth:`cancel` settled it."""
        return self._state == _CANCELLED

    def wait(self, timeout: Optional[float] = None) -> None:
        """Return once confirmed; raise why not if it failed.

        Raises its :class:`~tavrida.exceptions.PublishFailed` (an
        :class:`~tavrida.exceptions.Unroutable`, a
        :class:`~tavrida.exceptions.PublishConnectionFailed`, ...) if it
        failed, :class:`concurrent.futures.CancelledError` if it was
        cancelled, and the built-in :class:`TimeoutError` if it is still
        pending after ``timeout`` seconds (None: no limit); it then stays
        pending. A transport never leaves a written message pending for
        ever: it fails it once its confirm timeout passes or reconnecting
        gives up.
        """
        # exception()'s steps, not a call to it: bench.profiling "call, tavrida: client".
        if self._state == _PENDING and not self._await(timeout):
            raise TimeoutError(f"{self!r}: no verdict within {timeout} s")
        if self._state == _CANCELLED:
            # The handle, not its repr() (made only if shown): bench.profiling "call, ...: client".
            raise CancelledError(self)
        if self._exception is not None:
            raise self._exception

    def exception(self, timeout: Optional[float] = None) -> Optional[exceptions.PublishFailed]:
        """Why it failed, None once confirmed; waits as :meth:`wait` does (same errors)."""
        if self._state == _PENDING and not self._await(timeout):
            raise TimeoutError(f"{self!r}: no verdict within {timeout} s")
        if self._state == _CANCELLED:
            raise CancelledError(self)
        return self._exception

    def failure(self) -> Optional[exceptions.PublishFailed]:
        """Why it failed, if it has; None while pending, confirmed or cancelled. Never waits."""
        return self._exception if self._state == _FAILED else None

    def add_done_callback(self, fn: Callable[[Confirmation], None]) -> None:
        """Call ``fn(self)`` once settled.

        At once, in this thread, if it is; else in the thread that settles
        it (a transport's ``drain`` or ``wait``, a canceller), after the
        transport released its locks, so ``fn`` may publish and ack. What
        ``fn`` raises is logged, never raised to the settling thread.
        Callbacks run in the order they were added.
        """
        if self._state == _PENDING:
            with self._lock:
                if self._state == _PENDING:
                    self._callbacks.append(fn)
                    return
        self._call(fn)

    def cancel(self) -> bool:
        """The publisher no longer needs the verdict (a call got its answer, say).

        A pending handle is settled as cancelled (callbacks run, in this
        thread) and its transport may stop tracking it: it is not written
        again after a connection loss. False, and nothing changes, once it
        is confirmed or failed.
        """
        return self._settle(_CANCELLED, None) or self._state == _CANCELLED

    # ------------------------------------------------------------------ for transports

    def set_confirmed(self) -> bool:
        """The broker has the message (transports only). False if already settled."""
        return self._settle(_CONFIRMED, None)

    def set_failed(self, exception: exceptions.PublishFailed) -> bool:
        """The message is not published, for ``exception`` (transports only). False if settled."""
        return self._settle(_FAILED, exception)

    def _await(self, timeout: Optional[float]) -> bool:
        """Block until settled or ``timeout``; True if settled.

        Waits for the settling thread. A transport whose waiting thread must
        read the verdict itself (a confirm on its own socket) subclasses
        the handle and overrides this, settling it (or others) as it reads.
        """
        with self._lock:
            if self._state == _PENDING and self._event is None:
                self._event = threading.Event()
            event = self._event
        if event is not None:
            event.wait(timeout)
        return self._state != _PENDING

    def _settle(self, state: str, exception: Optional[exceptions.PublishFailed]) -> bool:
        with self._lock:
            if self._state != _PENDING:
                return False
            self._exception = exception
            self._state = state
            callbacks, self._callbacks = self._callbacks, []
            event = self._event
        if event is not None:
            event.set()
        for fn in callbacks:
            self._call(fn)
        return True

    def _call(self, fn: Callable[[Confirmation], None]) -> None:
        try:
            fn(self)
        except Exception:  # noqa: BLE001 - a callback's failure is the callback's
            LOG.exception("a callback of %r failed", self)


def confirm_all(confirmations: Sequence[Confirmation],
                timeout: Optional[float] = None) -> None:
    """Wait for every handle; raise one PublishFailed naming each failed index.

    The error is :func:`publish_error`'s (an
    :class:`~tavrida.exceptions.Unroutable` when every failure is one), with
    ``unencodable`` and ``unroutable`` naming those indexes; a
    :class:`~tavrida.exceptions.PublishConnectionFailed` when the broker
    could not be reached for one of them. Cancelled handles are skipped
    (their verdict was not needed). ``timeout`` bounds the whole wait (None:
    no limit); the built-in :class:`TimeoutError` when a handle is still
    pending then.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    failed = {}
    unroutable = []
    unencodable = []
    unreachable: Optional[exceptions.PublishConnectionFailed] = None
    for index, confirmation in enumerate(confirmations):
        left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        try:
            exception = confirmation.exception(left)
        except CancelledError:
            continue
        if exception is None:
            continue
        failed[index] = exception.kwargs.get("reason", str(exception))
        if isinstance(exception, exceptions.Unroutable):
            unroutable.append(index)
        if exception.unencodable:
            unencodable.append(index)
        if isinstance(exception, exceptions.PublishConnectionFailed):
            unreachable = unreachable or exception
    if not failed:
        return
    error = publish_error([confirmation.envelope for confirmation in confirmations], failed,
                          unencodable=unencodable, unroutable=unroutable)
    if unreachable is None:
        raise error
    raise exceptions.PublishConnectionFailed(
        safe_url=unreachable.safe_url, cause=unreachable.cause, reason=error.kwargs["reason"],
        exchange=error.exchange, routing_key=error.routing_key, failed=error.failed,
        envelopes=error.envelopes, unencodable=error.unencodable, unroutable=error.unroutable)


def publish_error(envelopes: Sequence[OutgoingEnvelope], failed: Mapping[int, str],
                  unencodable: Iterable[int] = (),
                  unroutable: Iterable[int] = ()) -> exceptions.PublishFailed:
    """The one exception that reports the failed messages of a publish.

    ``failed`` maps indexes into ``envelopes`` to reasons. When every
    failure is unroutable it is an :class:`~tavrida.exceptions.Unroutable`,
    else a :class:`~tavrida.exceptions.PublishFailed`; either way ``failed``,
    ``envelopes`` (the failed ones), ``unencodable`` and ``unroutable`` say
    which message failed how.
    """
    first = min(failed)
    envelope = envelopes[first]
    reason = failed[first]
    if len(envelopes) > 1:
        reason = (f"{len(failed)} of {len(envelopes)} messages failed "
                  f"(indexes {sorted(failed)}); first: {reason}")
    unroutable = sorted(unroutable)
    kind = (exceptions.Unroutable if unroutable and len(unroutable) == len(failed)
            else exceptions.PublishFailed)
    return kind(exchange=envelope.exchange, routing_key=envelope.routing_key, reason=reason,
                failed=dict(failed), envelopes=[envelopes[index] for index in sorted(failed)],
                unencodable=sorted(unencodable), unroutable=unroutable)

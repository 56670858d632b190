"""Retries: how often, and how late, a message whose handler asked for one runs again.

A handler asks for a retry by raising a
:class:`~tavrida.exceptions.NackableException`. The server then publishes a
copy of the message, with :data:`ATTEMPTS_HEADER` counting the attempts made,
to the delay queue of that attempt's backoff
(:class:`~tavrida.transports.base.DelayQueue`, one per value of
:meth:`RetryPolicy.delays_ms`), waits for the broker's confirm and only then
acks the original: a crash in between duplicates the message, never loses
it. The broker holds the copy for the delay and gives it back to the queue;
nothing waits in the server. After :attr:`RetryPolicy.max_attempts` runs it
gives up: the message is dead-lettered (a call is answered with an Error
instead).

A transport that cannot hold delays (kombu's ``kombu+memory://``) falls back
to :class:`RetryTimer`: the server holds the delivery un-acked for the delay
(a prefetch slot), then publishes the copy to the queue itself; see
:doc:`/delivery`.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import logging
import threading
import time
from typing import Any, Callable, List, Mapping, Optional, Tuple

from tavrida import defaults
from tavrida import headers as header_names

LOG = logging.getLogger(__name__)

#: Header of a retried copy: how many times the handler already ran on this message.
ATTEMPTS_HEADER = header_names.ATTEMPTS

DEFAULT_MAX_ATTEMPTS = defaults.MAX_ATTEMPTS
DEFAULT_RETRY_BACKOFF = defaults.RETRY_BACKOFF
DEFAULT_RETRY_BACKOFF_MAX = defaults.RETRY_BACKOFF_MAX
_MAX_COUNT = 2 ** 31 - 1


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """At most ``max_attempts`` runs (None: no limit), ``backoff`` doubling up to ``backoff_max``.

    The n-th retry waits ``min(backoff * 2 ** (n - 1), backoff_max)`` seconds:
    with the defaults 0.5, 1, 2 and 4 s, then the message is dead-lettered
    after its 5th run (7.5 s in all). ``backoff=0`` retries at once.
    """

    max_attempts: Optional[int] = DEFAULT_MAX_ATTEMPTS
    backoff: float = DEFAULT_RETRY_BACKOFF
    backoff_max: float = DEFAULT_RETRY_BACKOFF_MAX

    def __post_init__(self) -> None:
        from tavrida import exceptions

        if self.max_attempts is not None and (
                not isinstance(self.max_attempts, int) or self.max_attempts < 1):
            raise exceptions.IncorrectAMQPConfig(
                reason=f"max_attempts must be a whole number >= 1 or None, "
                       f"got {self.max_attempts!r}")
        if not self.backoff >= 0 or not self.backoff_max >= 0:
            raise exceptions.IncorrectAMQPConfig(
                reason="retry_backoff and retry_backoff_max must be >= 0 seconds")

    def exhausted(self, attempt: int) -> bool:
        """True when run number ``attempt`` (from 1) was the last one allowed."""
        return self.max_attempts is not None and attempt >= self.max_attempts

    def delay(self, attempt: int) -> float:
        """Seconds to wait after run number ``attempt`` (from 1) before the next."""
        if self.backoff <= 0:
            return 0.0
        # Capped before it can overflow: 2 ** 64 half-seconds is never reached.
        return min(self.backoff * 2.0 ** min(attempt - 1, 64), self.backoff_max)

    def delay_ms(self, attempt: int) -> int:
        """:meth:`delay` in whole milliseconds (0: at once), as delay queues hold it."""
        return _milliseconds(self.delay(attempt))

    def delays_ms(self) -> Tuple[int, ...]:
        """Every distinct :meth:`delay_ms` a message can wait, shortest first.

        A bounded set (the doubling stops at ``backoff_max``, or at the last
        attempt): one delay queue each. Empty when retries run at once.
        """
        found: List[int] = []
        attempt = 1
        while not self.exhausted(attempt) and attempt <= 66:
            delay = self.delay_ms(attempt)
            if delay and delay not in found:
                found.append(delay)
            if self.delay(attempt) >= self.backoff_max:
                break  # capped: every later attempt waits as long
            attempt += 1
        return tuple(sorted(found))


def _milliseconds(seconds: float) -> int:
    """``seconds`` rounded to milliseconds; at least 1 ms when not zero."""
    if seconds <= 0:
        return 0
    return max(1, min(int(round(seconds * 1000)), _MAX_COUNT))


def attempts_of(headers: Mapping[str, Any]) -> int:
    """Runs already made on a message, from its :data:`ATTEMPTS_HEADER` (0 if none or bad)."""
    raw = headers.get(ATTEMPTS_HEADER)
    if raw is None:
        return 0
    if isinstance(raw, (bytes, bytearray)):
        raw = bytes(raw).decode("ascii", "replace")
    try:
        value = int(raw)
    except (TypeError, ValueError, OverflowError):
        return 0
    return min(max(value, 0), _MAX_COUNT)  # a hostile value stays a header int can hold


class RetryTimer:
    """Runs callbacks after their delay, on one daemon thread started on first use.

    :meth:`cancel` forgets what has not run yet: the server never waits for
    a pending retry to stop; its un-acked original goes back to the queue.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._heap: List[Tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._thread: Optional[threading.Thread] = None
        self._closed = False
        self._running = 0

    def __len__(self) -> int:
        """Callbacks waiting for their time or running."""
        with self._cond:
            return len(self._heap) + self._running

    def schedule(self, delay: float, callback: Callable[[], None]) -> bool:
        """Run ``callback`` on the timer thread in ``delay`` seconds; False once closed."""
        with self._cond:
            if self._closed:
                return False
            heapq.heappush(self._heap, (time.monotonic() + delay, next(self._seq), callback))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify()
        return True

    def cancel(self) -> int:
        """Forget every callback not yet run; returns how many."""
        with self._cond:
            count = len(self._heap)
            self._heap.clear()
            return count

    def close(self) -> int:
        """Cancel what is pending and end the thread (does not wait for it)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        return self.cancel()

    def reopen(self) -> None:
        """Accept callbacks again after :meth:`close` (a server started again)."""
        with self._cond:
            if self._closed:
                self._closed = False
                self._thread = None

    def _run(self) -> None:
        me = threading.current_thread()
        while True:
            with self._cond:
                while True:
                    if self._closed or self._thread is not me:
                        return
                    if self._heap:
                        wait = self._heap[0][0] - time.monotonic()
                        if wait <= 0:
                            _, _, callback = heapq.heappop(self._heap)
                            self._running += 1
                            break
                    else:
                        wait = None
                    self._cond.wait(wait)
            try:
                callback()
            except Exception:  # noqa: BLE001 - a retry must not end the timer thread
                LOG.exception("retry callback failed on %s", self._name)
            finally:
                with self._cond:
                    self._running -= 1

"""How the adapter retries: :class:`ReconnectPolicy` and its loop, :func:`retry_call`.

kombu's ``Connection.ensure``/``ensure_connection`` retry loops have no
deadline, cannot be cut short by
:meth:`~tavrida.transports.base.Transport.interrupt` or ``close()``, and
sleep in ``time.sleep``; connecting, reconnecting, declaring and publishing
all retry through this function instead.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Callable, Optional, Tuple, Type, TypeVar

from tavrida import exceptions
from tavrida.config import ConnectionConfig

# It logs as the connections it retries always have (operators filter on that name).
LOG = logging.getLogger("tavrida.transports.kombu.connections")

T = TypeVar("T")
Errors = Tuple[Type[BaseException], ...]


def retry_call(fun: Callable[[], T], *, attempts: int, delay: float, max_interval: float,
               deadline: Optional[float], wake: threading.Event,
               retry_errors: Errors, fatal_errors: Errors,
               failed: Callable[[Optional[BaseException], str], exceptions.ConnectionFailed],
               check: Optional[Callable[[], None]] = None,
               on_error: Optional[Callable[[BaseException], None]] = None,
               give_up: str = "", pause: bool = True, what: str = "", url: object = "",
               failed_once: Optional[BaseException] = None) -> T:
    """Call ``fun`` until it stops raising ``retry_errors``; the adapter's one retry loop.

    ``attempts`` calls at most (-1: no bound); ``fatal_errors`` (which retrying
    cannot mend: a refused login) raise ``failed(exc, "")`` at once, as does
    running out of attempts (``failed(exc, give_up)``) or, before a pause, the
    ``deadline`` (``time.monotonic()``) having passed. ``check`` runs before
    every call (it raises to stop), ``on_error`` after every retried error.
    With ``pause`` it sleeps ``delay``, ``2 * delay``, ... up to
    ``max_interval`` (cut to the deadline) between calls, on ``wake`` so that
    setting it ends the sleep. ``what`` and ``url`` name the operation in the
    warning logged before a pause (``url`` is turned into text only then).
    ``failed_once``: the error of a first call the caller made itself (the
    loop goes on from there).
    """
    tries_left = None if attempts < 0 else max(attempts, 1)
    interval = delay = max(delay, 0.0)
    failure = failed_once
    while True:
        if failure is None:
            if check is not None:
                check()
            try:
                return fun()
            except retry_errors as exc:
                failure = exc
            except fatal_errors as exc:
                raise failed(exc, "") from exc
        error, failure = failure, None
        if on_error is not None:
            on_error(error)
        if tries_left is not None:
            tries_left -= 1
            if tries_left <= 0:
                raise failed(error, give_up) from error
        if not pause:
            continue
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            raise failed(error, "timed out") from error
        wait = interval if deadline is None else min(interval, deadline - now)
        LOG.warning("%s %s failed (%s: %s); retrying in %.1fs", what, url,
                    type(error).__name__, error, wait)
        wake.wait(wait)
        interval = min(interval + delay, max(delay, max_interval))


@dataclasses.dataclass(frozen=True)
class ReconnectPolicy:
    """Attempts and pauses of connecting (the first time) and reconnecting (later ones).

    Not "RetryPolicy": :class:`tavrida.retries.RetryPolicy` retries handlers.
    """

    #: Calls of the first connect (``connection_attempts``).
    first_attempts: int
    #: Calls of a later reconnect (``reconnect_attempts``; -1: for ever).
    later_attempts: int
    #: The first pause; each next one is ``delay`` longer.
    delay: float
    #: Upper bound of a pause.
    max_interval: float

    @classmethod
    def from_config(cls, config: ConnectionConfig, max_interval: float) -> "ReconnectPolicy":
        return cls(config.connection_attempts, config.reconnect_attempts,
                   config.retry_delay, max_interval)

    def call(self, fun: Callable[[], T], *, initial: bool, deadline: Optional[float],
             wake: threading.Event, retry_errors: Errors, fatal_errors: Errors,
             failed: Callable[[Optional[BaseException], str], exceptions.ConnectionFailed],
             check: Callable[[], None], what: str, url: object,
             failed_once: Optional[BaseException] = None) -> T:
        """:func:`retry_call` with this policy's attempts (``initial``: the first connect's)."""
        attempts = self.first_attempts if initial else self.later_attempts
        return retry_call(
            fun, attempts=attempts, delay=self.delay, max_interval=self.max_interval,
            deadline=deadline, wake=wake, retry_errors=retry_errors,
            fatal_errors=fatal_errors, failed=failed, check=check,
            give_up=f"gave up after {attempts} attempt(s)", what=what, url=url,
            failed_once=failed_once)

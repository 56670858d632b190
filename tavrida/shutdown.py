"""A server's stop: its grace period, the messages in hand, and which are given back.

:meth:`tavrida.server.Server.stop` (or SIGTERM / SIGINT) starts a graceful
stop: no new message is taken, and every message in hand (running in a
handler, or taken and waiting for a worker) is finished, answered and acked,
within ``stop_timeout`` seconds. What is still in hand then -- or at once, on a
second stop request -- is given back to the broker unacked (it is delivered
again, to this service's next instance), and the log names each such message.
:class:`Shutdown` keeps that state for one server; the server does the
steps.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

# Logged as the server: its records stay where operators look for them.
LOG = logging.getLogger("tavrida.server")


class StopNow(BaseException):
    """Raised in the thread running :meth:`tavrida.server.Server.run` to end a stop at once.

    By a second SIGTERM / SIGINT, or when the grace period ends while a
    handler runs on that thread (``workers=0``). A BaseException, like
    KeyboardInterrupt, so that handlers catching Exception let it through.
    """


def describe(headers: Mapping[str, Any]) -> str:
    """How a log line names a message: its ids and its destination, from its headers."""
    return (f"message {headers.get('message_id', '?')} (correlation id "
            f"{headers.get('correlation_id', '?')}) to {headers.get('destination', '?')}")


class Shutdown:
    """The stop of one server: when it was asked, its grace period, what is in hand.

    Thread-safe. ``requested`` is set by the first :meth:`request`,
    ``immediate`` by the second.
    """

    def __init__(self, queue_name: str, stop_timeout: float) -> None:
        self.queue_name = queue_name
        self.stop_timeout = stop_timeout
        self.requested = threading.Event()
        self.immediate = threading.Event()
        self._began: Optional[float] = None
        self._lock = threading.Lock()
        #: Messages in a handler now, by id of their delivery: their headers.
        self._running: Dict[int, Mapping[str, Any]] = {}
        #: The thread running :meth:`~tavrida.server.Server.run` may be interrupted (StopNow).
        self._abortable: Optional[int] = None
        self._watchdog: Optional[threading.Thread] = None
        self._over = threading.Event()

    # -- requests ---------------------------------------------------------

    def request(self) -> bool:
        """Ask for a stop; True the first time, after which a request means at once."""
        with self._lock:
            if not self.requested.is_set():
                self._began = time.monotonic()
                self.requested.set()
                return True
        self.immediate.set()
        return False

    def why(self) -> str:
        """Why the messages in hand are given back (for the log)."""
        if self.remaining() <= 0:
            return f"the stop_timeout of {self.stop_timeout:g} s is over"
        return "stopped at once (second stop request)"

    def remaining(self) -> float:
        """Seconds left of the grace period (the full period before a request)."""
        began = self._began
        if began is None:
            return self.stop_timeout
        return max(began + self.stop_timeout - time.monotonic(), 0.0)

    # -- messages in hand -------------------------------------------------

    def running(self, key: int, headers: Mapping[str, Any]) -> None:
        """A handler took the message of delivery ``key`` (its headers name it)."""
        self._running[key] = headers

    def done(self, key: int) -> None:
        self._running.pop(key, None)

    def report(self, why: str, waiting: List[Mapping[str, Any]], unconfirmed: int) -> None:
        """Log each message given back to the broker unfinished, and why."""
        running = list(self._running.values())
        if not (running or waiting or unconfirmed):
            return
        for headers in running:
            LOG.warning("server on queue %s: %s; %s is still being handled: not acked, the "
                        "broker delivers it again", self.queue_name, why, describe(headers))
        for headers in waiting:
            LOG.warning("server on queue %s: %s; %s was waiting for a worker: not run, the "
                        "broker delivers it again", self.queue_name, why, describe(headers))
        if unconfirmed:
            LOG.warning("server on queue %s: %s; %d answer(s) not confirmed: their requests "
                        "are delivered again", self.queue_name, why, unconfirmed)

    # -- signals and interrupting the serving thread ----------------------

    def install_signal_handlers(self, stop: Callable[[], None]) -> List[Tuple[int, Any]]:
        """In the main thread: SIGTERM and SIGINT call ``stop()``, a second one ends it at once.

        Returns what to give :meth:`restore_signal_handlers` (nothing off the
        main thread, where Python cannot install them).
        """
        if threading.current_thread() is not threading.main_thread():
            return []

        def on_signal(signum: int, frame: Any) -> None:
            if not self.requested.is_set():
                LOG.info("server on queue %s: signal %d, stopping (at most %g s; another "
                         "signal stops at once)", self.queue_name, signum, self.stop_timeout)
            stop()
            if self.immediate.is_set():
                self.raise_if_abortable()

        restore: List[Tuple[int, Any]] = []
        for signum in (signal.SIGTERM, signal.SIGINT):
            restore.append((signum, signal.getsignal(signum)))
            signal.signal(signum, on_signal)
        return restore

    @staticmethod
    def restore_signal_handlers(restore: List[Tuple[int, Any]]) -> None:
        for signum, handler in restore:
            signal.signal(signum, handler)

    def abortable(self, on: bool) -> None:
        """The calling thread (the main one, with our signal handlers) may get StopNow now."""
        with self._lock:
            self._abortable = threading.get_ident() if on else None

    def raise_if_abortable(self) -> None:
        """In a signal handler: end the stop at once by raising StopNow, where allowed."""
        with self._lock:
            allowed = self._abortable == threading.get_ident()
        if allowed:
            raise StopNow()

    def watch(self, give_up: Optional[Callable[[], None]] = None) -> None:
        """Start the thread that ends what the serving thread runs when the grace ends.

        For ``workers=0``: a handler running on that thread cannot be waited
        for past the grace period. In the main thread it sends SIGINT to it,
        whose handler (the server's) raises StopNow there; elsewhere it calls
        ``give_up()`` (which cancels the ``async def`` handlers running).
        """
        if self._watchdog is not None and self._watchdog.is_alive():
            return
        self._watchdog = threading.Thread(target=self._watch, args=(give_up,), daemon=True,
                                          name=f"tavrida-stop-{self.queue_name}")
        self._watchdog.start()

    def _watch(self, give_up: Optional[Callable[[], None]]) -> None:
        while not self._over.is_set():
            if self.requested.wait(0.5) and not self._over.wait(self.remaining()):
                with self._lock:
                    target = self._abortable
                if target is not None:
                    self.immediate.set()
                    signal.pthread_kill(target, signal.SIGINT)
                elif give_up is not None:
                    give_up()
                return

    def finished(self) -> None:
        """:meth:`~tavrida.server.Server.run` is ending: no more interrupts."""
        self._over.set()
        self.abortable(False)
        watchdog = self._watchdog
        if watchdog is not None and watchdog is not threading.current_thread():
            watchdog.join(2)
        self._watchdog = None

"""The I/O thread: the one thread that drains a transport for asyncio code.

kombu is a blocking library: its connection is read by a thread that
waits in :meth:`~tavrida.transports.base.Transport.drain`. An asyncio
client or server keeps it so: one thread of its own drains the transport
(answers to calls, confirms of publishes) and hands what it reads to the
event loop (``loop.call_soon_threadsafe``). The loop never waits on the
broker. Work that must run on the transport's own thread (declaring the
reply queue, consuming it) is submitted here with :meth:`IOThread.submit`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
from typing import Callable, Deque, Optional, Tuple, TypeVar

from tavrida import exceptions
from tavrida.transports.base import Transport

LOG = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds one drain waits before looking at its jobs again (a submit wakes it sooner).
DRAIN_STEP = 1.0
#: Seconds between two attempts to drain while the broker cannot be reached.
RETRY_PAUSE = 0.5


class IOThread:
    """Drains ``transport`` on a daemon thread until :meth:`stop`; runs submitted jobs there."""

    def __init__(self, transport: Transport, name: str) -> None:
        self.transport = transport
        self._name = name
        self._jobs: Deque[Tuple[Callable[[], object], "concurrent.futures.Future[object]"]] = (
            collections.deque())
        self._stopping = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start draining (once)."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()

    def submit(self, job: Callable[[], T]) -> "concurrent.futures.Future[T]":
        """Run ``job()`` on this thread, between two drains; its future has the outcome."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        if self._stopping.is_set():
            future.set_exception(exceptions.TavridaError("the I/O thread is stopped"))
            return future
        self._jobs.append((job, future))  # type: ignore[arg-type]
        self.start()
        self.transport.stop()  # wake the drain waiting now
        return future

    def stop(self, timeout: Optional[float] = None) -> None:
        """Stop draining; wait up to ``timeout`` seconds for the thread to end."""
        self._stopping.set()
        self.transport.interrupt()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run_jobs(self) -> None:
        while self._jobs:
            job, future = self._jobs.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(job())
            except BaseException as exc:  # noqa: BLE001 - handed to whoever submitted it
                future.set_exception(exc)

    def _run(self) -> None:
        transport = self.transport
        while not self._stopping.is_set():
            self._run_jobs()
            try:
                transport.drain(DRAIN_STEP)
            except exceptions.ConnectionFailed as exc:
                # The calls waiting meet their own deadlines; draining goes on when it can.
                LOG.warning("%s: cannot drain %r (%s); trying again", self._name, transport, exc)
                self._stopping.wait(RETRY_PAUSE)
            except Exception:  # noqa: BLE001 - this thread must outlive one bad drain
                LOG.exception("%s: drain failed", self._name)
                self._stopping.wait(RETRY_PAUSE)
        for _, future in self._jobs:
            future.cancel()

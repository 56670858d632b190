"""Worker threads of a server with ``workers`` > 0.

Not ``concurrent.futures.ThreadPoolExecutor``: its threads are joined at
interpreter exit, so one handler still running at the end of a stop's grace
period would keep the process alive after :meth:`tavrida.server.Server.run`
returned (its message already given back to the broker). These threads are
daemons; the messages waiting for one can be taken back unrun
(:meth:`Workers.take_waiting`).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from typing import Callable, Generic, Iterator, List, Optional, TypeVar

T = TypeVar("T")


class Workers(Generic[T]):
    """``count`` daemon threads calling ``run(item)`` for every item submitted, in order."""

    def __init__(self, count: int, name: str, run: Callable[[T], None]) -> None:
        self._run = run
        self._queue: "queue.SimpleQueue[Optional[T]]" = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"{name}_{index}",
                                          daemon=True) for index in range(count)]
        for thread in self._threads:
            thread.start()

    def submit(self, item: T) -> None:
        """Run ``item`` on the next free thread."""
        self._queue.put(item)

    def take_waiting(self) -> List[T]:
        """Take back the items no thread has started (they will never run)."""
        taken: List[T] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return taken
            if item is not None:
                taken.append(item)

    def close(self, timeout: Optional[float] = None) -> bool:
        """Let the threads end once the items submitted are done; wait up to ``timeout``.

        ``timeout`` None waits for all, 0 waits for none. True when every
        thread ended.
        """
        for _ in self._threads:
            self._queue.put(None)
        if timeout is not None and timeout <= 0:
            return not any(thread.is_alive() for thread in self._threads)
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout)
        return not any(thread.is_alive() for thread in self._threads)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            self._run(item)


class InFlight:
    """A count of the messages a server holds outside its loop's thread, under its own lock.

    (Messages in workers, and retries due on the retry timer's thread: a
    graceful stop waits for them.)
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0

    @property
    def count(self) -> int:
        return self._count

    def add(self, n: int) -> None:
        with self._lock:
            self._count += n

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Counts one more while inside."""
        self.add(1)
        try:
            yield
        finally:
            self.add(-1)

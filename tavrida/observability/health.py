"""Health checks a supervisor can probe: a file touched by the consumer loop, ``/healthz``.

Both are driven by :meth:`Server.run`'s loop itself, so a loop that is
stuck (or a server that is stopping) stops looking healthy:

* :class:`HealthFile` writes the time into a file every ``interval``
  seconds while the loop turns and removes it when the server closes; a
  probe checks that the file is younger than, say, three intervals
  (``find FILE -mmin -1`` or ``test $(( $(date +%s) - $(stat -c %Y FILE) )) -lt 15``);
* :class:`HealthCheck` answers ``GET /healthz`` with 200 ``ok`` while the
  loop turned within ``stale_after`` seconds, 503 otherwise.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Optional, Tuple

from tavrida.observability.hooks import ServerHook
from tavrida.observability.http import StatusServer

if TYPE_CHECKING:
    from tavrida.server import Server

LOG = logging.getLogger(__name__)


class HealthFile(ServerHook):
    """Touch ``path`` (write the time) every ``interval`` seconds while the loop runs."""

    def __init__(self, path: str, interval: float = 5.0) -> None:
        self.path = path
        self.interval = interval
        self._last = 0.0

    def _touch(self) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            return
        self._last = now
        tmp = f"{self.path}.tmp"
        with open(tmp, "w", encoding="ascii") as handle:
            handle.write(f"{time.time():.3f}\n")
        os.replace(tmp, self.path)

    def started(self, server: Server) -> None:
        self._last = 0.0
        self._touch()

    def tick(self, server: Server) -> None:
        self._touch()

    def stopping(self, server: Server, in_flight: int) -> None:
        self._remove()

    def closed(self, server: Server) -> None:
        self._remove()

    def _remove(self) -> None:
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass


class HealthCheck(ServerHook):
    """``GET /healthz`` on ``status``: 200 while the consumer loop turns, 503 otherwise."""

    def __init__(self, status: StatusServer, stale_after: float = 10.0,
                 path: str = "/healthz") -> None:
        self.status = status
        self.stale_after = stale_after
        self.path = path
        self._last: Optional[float] = None
        self._lock = threading.Lock()
        status.routes[path] = self._answer

    def _answer(self) -> Tuple[int, str, bytes]:
        with self._lock:
            last = self._last
        if last is None:
            return 503, "text/plain; charset=utf-8", b"not running\n"
        age = time.monotonic() - last
        if age > self.stale_after:
            return 503, "text/plain; charset=utf-8", f"stale: {age:.1f}s\n".encode()
        return 200, "text/plain; charset=utf-8", b"ok\n"

    def _beat(self, alive: bool) -> None:
        with self._lock:
            self._last = time.monotonic() if alive else None

    def started(self, server: Server) -> None:
        self.status.acquire()
        self._beat(True)

    def tick(self, server: Server) -> None:
        self._beat(True)

    def stopping(self, server: Server, in_flight: int) -> None:
        self._beat(False)

    def closed(self, server: Server) -> None:
        self._beat(False)
        self.status.release()


__all__ = ["HealthCheck", "HealthFile"]

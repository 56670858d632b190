"""A small HTTP server in a daemon thread for ``/metrics`` and ``/healthz``.

Metrics and health share one :class:`StatusServer` when they are given the
same port. It starts with the first hook's server and stops with the last.
"""

from __future__ import annotations

import http.server
import logging
import threading
from typing import Any, Callable, Dict, Optional, Tuple

LOG = logging.getLogger(__name__)

#: A route answers (status, content type, body).
Route = Callable[[], Tuple[int, str, bytes]]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _HTTPServer

    def do_GET(self) -> None:  # noqa: N802 - the http.server spelling
        route = self.server.routes.get(self.path.split("?", 1)[0])
        if route is None:
            status, content_type, body = 404, "text/plain; charset=utf-8", b"not found\n"
        else:
            try:
                status, content_type, body = route()
            except Exception:  # noqa: BLE001
                LOG.exception("status route %s failed", self.path)
                status, content_type, body = 500, "text/plain; charset=utf-8", b"error\n"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        LOG.debug("%s " + format, self.address_string(), *args)


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    routes: Dict[str, Route]


class StatusServer:
    """Serves routes on ``host:port`` (port 0: any free port, see :attr:`port`)."""

    def __init__(self, port: int, host: str = "0.0.0.0") -> None:
        self.host = host
        self.requested_port = port
        self.routes: Dict[str, Route] = {}
        self._users = 0
        self._lock = threading.Lock()
        self._httpd: Optional[_HTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    @property
    def port(self) -> int:
        """The port listened on (the one asked for, or the one picked for 0)."""
        if self._httpd is None:
            return self.requested_port
        return int(self._httpd.server_address[1])

    def acquire(self) -> None:
        """Start serving (for the first user)."""
        with self._lock:
            if self._httpd is not None:
                self._users += 1
                return
            httpd = _HTTPServer((self.host, self.requested_port), _Handler)
            self._users += 1
            httpd.routes = self.routes
            self._httpd = httpd
            self._thread = threading.Thread(target=httpd.serve_forever, kwargs={
                "poll_interval": 0.2}, daemon=True, name=f"tavrida-status-{self.port}")
            self._thread.start()
            LOG.info("serving %s on http://%s:%d", ", ".join(sorted(self.routes)), self.host,
                     self.port)

    def release(self) -> None:
        """Stop serving once the last user released it."""
        with self._lock:
            self._users = max(self._users - 1, 0)
            if self._users > 0 or self._httpd is None:
                return
            httpd, self._httpd = self._httpd, None
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)


__all__ = ["Route", "StatusServer"]

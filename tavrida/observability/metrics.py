"""Prometheus metrics of a server (``pip install 'tavrida[metrics]'``).

======================================  =========  ======================================
metric                                  type       labels
======================================  =========  ======================================
``tavrida_messages_total``              counter    queue, entry_point, message_type, outcome
``tavrida_handler_errors_total``        counter    queue, entry_point, exception
``tavrida_dead_letters_total``          counter    queue
``tavrida_handler_duration_seconds``    histogram  queue, entry_point
``tavrida_messages_in_flight``          gauge      queue
``tavrida_reconnects_total``            counter    queue
======================================  =========  ======================================

``outcome`` is what happened to the message: ``ok``, ``error``,
``expired``, ``retried``, ``dead-lettered`` or ``requeued`` (see
:mod:`tavrida.observability.hooks`). ``entry_point`` is ``other`` for
messages no handler is declared for, so hostile input cannot grow the label
set. :class:`Metrics` records into a
registry (prometheus_client's default one unless told); serve it with
:class:`~tavrida.observability.http.StatusServer` (``[metrics] port``) or
your own exporter.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple

from tavrida.observability.hooks import MessageRecord, ServerHook
from tavrida.observability.http import StatusServer

if TYPE_CHECKING:
    from tavrida.server import Server

prometheus_client: Any
try:
    import prometheus_client
except ImportError:  # pragma: no cover - exercised where the extra is missing
    prometheus_client = None

_FAMILIES: weakref.WeakKeyDictionary[Any, Dict[str, Any]] = weakref.WeakKeyDictionary()
_FAMILIES_LOCK = threading.Lock()


def _require() -> Any:
    if prometheus_client is None:
        raise ImportError("metrics need prometheus-client: pip install 'tavrida[metrics]'")
    return prometheus_client


def _families(registry: Any) -> Dict[str, Any]:
    """The metric objects of ``registry``, created once (several servers share them)."""
    prom = _require()
    with _FAMILIES_LOCK:
        found = _FAMILIES.get(registry)
        if found is None:
            found = _FAMILIES[registry] = {
                "messages": prom.Counter(
                    "tavrida_messages", "Messages taken, by how they ended",
                    ["queue", "entry_point", "message_type", "outcome"], registry=registry),
                "errors": prom.Counter(
                    "tavrida_handler_errors", "Handler, middleware or message failures",
                    ["queue", "entry_point", "exception"], registry=registry),
                "dead_letters": prom.Counter(
                    "tavrida_dead_letters", "Messages copied to the dead-letter queue",
                    ["queue"], registry=registry),
                "duration": prom.Histogram(
                    "tavrida_handler_duration_seconds",
                    "Time from taking a message to settling it",
                    ["queue", "entry_point"], registry=registry),
                "in_flight": prom.Gauge(
                    "tavrida_messages_in_flight", "Messages being handled",
                    ["queue"], registry=registry),
                "reconnects": prom.Counter(
                    "tavrida_reconnects", "Times the consuming connection was opened again",
                    ["queue"], registry=registry),
            }
        return found


class Metrics(ServerHook):
    """Counts, times and gauges the messages of a server into a Prometheus registry.

    With ``status`` (a :class:`StatusServer`) the registry is served on
    ``/metrics`` while the server runs.
    """

    def __init__(self, registry: Any = None, status: Optional[StatusServer] = None) -> None:
        prom = _require()
        self.registry = prom.REGISTRY if registry is None else registry
        self._m = _families(self.registry)
        self.status = status
        self._reconnects: Dict[int, int] = {}
        if status is not None:
            status.routes["/metrics"] = self._scrape

    def _scrape(self) -> Tuple[int, str, bytes]:
        prom = _require()
        return 200, prom.CONTENT_TYPE_LATEST, prom.generate_latest(self.registry)

    def started(self, server: Server) -> None:
        if self.status is not None:
            self.status.acquire()
        self._m["in_flight"].labels(server.queue_name)
        self._m["reconnects"].labels(server.queue_name)
        self._m["dead_letters"].labels(server.queue_name)
        self._reconnects[id(server)] = self._transport_reconnects(server)

    @staticmethod
    def _transport_reconnects(server: Server) -> int:
        return int(getattr(server.transport, "reconnects", 0) or 0)

    def tick(self, server: Server) -> None:
        now = self._transport_reconnects(server)
        before = self._reconnects.get(id(server), 0)
        if now > before:
            self._m["reconnects"].labels(server.queue_name).inc(now - before)
        self._reconnects[id(server)] = now

    def message_started(self, server: Server, record: MessageRecord) -> None:
        self._m["in_flight"].labels(record.queue).inc()

    def message_finished(self, server: Server, record: MessageRecord) -> None:
        m = self._m
        label = record.label
        m["in_flight"].labels(record.queue).dec()
        m["messages"].labels(record.queue, label, record.message_type if record.known
                             else "other", record.outcome).inc()
        m["duration"].labels(record.queue, label).observe(record.duration or 0.0)
        if record.exception is not None:
            m["errors"].labels(record.queue, label, type(record.exception).__name__).inc()
        if record.outcome == "dead-lettered":
            m["dead_letters"].labels(record.queue).inc()

    def closed(self, server: Server) -> None:
        self.tick(server)
        if self.status is not None:
            self.status.release()


__all__ = ["Metrics"]

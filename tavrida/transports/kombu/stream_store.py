"""Central discovery's store on RabbitMQ: a stream queue of announcements.

Every record written is appended to the stream queue ``<name>``
(``x-queue-type: stream``, RabbitMQ 3.9+), replicated on the cluster's nodes
like a quorum queue. A watcher consumes it over AMQP 0.9.1 from its first
offset (``x-stream-offset: first``, with ``basic.qos`` and acks as streams
require), so a replay rebuilds the latest record of every owner, then goes
on with each new one. To know when it caught up, it appends a marker of its
own and waits to read it back.

A stream never compacts: retention (``x-max-age``, default
:data:`MAX_AGE`, in segments of :data:`SEGMENT_BYTES`) drops old
announcements, live owners write theirs every heartbeat, and the directory
writes again the records nobody heartbeats before they age out
(:attr:`retention`).
"""

from __future__ import annotations

import logging
import threading
import urllib.parse
import uuid
from typing import Any, Dict, List, Optional

import amqp

from tavrida.config import ConnectionConfig
from tavrida.registry.store import OnRecord, OnState, Store, StoreUnavailable

LOG = logging.getLogger("tavrida.discovery")

#: Retention of the stream (a RabbitMQ duration) and the same in seconds.
MAX_AGE = "20m"
MAX_AGE_SECONDS = 1200.0
#: Segment size: retention drops whole segments, so keep them small.
SEGMENT_BYTES = 1_000_000
#: Header of the marker a watcher appends to know it read everything before it.
SYNC_HEADER = "x-tavrida-discovery-sync"
#: Unacked announcements a watcher may hold (streams need a prefetch).
PREFETCH = 1000
HEARTBEAT = 10


class StreamStore(Store):
    """Records in a stream queue on the RabbitMQ (or cluster) ``config`` points at."""

    retention = MAX_AGE_SECONDS

    def __init__(self, config: ConnectionConfig, name: str) -> None:
        self._urls = config.urls
        self._name = f"{config.safe_url} ({name})"
        self._queue = name
        self._next = 0
        self._writer: Optional[Any] = None
        self._writer_channel: Optional[Any] = None
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @property
    def name(self) -> str:
        return self._name

    @property
    def arguments(self) -> Dict[str, Any]:
        return {"x-queue-type": "stream", "x-max-age": MAX_AGE,
                "x-stream-max-segment-size-bytes": SEGMENT_BYTES}

    def _connect(self, timeout: float, heartbeat: int = 0) -> Any:
        """A connection to the next node in turn (each failure moves on)."""
        errors: List[str] = []
        for _ in self._urls:
            url = self._urls[self._next % len(self._urls)]
            self._next += 1
            parts = urllib.parse.urlsplit(url)
            vhost = urllib.parse.unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
            conn = amqp.Connection(
                f"{parts.hostname or 'localhost'}:{parts.port or 5672}",
                userid=urllib.parse.unquote(parts.username or "guest"),
                password=urllib.parse.unquote(parts.password or "guest"),
                virtual_host=vhost, ssl=parts.scheme == "amqps", connect_timeout=timeout,
                read_timeout=timeout, write_timeout=timeout, heartbeat=heartbeat,
                client_properties={"connection_name": f"tavrida discovery {self._queue}"})
            try:
                conn.connect()
                return conn
            except (OSError, amqp.exceptions.AMQPError) as exc:
                errors.append(str(exc))
                _close(conn)
        raise StoreUnavailable(store=self._name, reason="; ".join(errors) or "no node")

    def _declare(self, channel: Any) -> None:
        channel.queue_declare(self._queue, durable=True, auto_delete=False,
                              arguments=self.arguments)

    def write(self, key: str, record: bytes, timeout: float) -> None:
        with self._lock:
            if self._closed.is_set():
                raise StoreUnavailable(store=self._name, reason="closed")
            # A connection kept from an earlier write may have died since: one more try
            # on a fresh one (the next node) before giving up.
            for fresh in (self._writer_channel is None, True):
                try:
                    self._publish(key, record, timeout)
                    return
                except StoreUnavailable:
                    raise
                except Exception as exc:  # noqa: BLE001 - socket, AMQP or timeout: all one
                    self._drop_writer()
                    if fresh:
                        raise StoreUnavailable(store=self._name,
                                               reason=f"{type(exc).__name__}: {exc}") from None

    def _publish(self, key: str, record: bytes, timeout: float) -> None:
        if self._writer_channel is None:
            self._writer = self._connect(timeout)
            channel = self._writer.channel()
            self._declare(channel)
            channel.confirm_select()
            self._writer_channel = channel
        self._writer_channel.basic_publish_confirm(
            amqp.Message(record, content_type="application/json", delivery_mode=2,
                         application_headers={"x-tavrida-owner": key}),
            exchange="", routing_key=self._queue, mandatory=True, confirm_timeout=timeout)

    def _drop_writer(self) -> None:
        writer, self._writer, self._writer_channel = self._writer, None, None
        if writer is not None:
            _close(writer)

    def watch(self, on_record: OnRecord, on_state: OnState) -> None:
        self._thread = threading.Thread(target=self._watch, args=(on_record, on_state),
                                        daemon=True, name=f"tavrida-discovery-watch-{self._queue}")
        self._thread.start()

    def _watch(self, on_record: OnRecord, on_state: OnState) -> None:
        delay = 0.2
        lost = False
        while not self._closed.is_set():
            conn = None
            try:
                conn = self._connect(5.0, HEARTBEAT)
                channel = conn.channel()
                self._declare(channel)
                channel.basic_qos(0, PREFETCH, False)
                token = uuid.uuid4().hex
                state = {"synced": False}

                def deliver(message: Any, channel: Any = channel, token: str = token,
                            state: Dict[str, bool] = state) -> None:
                    headers = message.application_headers or {}
                    marker = headers.get(SYNC_HEADER)
                    if marker is None:
                        on_record(bytes(message.body))
                    elif marker == token and not state["synced"]:
                        state["synced"] = True
                        on_state(True)
                    channel.basic_ack(message.delivery_tag)

                channel.basic_consume(self._queue, callback=deliver,
                                      arguments={"x-stream-offset": "first"})
                channel.basic_publish(amqp.Message(b"", application_headers={SYNC_HEADER: token}),
                                      exchange="", routing_key=self._queue)
                if lost:
                    LOG.info("central discovery at %s: watching again", self._name)
                lost, delay = False, 0.2
                while not self._closed.is_set():
                    try:
                        conn.drain_events(timeout=1.0)
                    except TimeoutError:
                        pass
                    conn.heartbeat_tick()
            except Exception as exc:  # noqa: BLE001 - socket, AMQP, timeout: reconnect
                if self._closed.is_set():
                    break
                on_state(False)
                if not lost:
                    LOG.warning("central discovery at %s: lost (%s: %s); lookups answer from "
                                "the cache, reconnecting", self._name, type(exc).__name__, exc)
                lost = True
                self._closed.wait(delay)
                delay = min(delay * 2, 5.0)
            finally:
                if conn is not None:
                    _close(conn)

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            self._drop_writer()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(3.0)


def _close(conn: Any) -> None:
    try:
        conn.collect()  # drop the socket without a handshake the broker may never answer
    except Exception:  # noqa: BLE001
        pass

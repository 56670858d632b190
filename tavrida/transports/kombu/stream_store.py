"""Central discovery's store on RabbitMQ: a stream queue of announcements.

Every record written is appended to the stream queue ``<name>``
(``x-queue-type: stream``, RabbitMQ 3.9+), replicated on the cluster's nodes
like a quorum queue. A watcher consumes it over AMQP 0.9.1 from its first
offset (``x-stream-offset: first``, with ``basic.qos`` and acks as streams
require), so a replay rebuilds the latest record of every owner, then goes
on with each new one. To know when it caught up, it appends a marker of its
own and waits to read it back.

Heartbeats do not go to the stream (a replay would read every one): an
owner publishes them, ``{"owner": ..., "at": ...}``, on the fanout exchange
``<name>.beats``, which each watcher reads through an exclusive queue of its
own. A stream never compacts: retention (``x-max-age``, default
:data:`MAX_AGE`, in segments of :data:`SEGMENT_BYTES`) drops old
announcements; an owner writes its whole record again every half retention,
and the directory writes again the records nobody heartbeats (hand-made,
stopped) before they age out (:attr:`retention`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.parse
import uuid
from typing import Any, Dict, List, Optional

import amqp

from tavrida.config import ConnectionConfig
from tavrida.registry.store import OnBeat, OnRecord, OnState, Store, StoreUnavailable

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
#: Seconds between two tries of a write (a stream electing a new leader refuses them).
_WRITE_RETRY = 0.5
#: A watcher's heartbeat queue: what it cannot read within a minute is dropped.
BEAT_TTL_MS = 60_000
BEAT_MAX_LENGTH = 100_000


class StreamStore(Store):
    """Records in a stream queue on the RabbitMQ (or cluster) ``config`` points at."""

    retention = MAX_AGE_SECONDS

    def __init__(self, config: ConnectionConfig, name: str) -> None:
        self._urls = config.urls
        self._name = f"{config.safe_url} ({name})"
        self._queue = name
        self._beats = f"{name}.beats"
        self._on_beat: Optional[OnBeat] = None
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
        channel.exchange_declare(self._beats, "fanout", durable=True, auto_delete=False)

    def write(self, key: str, record: bytes, timeout: float) -> None:
        """Publish ``record`` (confirmed), trying node after node until ``timeout``.

        A stream whose leader just died refuses publishes (541) until the
        cluster elects another: the write waits that out within its deadline.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                if self._closed.is_set():
                    raise StoreUnavailable(store=self._name, reason="closed")
                try:
                    self._publish(key, record, max(deadline - time.monotonic(), 0.1))
                    return
                except StoreUnavailable as exc:
                    error: Exception = exc
                except Exception as exc:  # noqa: BLE001 - socket, AMQP or timeout: all one
                    error = exc
                self._drop_writer()
                left = deadline - time.monotonic()
                if left <= 0 or self._closed.wait(min(_WRITE_RETRY, left)):
                    if isinstance(error, StoreUnavailable):
                        raise error
                    raise StoreUnavailable(store=self._name,
                                           reason=f"{type(error).__name__}: {error}") from None

    def _publish(self, key: str, record: bytes, timeout: float) -> None:
        self._publish_to("", self._queue, record, timeout, {"x-tavrida-owner": key})

    def _publish_to(self, exchange: str, routing_key: str, body: bytes, timeout: float,
                    headers: Dict[str, Any], mandatory: bool = True) -> None:
        if self._writer_channel is None:
            self._writer = self._connect(timeout)
            channel = self._writer.channel()
            self._declare(channel)
            channel.confirm_select()
            self._writer_channel = channel
        self._writer_channel.basic_publish_confirm(
            amqp.Message(body, content_type="application/json", delivery_mode=2,
                         application_headers=headers),
            exchange=exchange, routing_key=routing_key, mandatory=mandatory,
            confirm_timeout=timeout)

    def _drop_writer(self) -> None:
        writer, self._writer, self._writer_channel = self._writer, None, None
        if writer is not None:
            _close(writer)

    def beat(self, key: str, at: float, timeout: float) -> bool:
        """Publish a heartbeat on ``<name>.beats``: each watcher's own queue, not the stream."""
        body = json.dumps({"owner": key, "at": at}).encode("utf-8")
        with self._lock:
            if self._closed.is_set():
                raise StoreUnavailable(store=self._name, reason="closed")
            try:
                self._publish_to(self._beats, "", body, timeout, {}, mandatory=False)
            except Exception as exc:  # noqa: BLE001 - socket, AMQP or timeout: all one
                self._drop_writer()
                raise StoreUnavailable(store=self._name,
                                       reason=f"{type(exc).__name__}: {exc}") from None
        return True

    def watch(self, on_record: OnRecord, on_state: OnState,
              on_beat: Optional[OnBeat] = None) -> None:
        self._on_beat = on_beat
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
                state = {"synced": 0, "unacked": 0, "last": 0}

                def deliver(message: Any, channel: Any = channel, token: str = token,
                            state: Dict[str, int] = state) -> None:
                    headers = message.application_headers or {}
                    marker = headers.get(SYNC_HEADER)
                    if marker is None:
                        on_record(bytes(message.body))
                    elif marker == token and not state["synced"]:
                        state["synced"] = 1
                        on_state(True)
                    state["last"] = message.delivery_tag
                    state["unacked"] += 1
                    if state["unacked"] >= PREFETCH // 2:  # the stream's credit: ack in batches
                        channel.basic_ack(state["last"], multiple=True)
                        state["unacked"] = 0

                channel.basic_consume(self._queue, callback=deliver,
                                      arguments={"x-stream-offset": "first"})
                self._consume_beats(channel)
                channel.basic_publish(amqp.Message(b"", application_headers={SYNC_HEADER: token}),
                                      exchange="", routing_key=self._queue)
                if lost:
                    LOG.info("central discovery at %s: watching again", self._name)
                lost, delay = False, 0.2
                while not self._closed.is_set():
                    try:
                        conn.drain_events(timeout=0.2 if state["unacked"] else 1.0)
                    except TimeoutError:
                        if state["unacked"]:  # quiet: settle what was read
                            channel.basic_ack(state["last"], multiple=True)
                            state["unacked"] = 0
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

    def _consume_beats(self, channel: Any) -> None:
        """A queue of this watcher's own for the heartbeats (gone with the connection)."""
        on_beat = self._on_beat
        if on_beat is None:
            return
        queue = channel.queue_declare("", exclusive=True, auto_delete=True,
                                      arguments={"x-message-ttl": BEAT_TTL_MS,
                                                 "x-max-length": BEAT_MAX_LENGTH}).queue
        channel.queue_bind(queue, self._beats)

        def deliver(message: Any) -> None:
            try:
                beat = json.loads(bytes(message.body))
                owner, at = beat["owner"], float(beat["at"])
            except (ValueError, KeyError, TypeError) as exc:
                LOG.warning("central discovery at %s: ignored a malformed heartbeat (%s)",
                            self._name, exc)
                return
            if isinstance(owner, str):
                on_beat(owner, at)

        channel.basic_consume(queue, callback=deliver, no_ack=True)

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

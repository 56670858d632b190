"""Central discovery's store on Redis: a hash of records and a channel of changes.

Each owner's latest record is a field of the hash ``<name>`` (one write:
``HSET``, in the same ``MULTI`` as the ``PUBLISH`` of the record on the
channel ``<name>.changes``). A watcher subscribes to the channel, then reads
the whole hash, then applies each change pushed to it; after a lost
connection it does the same again (a record pushed while it was away is in
the hash). Memory: one hash field per owner (a few hundred bytes per
service); a change costs one message per watcher.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Optional

import redis

from tavrida.config import ConnectionConfig
from tavrida.registry.store import OnBeat, OnRecord, OnState, Store, StoreUnavailable

LOG = logging.getLogger("tavrida.discovery")

#: Seconds between PINGs on the watching connection (a silent Redis is noticed).
HEALTH_CHECK_INTERVAL = 5


class RedisStore(Store):
    """Records in the Redis ``config`` points at."""

    ordered = False  # a change pushed before HGETALL may arrive after it

    def __init__(self, config: ConnectionConfig, name: str) -> None:
        self._url = config.urls[0]
        self._name = f"{config.safe_urls[0]} ({name})"
        self._hash = name
        self._channel = f"{name}.changes"
        self._writer: Optional[Any] = None
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @property
    def name(self) -> str:
        return self._name

    def _client(self, timeout: Optional[float]) -> Any:
        return redis.Redis.from_url(self._url, socket_timeout=timeout,
                                    socket_connect_timeout=timeout or 5.0,
                                    health_check_interval=HEALTH_CHECK_INTERVAL)

    def write(self, key: str, record: bytes, timeout: float) -> None:
        with self._lock:
            if self._closed.is_set():
                raise StoreUnavailable(store=self._name, reason="closed")
            try:
                if self._writer is None:
                    self._writer = self._client(timeout)
                pipe = self._writer.pipeline(transaction=True)
                pipe.hset(self._hash, key, record)
                pipe.publish(self._channel, record)
                pipe.execute()
            except (redis.RedisError, OSError) as exc:
                self._drop_writer()
                raise StoreUnavailable(store=self._name, reason=str(exc)) from None

    def _drop_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.close()
            except (redis.RedisError, OSError):
                pass

    def watch(self, on_record: OnRecord, on_state: OnState,
              on_beat: Optional[OnBeat] = None) -> None:
        self._thread = threading.Thread(target=self._watch, args=(on_record, on_state),
                                        daemon=True, name=f"tavrida-discovery-watch-{self._hash}")
        self._thread.start()

    def _watch(self, on_record: OnRecord, on_state: OnState) -> None:
        delay = 0.2
        lost = False
        while not self._closed.is_set():
            client = self._client(5.0)
            pubsub = client.pubsub()
            try:
                pubsub.subscribe(self._channel)
                if pubsub.get_message(timeout=5.0) is None:  # the subscribe confirmation
                    raise redis.ConnectionError("no answer to SUBSCRIBE within 5 s")
                for raw in client.hgetall(self._hash).values():
                    on_record(raw)
                on_state(True)
                if lost:
                    LOG.info("central discovery at %s: watching again", self._name)
                lost, delay = False, 0.2
                while not self._closed.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        on_record(message["data"])
            except (redis.RedisError, OSError) as exc:
                on_state(False)
                if not lost:
                    LOG.warning("central discovery at %s: lost (%s); lookups answer from the "
                                "cache, reconnecting", self._name, exc)
                lost = True
                self._closed.wait(delay)
                delay = min(delay * 2, 5.0)
            finally:
                for closing in (pubsub, client):
                    try:
                        closing.close()
                    except (redis.RedisError, OSError):
                        pass

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            self._drop_writer()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(2.0)

"""The seam between central discovery and the broker that keeps its records.

A :class:`Store` keeps the latest record of each owner and pushes every
change to its watchers; the directory (:mod:`tavrida.registry.directory`)
knows nothing more of it. One implementation per broker, beside its
transport:

* ``memory://`` -- :mod:`tavrida.transports.memory.store`, in the process's
  in-memory broker;
* RabbitMQ -- :mod:`tavrida.transports.kombu.stream_store`, a stream queue
  of announcements;
* Redis -- :mod:`tavrida.transports.kombu.redis_store`, a hash and a
  pub/sub channel.

Records travel as bytes (the JSON of :mod:`tavrida.registry.record`); the
store never reads them, so a malformed one reaches the directory, which
logs and ignores it.
"""

from __future__ import annotations

import abc
from typing import Callable, Optional

from tavrida import exceptions
from tavrida.config import ConnectionConfig

#: Called with each record's bytes: those kept at (re)connect, then each change.
OnRecord = Callable[[bytes], None]
#: Called with True once the records kept were all handed over (after each
#: (re)connect), with False when the store was lost.
OnState = Callable[[bool], None]
#: Called with an owner and the time of its heartbeat (stores with :meth:`Store.beat`).
OnBeat = Callable[[str, float], None]

#: The name records are kept under: the stream queue, the Redis hash and channel.
DEFAULT_NAME = "tavrida.discovery"


class StoreUnavailable(exceptions.TavridaError):
    """The store could not be reached, or did not take a record in time."""

    message_template = "central discovery store %(store)s: %(reason)s"


class Store(abc.ABC):
    """Where the records live; one per process and store (see the directory)."""

    #: Seconds the store keeps a record that is not written again (None: for
    #: ever); the directory writes again the records older than half of it.
    retention: Optional[float] = None
    #: True when watchers get the writes in the order they were made (a stream, a
    #: lock); False when a replay and a push may cross (Redis): an older write
    #: arriving late is then ignored.
    ordered = True

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """Where the records are, for logs and errors (no password)."""

    @abc.abstractmethod
    def write(self, key: str, record: bytes, timeout: float) -> None:
        """Keep ``record`` as the latest of ``key`` and push it to every watcher.

        Raises :class:`StoreUnavailable` when that did not happen within ``timeout``.
        """

    def beat(self, key: str, at: float, timeout: float) -> bool:
        """Tell the watchers that ``key``'s record still holds at ``at``, without keeping it.

        False (the default): this store has no lighter way; the directory
        writes the whole record instead.
        """
        return False

    @abc.abstractmethod
    def watch(self, on_record: OnRecord, on_state: OnState,
              on_beat: Optional[OnBeat] = None) -> None:
        """Hand every record kept to ``on_record``, then every change, until :meth:`close`.

        Returns at once; a store with a connection reconnects on its own
        (logging it) and hands the records over again each time. Heartbeats
        sent by :meth:`beat` go to ``on_beat``.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Stop watching and close connections (prompt, broker up or down)."""


def open_store(config: ConnectionConfig, name: str = DEFAULT_NAME) -> Store:
    """The store of the broker ``config`` points at."""
    if config.is_memory:
        from tavrida.transports.memory.store import MemoryStore

        return MemoryStore(config, name)
    scheme = config.scheme
    if scheme.startswith("redis"):
        from tavrida.transports.kombu.redis_store import RedisStore

        return RedisStore(config, name)
    if scheme in ("amqp", "amqps", "pyamqp"):
        from tavrida.transports.kombu.stream_store import StreamStore

        return StreamStore(config, name)
    raise exceptions.IncorrectAMQPConfig(
        reason=f"central discovery keeps its records on RabbitMQ, Redis or memory://, "
               f"not on {scheme}://")

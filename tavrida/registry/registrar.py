"""The registrar: this process's own record, written at once and heartbeated.

:meth:`Registrar.register` adds a service to the process's record; a thread
writes the record at once and again every ``refresh`` seconds (the
heartbeat: on a store that can, :meth:`~tavrida.registry.store.Store.beat`
instead of the whole record, which is then written again every half
retention). While the store is unreachable it retries with a growing delay,
logging the outage once and its end. When the last registration of a
service goes, the service is written as ``stopped``; when none is left, the
record is written once more with ``alive`` false: either way it stays as
last known. The same thread runs the directory's maintenance (``on_tick``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
import uuid
from typing import Callable, Dict, Optional, Tuple

from tavrida import exceptions
from tavrida.registry.record import Entry, Record
from tavrida.registry.store import Store, StoreUnavailable

LOG = logging.getLogger("tavrida.discovery")

#: Seconds between heartbeats, and how long a record stays live without one.
DEFAULT_REFRESH = 15.0
DEFAULT_TTL = 60.0
#: Seconds a write may take before it is retried.
WRITE_TIMEOUT = 5.0


def new_owner() -> str:
    """An owner id for this process: host, pid and a random part (pids are reused)."""
    return f"{socket.gethostname()[:100]}/{os.getpid()}/{uuid.uuid4().hex[:8]}"


class Registrar:
    """Writes and heartbeats the record of ``owner`` in ``store``."""

    def __init__(self, store: Store, owner: str, refresh: float, ttl: float,
                 on_tick: Callable[[], None] = lambda: None) -> None:
        self.store = store
        self.owner = owner
        self.refresh = refresh
        self.ttl = ttl
        self._on_tick = on_tick
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        #: service -> (entry, registrations); at 0 registrations: written as stopped.
        self._own: Dict[str, Tuple[Entry, int]] = {}
        self._since = 0.0
        self._stopped_owner_written = True
        self._wanted = 0  # own record versions asked for
        self._written = 0  # own record versions written
        self._wake = threading.Event()
        self._closed = threading.Event()
        #: True while writes fail (the outage is logged once).
        self.failing = False
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"tavrida-discovery-{store.name}")

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop the thread (within a write's timeout); the record stays and expires."""
        self._closed.set()
        self._wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(WRITE_TIMEOUT + 1)

    def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` (checked at each write) is true; False on timeout."""
        with self._changed:
            return self._changed.wait_for(predicate, timeout)

    def exchange_of(self, service: str) -> str:
        """The exchange this process registered ``service`` on ("?" if none)."""
        with self._lock:
            found = self._own.get(service)
        return found[0].exchange if found else "?"

    def register(self, service: str, entry: Entry, timeout: float = 0.0) -> bool:
        """Announce ``service`` as this process's (again: counted) and keep it alive.

        Waits up to ``timeout`` seconds for the store to take it; False if it did not yet
        (the registrar goes on trying in the background).
        """
        with self._lock:
            count = self._own.get(service, (entry, 0))[1]
            self._own[service] = (entry, count + 1)
            if self._since == 0.0:
                self._since = time.time()
            self._wanted += 1
            wanted = self._wanted
        self._wake.set()
        return timeout <= 0 or self.wait(
            lambda: self._written >= wanted or self._closed.is_set() or self.failing, timeout)

    def unregister(self, service: str, timeout: float = 1.0) -> None:
        """Withdraw one registration of ``service``; the last one is written at once.

        Waits up to ``timeout`` seconds for the store to take the change (a
        record never written expires on its own); not at all while writes fail,
        so that a server stops promptly during an outage.
        """
        with self._lock:
            entry, count = self._own.get(service, (None, 0))
            if entry is None or count == 0:
                return
            self._own[service] = (entry, count - 1)  # at 0: written as stopped, last known
            if count > 1:
                return
            self._wanted += 1
            wanted = self._wanted
        self._wake.set()
        self.wait(lambda: self._written >= wanted or self._closed.is_set() or self.failing,
                  timeout)

    def _own_record(self) -> Optional[Record]:
        with self._lock:
            alive = any(count for _, count in self._own.values())
            if not alive and self._stopped_owner_written:
                return None
            services = {name: entry if count else dataclasses.replace(entry, stopped=True)
                        for name, (entry, count) in self._own.items()}
            return Record(self.owner, services, self._since or time.time(), time.time(),
                          self.ttl, alive=alive)

    def _run(self) -> None:
        next_beat = 0.0
        delay = 0.5
        written_at = -float("inf")  # when the whole record was last written (monotonic)
        while not self._closed.is_set():
            now = time.monotonic()
            changed = self._wanted > self._written
            if now >= next_beat or changed:
                with self._lock:
                    wanted = self._wanted
                record = self._own_record()
                retention = self.store.retention
                if record is None:
                    next_beat = now + self.refresh
                    self._set_written(wanted)
                elif (not changed and retention is not None and now - written_at < retention / 2
                      and self._beat(record)):
                    next_beat = now + self.refresh  # the record in the store still holds
                elif self._write(record):
                    delay = 0.5
                    next_beat, written_at = now + self.refresh, now
                    with self._lock:
                        self._stopped_owner_written = not record.alive
                    self._set_written(wanted)
                else:
                    next_beat = now + delay
                    delay = min(delay * 2, self.refresh)
            self._on_tick()
            self._wake.wait(max(0.05, min(1.0, next_beat - time.monotonic())))
            self._wake.clear()

    def _beat(self, record: Record) -> bool:
        """A heartbeat without the record (stores that can); False: write the record."""
        try:
            return self.store.beat(record.owner, record.at, WRITE_TIMEOUT)
        except (StoreUnavailable, exceptions.TavridaError, OSError):
            return False  # the write that follows says why, once

    def _set_written(self, wanted: int) -> None:
        with self._lock:
            self._written = max(self._written, wanted)
            self._changed.notify_all()

    def _write(self, record: Record) -> bool:
        try:
            self.store.write(record.owner, record.encode(), WRITE_TIMEOUT)
        except (StoreUnavailable, exceptions.TavridaError, OSError) as exc:
            if not self.failing:
                LOG.warning("central discovery at %s: cannot register %s (%s); retrying in "
                            "the background, lookups answer from the cache", self.store.name,
                            ", ".join(sorted(record.services)) or "the stop", exc)
                with self._lock:
                    self.failing = True
                    self._changed.notify_all()
            return False
        if self.failing:
            LOG.info("central discovery at %s: registered %s again", self.store.name,
                     ", ".join(sorted(record.services)))
        self.failing = False
        return True

"""The records of one store as this process sees them, and this process's own record.

A :class:`Directory` is shared by every :class:`~tavrida.discovery.CentralDiscovery`
of a process that names the same store (:func:`acquire`): one watch on the
store, one cache, one record announced for all the process's services.

* **Cache.** The store pushes every record (all of them at (re)connect, then
  each change); :meth:`Directory.lookup` answers from memory, never asking
  the store. Per service, among the owners whose records are live, the
  first registration (earliest ``since``) wins; when none is live, the last
  heard of (latest ``at``) is the "last known" answer. Two live owners
  claiming one name with different exchanges is a conflict, logged (on both
  owners, as an error on the one that waits).
* **Registrar** (:mod:`tavrida.registry.registrar`): this process's own
  record, written and heartbeated by a thread of its own.
* **Carry-forward.** A store that forgets old records (a stream's
  retention) gets the records nobody heartbeats (hand-made entries, owners
  that stopped) written again by a watcher, at a random moment past half the
  retention, so that a replay always finds them.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from typing import Callable, Dict, FrozenSet, Iterable, List, Optional, Set, Tuple

from tavrida import exceptions
from tavrida.config import ConnectionConfig
from tavrida.registry import record as record_mod
from tavrida.registry.record import Entry, MalformedRecord, Record
from tavrida.registry.registrar import (
    DEFAULT_REFRESH,
    DEFAULT_TTL,
    WRITE_TIMEOUT,
    Registrar,
    new_owner,
)
from tavrida.registry.store import DEFAULT_NAME, Store, StoreUnavailable, open_store

LOG = logging.getLogger("tavrida.discovery")

#: Seconds a first lookup waits for the store's records.
DEFAULT_SYNC_TIMEOUT = 5.0

Resolved = Tuple[Entry, Record]


class Directory:
    """The cache of one store, kept current by push, and this process's registrar."""

    def __init__(self, store: Store, refresh: float = DEFAULT_REFRESH,
                 ttl: float = DEFAULT_TTL,
                 sync_timeout: float = DEFAULT_SYNC_TIMEOUT) -> None:
        if not 0 < refresh < ttl:
            raise exceptions.IncorrectAMQPConfig(
                reason=f"central discovery needs 0 < refresh ({refresh}) < ttl ({ttl})")
        self.store = store
        self.refresh = refresh
        self.ttl = ttl
        self.sync_timeout = sync_timeout
        self.owner = new_owner()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        #: Latest record per owner, and when it arrived (monotonic).
        self._records: Dict[str, Record] = {}
        self._arrived: Dict[str, float] = {}
        self._carry_at: Dict[str, float] = {}
        self._owners_of: Dict[str, Set[str]] = {}
        #: service -> (entry, record) answered by lookups (changed under the lock;
        #: a lookup is one dict read).
        self._resolved: Dict[str, Resolved] = {}
        #: Exchanges named by the answers, counted.
        self._known: Dict[str, int] = {}
        #: Services more than one owner claims (looked at again as records expire).
        self._contested: Set[str] = set()
        self._conflicts: Set[Tuple[str, FrozenSet[str]]] = set()
        self.version = 0
        self._synced = threading.Event()
        self.connected = False
        #: This process's record; its thread also runs :meth:`_tick`.
        self.registrar = Registrar(store, self.owner, refresh, ttl, on_tick=self._tick)
        self.references = 0

    def start(self) -> None:
        self.store.watch(self._on_record, self._on_state, self._on_beat)
        self.registrar.start()

    def close(self) -> None:
        """Stop heartbeats and watching; the records stay in the store (they expire)."""
        self.registrar.close()
        self.store.close()

    # -- the cache --------------------------------------------------------

    def _on_state(self, synced: bool) -> None:
        self.connected = synced
        if synced:
            if not self._synced.is_set():
                LOG.info("central discovery at %s: %d records", self.store.name,
                         len(self._records))
            self._synced.set()
            with self._lock:
                self._changed.notify_all()

    def _on_record(self, raw: bytes) -> None:
        try:
            record = record_mod.decode(raw)
        except MalformedRecord as exc:
            LOG.warning("central discovery at %s: ignored a malformed record (%s): %r",
                        self.store.name, exc, raw[:200])
            return
        with self._lock:
            old = self._records.get(record.owner)
            if old is not None and record.at < old.at:
                if not self.store.ordered:
                    return  # an older write, pushed after a newer one was read (Redis)
                # A rewrite (carry-forward, the command): its content, the heartbeat known.
                record = record.replace(at=old.at)
            self._records[record.owner] = record
            self._arrived[record.owner] = time.monotonic()
            self._carry_at.pop(record.owner, None)
            names = set(record.services) | set(old.services if old else ())
            for name in names:
                owners = self._owners_of.setdefault(name, set())
                if name in record.services:
                    owners.add(record.owner)
                else:
                    owners.discard(record.owner)
            self._resolve(names)

    def _on_beat(self, owner: str, at: float) -> None:
        with self._lock:
            record = self._records.get(owner)
            if record is None or at <= record.at:
                return
            self._records[owner] = record.replace(at=at)
            self._resolve(list(record.services))

    def _resolve(self, names: Iterable[str]) -> None:
        """Work out the answer for ``names`` (lock held); O(owners of each name)."""
        now = time.time()
        changed = False
        for name in names:
            owners = self._owners_of.get(name)
            if owners is not None and len(owners) > 1:
                self._contested.add(name)
            else:
                self._contested.discard(name)
            records = [self._records[owner] for owner in owners or ()]
            found: Optional[Resolved] = None
            if records:
                live = sorted((r for r in records
                               if r.live(now) and not r.services[name].stopped),
                              key=lambda r: (r.since, r.owner))
                if live:
                    chosen = live[0]
                    self._check_conflict(name, chosen, live[1:])
                else:
                    chosen = max(records, key=lambda r: (r.at, r.owner))
                found = (chosen.services[name], chosen)
            else:
                self._owners_of.pop(name, None)
            old = self._resolved.get(name)
            if found == old:
                continue
            changed = True
            if old is not None:
                self._count_known(old[0], -1)
            if found is None:
                del self._resolved[name]
            else:
                self._resolved[name] = found
                self._count_known(found[0], 1)
        if changed:
            self.version += 1
            self._changed.notify_all()

    def _count_known(self, entry: Entry, step: int) -> None:
        for exchange in (entry.exchange, entry.notifications):
            if exchange:
                count = self._known.get(exchange, 0) + step
                if count > 0:
                    self._known[exchange] = count
                else:
                    self._known.pop(exchange, None)

    def _check_conflict(self, name: str, chosen: Record, others: List[Record]) -> None:
        exchange = chosen.services[name].exchange
        rivals = [r for r in others if r.services[name].exchange != exchange]
        if not rivals:
            return
        key = (name, frozenset([chosen.owner, *(r.owner for r in rivals)]))
        if key in self._conflicts:
            return
        self._conflicts.add(key)
        claims = ", ".join(f"{r.owner} ({r.services[name].exchange})" for r in rivals)
        if chosen.owner == self.owner:
            LOG.warning("central discovery: service %s is claimed by %s too; our registration "
                        "(%s) came first and holds", name, claims, exchange)
        elif any(r.owner == self.owner for r in rivals):
            LOG.error("central discovery: service %s was claimed first by %s with exchange %s; "
                      "our registration (%s) is not used until that one expires", name,
                      chosen.owner, exchange, self.registrar.exchange_of(name))
        else:
            LOG.warning("central discovery: service %s is claimed by %s (%s, first, used) "
                        "and by %s", name, chosen.owner, exchange, claims)

    def _wait_synced(self) -> None:
        if not self._synced.is_set() and not self._synced.wait(self.sync_timeout):
            raise exceptions.UnableToDiscover(
                service=f"(central discovery at {self.store.name} could not be read within "
                        f"{self.sync_timeout:g} s)")

    def lookup(self, service: str) -> Optional[Resolved]:
        """Where ``service`` lives: the live first registration, else the last known."""
        if not self._synced.is_set():
            self._wait_synced()
        return self._resolved.get(service)

    def knows_exchange(self, exchange: str) -> bool:
        """True when some record names ``exchange`` (a service's, a client's replies)."""
        if not self._synced.is_set():
            self._wait_synced()
        return exchange in self._known

    def snapshot(self) -> Dict[str, Resolved]:
        """Every service and its answer now."""
        self._wait_synced()
        with self._lock:
            return dict(self._resolved)

    def records(self) -> List[Record]:
        """Every record kept, one per owner."""
        self._wait_synced()
        with self._lock:
            return list(self._records.values())

    def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` (checked at each change) is true; False on timeout."""
        with self._changed:
            return self._changed.wait_for(predicate, timeout)

    # -- the registrar ----------------------------------------------------

    def register(self, service: str, entry: Entry, timeout: float = 0.0) -> bool:
        """Announce ``service`` as this process's (see :meth:`Registrar.register`)."""
        return self.registrar.register(service, entry, timeout)

    def unregister(self, service: str, timeout: float = 1.0) -> None:
        """Withdraw one registration of ``service`` (see :meth:`Registrar.unregister`)."""
        self.registrar.unregister(service, timeout)

    def _tick(self) -> None:
        """Expiries (a first registration that lapsed gives way) and carry-forward."""
        with self._lock:
            if self._contested:
                self._resolve(list(self._contested))
            retention = self.store.retention
            if retention is None or not self.connected:
                return
            now = time.monotonic()
            due = []
            for owner, rec in self._records.items():
                if owner == self.owner or not rec.services or (rec.live() and rec.ttl > 0):
                    continue
                at = self._carry_at.setdefault(
                    owner, self._arrived[owner] + retention * random.uniform(0.5, 0.75))
                if now >= at:
                    due.append(rec)
        for rec in due:
            try:
                self.store.write(rec.owner, rec.encode(), WRITE_TIMEOUT)
            except (StoreUnavailable, exceptions.TavridaError, OSError) as exc:
                LOG.warning("central discovery at %s: cannot write %s's record again: %s",
                            self.store.name, rec.owner, exc)
                return


# -- one directory per store and process ------------------------------------

_directories: Dict[Tuple[str, str], Directory] = {}
_directories_lock = threading.Lock()


def acquire(config: ConnectionConfig, name: str = DEFAULT_NAME, shared: bool = True,
            **settings: float) -> Directory:
    """The process's directory of the store ``config`` names, started on first use.

    ``shared=False``: a directory of its own, as another process would have.
    """
    key = (config.url, name if shared else f"{name}\0{uuid.uuid4().hex}")
    with _directories_lock:
        directory = _directories.get(key)
        if directory is None:
            directory = Directory(open_store(config, name), **settings)
            directory.start()
            _directories[key] = directory
        directory.references += 1
        return directory


def release(directory: Directory) -> None:
    """Give back a directory from :func:`acquire`; the last one closes it."""
    with _directories_lock:
        directory.references -= 1
        if directory.references > 0:
            return
        for key, value in list(_directories.items()):
            if value is directory:
                del _directories[key]
    directory.close()

"""Central discovery's store on ``memory://``: records kept beside the in-process broker.

One table of records per :class:`~tavrida.transports.memory.MemoryBroker`
(a virtual host), so every process-local "service" on that broker shares
it, and :meth:`MemoryBroker.reset` forgets it with the broker. A write
reaches every watcher before it returns (no thread of its own).
"""

from __future__ import annotations

import threading
import weakref
from typing import Dict, List, Optional

from tavrida.config import ConnectionConfig
from tavrida.registry.store import OnBeat, OnRecord, OnState, Store, StoreUnavailable
from tavrida.transports.memory.broker import MemoryBroker


class _Table:
    """The records of one broker and store name, and who watches them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.records: Dict[str, bytes] = {}
        self.watchers: List["MemoryStore"] = []


_tables: "weakref.WeakKeyDictionary[MemoryBroker, Dict[str, _Table]]" = \
    weakref.WeakKeyDictionary()
_tables_lock = threading.Lock()


def _table(broker: MemoryBroker, name: str) -> _Table:
    with _tables_lock:
        tables = _tables.setdefault(broker, {})
        table = tables.get(name)
        if table is None:
            table = tables[name] = _Table()
        return table


class MemoryStore(Store):
    """Records in the in-memory broker of ``config``'s virtual host."""

    def __init__(self, config: ConnectionConfig, name: str) -> None:
        self._name = f"{config.safe_url} ({name})"
        self._table = _table(MemoryBroker.get(config.virtual_host), name)
        self._on_record: OnRecord = lambda raw: None
        self._closed = False
        #: Set by tests: writes fail and nothing is pushed, as if the broker were gone.
        self.unreachable = False

    @property
    def name(self) -> str:
        return self._name

    def write(self, key: str, record: bytes, timeout: float) -> None:
        if self.unreachable or self._closed:
            raise StoreUnavailable(store=self._name, reason="not reachable")
        table = self._table
        with table.lock:  # held while pushing: every watcher sees the writes in one order
            table.records[key] = bytes(record)
            for watcher in table.watchers:
                if not watcher.unreachable:
                    watcher._on_record(record)

    def watch(self, on_record: OnRecord, on_state: OnState,
              on_beat: Optional[OnBeat] = None) -> None:
        table = self._table
        with table.lock:
            self._on_record = on_record
            table.watchers.append(self)
            for raw in table.records.values():
                on_record(raw)
        on_state(True)

    def close(self) -> None:
        self._closed = True
        with self._table.lock:
            if self in self._table.watchers:
                self._table.watchers.remove(self)

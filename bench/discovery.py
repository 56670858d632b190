"""``python -m bench.discovery``: central discovery with 1,000 services and 100 watchers.

Not run by CI. Examples::

    python -m bench.discovery --url redis://127.0.0.1:6379/0
    python -m bench.discovery --url amqp://guest:guest@127.0.0.1:5672//
    python -m bench.discovery --url memory:// --services 1000 --watchers 100

Writes ``--services`` records (one owner each: the worst case, a process per
service) to a store of its own, starts ``--watchers`` watchers (each a
connection, a thread and a cache, as in a process of its own), then measures:

* **sync**: how long until every watcher holds every record;
* **fan-out**: for ``--changes`` changes written one at a time, how long until
  every watcher has it (median and worst);
* **heartbeats**: ``--beat-seconds`` of every owner heartbeating at the default
  rate (services / refresh writes per second), whether the watchers keep up,
  and how long a watcher started afterwards takes to sync (a stream replays
  its retention window);
* **store memory**: Redis ``MEMORY USAGE`` of the hash; RabbitMQ the stream's
  messages and bytes written (``rabbitmqctl list_queues``, when available).

The store is deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import threading
import time
import uuid
from typing import Any, Dict, List, Optional, Sequence

from tavrida.config import ConnectionConfig
from tavrida.registry.directory import Directory
from tavrida.registry.record import Entry, Record
from tavrida.registry.registrar import DEFAULT_REFRESH
from tavrida.registry.store import open_store


def _record(n: int, at: float) -> Record:
    name = f"bench_service_{n:04d}"
    return Record(f"bench-host/{n}/owner", {name: Entry(f"{name}_exchange", f"{name}_events",
                                                        f"{name}_queue")},
                  since=1.0, at=at, ttl=60.0)


def _wait_all(watchers: List[Directory], predicate: Any, timeout: float) -> Optional[float]:
    began = time.monotonic()
    for watcher in watchers:
        left = timeout - (time.monotonic() - began)
        if not watcher.wait(lambda w=watcher: predicate(w), max(left, 0.0)):
            return None
    return time.monotonic() - began


def _store_memory(url: str, name: str) -> Dict[str, Any]:
    conf = ConnectionConfig.from_url(url)
    if conf.scheme.startswith("redis"):
        import redis

        client = redis.Redis.from_url(conf.urls[0])
        try:
            return {"redis_hash_bytes": client.memory_usage(name),
                    "records": client.hlen(name)}
        finally:
            client.close()
    if conf.scheme.startswith("amqp") and shutil.which("rabbitmqctl"):
        out = subprocess.run(["rabbitmqctl", "-q", "list_queues", "name", "messages",
                              "memory"], capture_output=True, text=True, timeout=60).stdout
        for line in out.splitlines():
            parts = line.split()
            if parts and parts[0] == name:
                return {"stream_messages": int(parts[1]), "queue_process_memory": int(parts[2])}
    return {}


def _delete(url: str, name: str) -> None:
    conf = ConnectionConfig.from_url(url)
    if conf.scheme.startswith("redis"):
        import redis

        client = redis.Redis.from_url(conf.urls[0])
        client.delete(name)
        client.close()
    elif conf.scheme.startswith("amqp"):
        import amqp

        conn = amqp.Connection(f"{conf.host}:{conf.port}", userid=conf.credentials.username
                               if conf.credentials else "guest",
                               password=conf.credentials.password if conf.credentials else "guest",
                               virtual_host=conf.virtual_host)
        conn.connect()
        conn.channel().queue_delete(name)
        conn.close()


def run(url: str, services: int, watchers: int, changes: int,
        beat_seconds: float) -> Dict[str, Any]:
    conf = ConnectionConfig.from_url(url)
    name = f"tavrida.discovery.bench-{uuid.uuid4().hex[:8]}"
    writer = open_store(conf, name)
    figures: Dict[str, Any] = {"url": conf.safe_url, "services": services, "watchers": watchers}
    started: List[Directory] = []
    try:
        now = time.time()
        began = time.monotonic()
        written = 0
        for n in range(services):
            raw = _record(n, now).encode()
            written += len(raw)
            writer.write(_record(n, now).owner, raw, 30)
        figures["register_seconds"] = round(time.monotonic() - began, 2)
        figures["record_bytes"] = written // services
        began = time.monotonic()
        for _ in range(watchers):
            watcher = Directory(open_store(conf, name), sync_timeout=120)
            watcher.start()
            started.append(watcher)
        synced = _wait_all(started, lambda w: len(w._resolved) >= services, 300)
        figures["sync_all_seconds"] = round(time.monotonic() - began, 2) if synced else None
        lags: List[float] = []
        for change in range(changes):
            rec = _record(0, time.time()).replace(
                services={"bench_service_0000": Entry(f"moved_{change}")})
            began = time.monotonic()
            writer.write(rec.owner, rec.encode(), 30)
            took = _wait_all(started, lambda w, c=change: w._resolved.get(
                "bench_service_0000", (Entry("?"),))[0].exchange == f"moved_{c}", 60)
            if took is not None:
                lags.append(time.monotonic() - began)
        if lags:
            figures["fanout_median_ms"] = round(statistics.median(lags) * 1000, 1)
            figures["fanout_max_ms"] = round(max(lags) * 1000, 1)
        rate = services / DEFAULT_REFRESH
        figures["heartbeats_per_second"] = round(rate, 1)
        deadline = time.monotonic() + beat_seconds
        beats = full_beats = 0
        began = time.monotonic()
        while time.monotonic() < deadline:
            n = beats % services
            rec = _record(n, time.time())
            if not writer.beat(rec.owner, rec.at, 30):  # as an owner's directory does
                writer.write(rec.owner, rec.encode(), 30)
                full_beats += 1
            beats += 1
            ahead = beats / rate - (time.monotonic() - began)
            if ahead > 0:
                time.sleep(ahead)
        figures["heartbeats_written"] = beats
        figures["heartbeat_rate_reached"] = round(beats / (time.monotonic() - began), 1)
        last = _record((beats - 1) % services, 0)
        caught = _wait_all(started, lambda w: w._records.get(last.owner) is not None and
                           w._records[last.owner].at > now, 60)
        figures["watchers_kept_up"] = caught is not None
        figures["deliveries_per_second"] = round(figures["heartbeat_rate_reached"] * watchers)
        began = time.monotonic()
        late = Directory(open_store(conf, name), sync_timeout=300)
        late.start()
        started.append(late)
        late.lookup("bench_service_0000")
        figures["late_watcher_sync_seconds"] = round(time.monotonic() - began, 2)
        figures.update(_store_memory(url, name))
        figures["heartbeats_as_records"] = full_beats  # the rest went to the beats exchange
        return figures
    finally:
        closers = [threading.Thread(target=w.close) for w in started]
        for closer in closers:
            closer.start()
        for closer in closers:
            closer.join(10)
        writer.close()
        _delete(url, name)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.discovery", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="memory://", help="the store's broker")
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--watchers", type=int, default=100)
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--beat-seconds", type=float, default=30.0)
    args = parser.parse_args(argv)
    figures = run(args.url, args.services, args.watchers, args.changes, args.beat_seconds)
    print(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

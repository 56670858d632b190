"""``tavrida discovery``: read and edit the central discovery records from a shell.

::

    tavrida discovery list [--url URL] [--json]
    tavrida discovery set SERVICE EXCHANGE [--publisher EXCHANGE] [--url URL]
    tavrida discovery remove SERVICE [--url URL]

``set`` writes a hand-made record (for a tavrida 1.0 service, which never
registers): it never expires and holds until removed. ``remove`` takes a
service out of every record that names it; a server still running
registers it again at its next heartbeat. The store is the broker of
``--url``, then ``$TAVRIDA_URL``, then RabbitMQ on localhost.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any, Dict, List, Optional

from tavrida import config as config_mod
from tavrida import exceptions
from tavrida.registry.directory import Directory
from tavrida.registry.record import Entry, Record
from tavrida.registry.store import DEFAULT_NAME, Store, open_store

URL_ENV = "TAVRIDA_URL"
DEFAULT_URL = "amqp://guest:guest@localhost:5672//"
#: Seconds the command waits for the store.
TIMEOUT = 10.0


def add_parser(commands: Any) -> None:
    """Add ``discovery`` and its actions to the ``tavrida`` command's subparsers."""
    parser = commands.add_parser("discovery", help="list, set or remove central discovery records",
                                 description=__doc__.split("::")[0].strip(),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = actions.add_parser("list", help="print every record: service, exchange, owner, age")
    show.add_argument("--json", action="store_true", help="print JSON")
    put = actions.add_parser("set", help="enter a service by hand (a 1.0 service, say)")
    put.add_argument("service", metavar="SERVICE")
    put.add_argument("exchange", metavar="EXCHANGE", help="its RPC exchange")
    put.add_argument("--publisher", metavar="EXCHANGE", help="its notification exchange")
    remove = actions.add_parser("remove", help="take a service out of every record")
    remove.add_argument("service", metavar="SERVICE")
    for sub in (show, put, remove):
        sub.add_argument("--url", help=f"broker URL (default: ${URL_ENV} or {DEFAULT_URL})")
        sub.add_argument("--name", default=DEFAULT_NAME,
                         help=f"store name (default {DEFAULT_NAME})")


def _store(args: argparse.Namespace) -> Store:
    url = args.url or os.environ.get(URL_ENV) or DEFAULT_URL
    try:
        conf = config_mod.ConnectionConfig.from_url(url)
    except exceptions.IncorrectAMQPConfig as exc:
        raise ValueError(f"{'--url' if args.url else URL_ENV}: {exc.message}") from None
    return open_store(conf, args.name)


def _records(store: Store) -> List[Record]:
    directory = Directory(store, sync_timeout=TIMEOUT)
    store.watch(directory._on_record, directory._on_state)
    return directory.records()


def rows(records: List[Record], now: Optional[float] = None) -> List[Dict[str, Any]]:
    """One row per service and owner, the one lookups answer marked ``used``."""
    now = time.time() if now is None else now
    directory_rows: List[Dict[str, Any]] = []
    for rec in records:
        for service, entry in rec.services.items():
            state = ("manual" if rec.ttl == 0 and rec.alive else
                     "live" if rec.live(now) else "stopped" if not rec.alive else "expired")
            directory_rows.append({"service": service, "exchange": entry.exchange,
                                   "notifications": entry.notifications or "",
                                   "queue": entry.queue or "", "role": entry.role,
                                   "owner": rec.owner, "state": state,
                                   "age": round(max(0.0, now - rec.at), 1),
                                   "since": rec.since})
    return sorted(directory_rows, key=lambda row: (row["service"], row["since"], row["owner"]))


def _list(args: argparse.Namespace, store: Store) -> int:
    table = rows(_records(store))
    if args.json:
        print(json.dumps(table, indent=1))
        return 0
    head = ("SERVICE", "EXCHANGE", "NOTIFICATIONS", "ROLE", "OWNER", "STATE", "AGE")
    lines = [head] + [(r["service"], r["exchange"], r["notifications"] or "-", r["role"],
                       r["owner"], r["state"], f"{r['age']:.0f}s") for r in table]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    for line in lines:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())
    return 0


def _set(args: argparse.Namespace, store: Store) -> int:
    now = time.time()
    record = Record(f"manual/{args.service}",
                    {args.service: Entry(args.exchange, args.publisher or None)},
                    since=now, at=now, ttl=0, kind="manual")
    store.write(record.owner, record.encode(), TIMEOUT)
    print(f"{args.service} -> {args.exchange}"
          + (f" (notifications {args.publisher})" if args.publisher else ""))
    return 0


def _remove(args: argparse.Namespace, store: Store) -> int:
    found = [rec for rec in _records(store) if args.service in rec.services]
    if not found:
        print(f"tavrida: {args.service} is in no record", flush=True)
        return 1
    for rec in found:
        services = {name: entry for name, entry in rec.services.items() if name != args.service}
        alive = rec.alive and (bool(services) or rec.kind != "manual")
        changed = rec.replace(services=services, at=rec.at + 0.001, alive=alive)
        store.write(rec.owner, changed.encode(), TIMEOUT)
        if rec.live() and rec.kind != "manual":
            print(f"{args.service}: removed from {rec.owner}, which is still running and "
                  f"registers it again at its next heartbeat")
    print(f"{args.service}: removed from {len(found)} record(s)")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run ``tavrida discovery ACTION``; returns the exit code."""
    store = _store(args)
    try:
        action = {"list": _list, "set": _set, "remove": _remove}[args.action]
        return action(args, store)
    finally:
        store.close()

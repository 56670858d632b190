"""The record a process announces: which services it serves on which exchanges.

One record per owner (a process, or a hand-made entry), written as JSON::

    {"v": 1, "owner": "host/4242/0f3a9c1e", "kind": "process",
     "since": 1733500000.0, "at": 1733500030.0, "ttl": 90.0, "alive": true,
     "services": {"billing": {"exchange": "billing_exchange",
                              "notifications": "billing_events",
                              "queue": "billing_queue", "role": "service"}}}

``since`` is when the owner first registered (the first registration of a
name wins a conflict), ``at`` its last heartbeat, ``ttl`` how long after
``at`` the record counts as live (0: for ever, hand-made entries);
``alive`` false once its owner stopped. ``role`` is ``service`` (a server
consumes from ``exchange``) or ``client`` (``exchange`` is where a client's
answers come back); ``"stopped": true`` marks a service whose server
stopped while its owner goes on (kept as last known). Records are validated
on read: anything else is :class:`MalformedRecord`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from typing import Any, Dict, Mapping, Optional

VERSION = 1
ROLES = ("service", "client")
#: Longest record accepted (bytes): a record is a few hundred bytes per service.
MAX_RECORD_SIZE = 1 << 20


class MalformedRecord(ValueError):
    """A record that is not what :mod:`tavrida.registry.record` describes."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """Where one service lives, as one owner announced it."""

    exchange: str
    notifications: Optional[str] = None
    queue: Optional[str] = None
    role: str = "service"
    #: Its server (or client) stopped while the owner goes on: kept as last known.
    stopped: bool = False

    def to_dict(self) -> Dict[str, Any]:
        data: Dict[str, Any] = {"exchange": self.exchange, "notifications": self.notifications,
                                "queue": self.queue, "role": self.role}
        if self.stopped:
            data["stopped"] = True
        return data


@dataclasses.dataclass(frozen=True)
class Record:
    """Everything one owner announced, at one moment."""

    owner: str
    services: Mapping[str, Entry]
    since: float
    at: float
    ttl: float
    alive: bool = True
    kind: str = "process"

    def live(self, now: Optional[float] = None) -> bool:
        """True while its owner runs (heartbeats within ``ttl``; hand-made: always)."""
        if not self.alive:
            return False
        if self.ttl <= 0:
            return True
        return (time.time() if now is None else now) <= self.at + self.ttl

    def encode(self) -> bytes:
        return json.dumps({
            "v": VERSION, "owner": self.owner, "kind": self.kind, "since": self.since,
            "at": self.at, "ttl": self.ttl, "alive": self.alive,
            "services": {name: entry.to_dict() for name, entry in sorted(self.services.items())},
        }, separators=(",", ":")).encode("utf-8")

    def replace(self, **changes: Any) -> "Record":
        return dataclasses.replace(self, **changes)


def _text(value: Any, what: str, optional: bool = False) -> Optional[str]:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value or len(value) > 255:
        raise MalformedRecord(f"{what} must be a non-empty string of at most 255 characters, "
                              f"not {value!r:.80}")
    return value


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value < 0:
        raise MalformedRecord(f"{what} must be a number >= 0, not {value!r:.80}")
    return float(value)


def decode(raw: bytes) -> Record:
    """The record in ``raw``; raises :class:`MalformedRecord` saying what is wrong."""
    if len(raw) > MAX_RECORD_SIZE:
        raise MalformedRecord(f"{len(raw)} bytes, more than {MAX_RECORD_SIZE}")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedRecord(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MalformedRecord("not a JSON object")
    if data.get("v") != VERSION:
        raise MalformedRecord(f"version {data.get('v')!r:.20}, not {VERSION}")
    owner = _text(data.get("owner"), "owner")
    assert owner is not None
    kind = _text(data.get("kind", "process"), "kind")
    services = data.get("services")
    if not isinstance(services, dict):
        raise MalformedRecord("services must be an object")
    entries: Dict[str, Entry] = {}
    for name, value in services.items():
        _text(name, "a service name")
        if not isinstance(value, dict):
            raise MalformedRecord(f"service {name!r:.80} must be an object")
        role = value.get("role", "service")
        if role not in ROLES:
            raise MalformedRecord(f"service {name!r:.80}: role {role!r:.20} is not one of "
                                  f"{', '.join(ROLES)}")
        exchange = _text(value.get("exchange"), f"service {name!r:.80}: exchange")
        assert exchange is not None
        stopped = value.get("stopped", False)
        if not isinstance(stopped, bool):
            raise MalformedRecord(f"service {name!r:.80}: stopped must be true or false")
        entries[name] = Entry(exchange,
                              _text(value.get("notifications"),
                                    f"service {name!r:.80}: notifications", optional=True),
                              _text(value.get("queue"), f"service {name!r:.80}: queue",
                                    optional=True), role, stopped)
    alive = data.get("alive", True)
    if not isinstance(alive, bool):
        raise MalformedRecord(f"alive must be true or false, not {alive!r:.20}")
    return Record(owner, entries, _number(data.get("since"), "since"),
                  _number(data.get("at"), "at"), _number(data.get("ttl"), "ttl"), alive,
                  kind or "process")

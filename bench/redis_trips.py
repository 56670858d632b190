"""Redis commands and round trips per message, client and service, tavrida and raw kombu.

::

    python -m bench.redis_trips --url redis://127.0.0.1:6379/0 --calls 500 --casts 1000

runs the call and cast scenarios (as :mod:`bench.profiling` does) with
every Redis command the client and the service process write recorded in
the measured block (the client's ``n`` calls or casts; the service's run,
its warm-up messages included): each ``sendall`` is parsed as RESP, and a
round trip is a run of writes on one socket followed by a read on it (a
pipeline is one). Counts do not depend on the machine's load, except for
the idle pops of a consumer (``BRPOP`` or ``BRPOPLPUSH`` timing out after
``brpop_timeout``, and tavrida's due-retry check, ``EVAL``, every 5 s on a
queue without delays): those grow with the run's wall time.
"""

from __future__ import annotations

import argparse
import collections
import json
import socket
import sys
import tempfile
from typing import Any, Counter, Dict, Iterator, List, Optional, Sequence, Tuple

_events: List[Tuple[int, str, bytes]] = []
_on = [False]


def install() -> None:
    """Wrap ``socket.socket``'s ``sendall`` and ``recv`` to record Redis traffic (once)."""
    cls: Any = socket.socket
    if getattr(cls, "_redis_trips_installed", False):
        return
    base: Any = cls.__mro__[1]
    events, on = _events, _on

    def sendall(sock: Any, data: Any, *args: Any) -> Any:
        if on[0]:
            events.append((id(sock), "send", bytes(data)))
        return base.sendall(sock, data, *args)

    def recv(sock: Any, size: int, *args: Any) -> Any:
        data = base.recv(sock, size, *args)
        if on[0] and not (args and args[0]):  # a MSG_PEEK look is not a read
            events.append((id(sock), "recv", b""))
        return data

    cls.sendall, cls.recv = sendall, recv
    cls._redis_trips_installed = True


def recording(path: str) -> Iterator[None]:
    """Record this process's Redis writes and reads in the block, as JSON to ``path``."""
    import contextlib

    @contextlib.contextmanager
    def block() -> Iterator[None]:
        install()
        _events.clear()
        _on[0] = True
        try:
            yield
        finally:
            _on[0] = False
            with open(path, "w", encoding="utf-8") as handle:
                json.dump([(sock, kind, data.decode("latin-1")) for sock, kind, data in _events],
                          handle)
            _events.clear()

    return block()


def _commands(stream: bytes) -> Iterator[Tuple[int, str]]:
    """(offset just past it, NAME) of each RESP command in ``stream`` (a client's writes)."""
    pos = 0
    while pos < len(stream):
        if stream[pos:pos + 1] != b"*":
            raise ValueError(f"not RESP at {pos}: {stream[pos:pos + 40]!r}")
        end = stream.index(b"\r\n", pos)
        count = int(stream[pos + 1:end])
        pos = end + 2
        name = ""
        for i in range(count):
            end = stream.index(b"\r\n", pos)
            size = int(stream[pos + 1:end])
            pos = end + 2
            if i == 0:
                name = stream[pos:pos + size].decode("ascii").upper()
            pos += size + 2
        yield pos, name


def count(path: str) -> Tuple[Counter[str], int]:
    """(commands by name, round trips) of one process's recording."""
    with open(path, encoding="utf-8") as handle:
        events = [(sock, kind, data.encode("latin-1")) for sock, kind, data in json.load(handle)]
    streams: Dict[int, bytearray] = collections.defaultdict(bytearray)
    sending: Dict[int, bool] = {}
    trips = 0
    for sock, kind, data in events:
        if kind == "send":
            streams[sock] += data
            sending[sock] = True
        elif sending.get(sock):
            sending[sock] = False
            trips += 1
    names: Counter[str] = collections.Counter()
    for stream in streams.values():
        names.update(name for _, name in _commands(bytes(stream)))
    return names, trips


def _format(names: Counter[str], trips: int, n: int) -> str:
    total = sum(names.values())
    detail = " ".join(f"{name} {value / n:.2f}" for name, value in names.most_common())
    return f"{total / n:6.2f} commands {trips / n:6.2f} round trips  ({detail})"


def main(argv: Optional[Sequence[str]] = None) -> int:
    from bench.common import Setup
    from bench.profiling import profile_pair

    parser = argparse.ArgumentParser(prog="python -m bench.redis_trips", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--casts", type=int, default=1000)
    parser.add_argument("--sides", default="tavrida,kombu")
    parser.add_argument("--scenarios", default="call,cast")
    args = parser.parse_args(argv)
    setup = Setup(url=args.url)
    rows = []
    with tempfile.TemporaryDirectory(prefix="tavrida-redis-trips-") as out:
        for side in [name.strip() for name in args.sides.split(",") if name.strip()]:
            for scenario in [name.strip() for name in args.scenarios.split(",")]:
                n = args.calls if scenario == "call" else args.casts
                for title, path, _ in profile_pair(setup, side, scenario, n, out,
                                                   ext=".redis.json"):
                    # the service's block also holds the warm-up's messages
                    per = n + setup.warmup if title.split(": ")[1].startswith("service") else n
                    rows.append((title, *count(path), per))
    print("per message (Redis commands each process writes; a pipeline is one round trip)")
    for title, names, trips, per in rows:
        print(f"{title}\n    {_format(names, trips, per)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

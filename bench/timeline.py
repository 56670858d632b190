"""Where a sequential call's time goes between the processes: a timeline of socket I/O.

::

    python -m bench.timeline --url amqp://guest:guest@127.0.0.1//
    python -m bench.timeline --url amqp://... --kombu-wire   # kombu sends tavrida's message

runs scenario 1 (sequential blocking calls) for tavrida and for the kombu
baseline with every ``sendall`` and ``recv`` of the client and the service
process timestamped (``time.perf_counter_ns``: one clock for all processes
of the machine), then splits each call into four legs, medians in
microseconds: the request from the client's write to the service's first
read (the broker and the service's wake-up), the service from that read to
its answer's write, the answer from that write to the client's last read
before its next request (the broker, the client's wake-up and reading), and
the client from there to its next request. The timestamps cost a few
microseconds per socket call on both sides alike; compare the sides, not the
totals with ``python -m bench``.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import json
import os
import socket
import tempfile
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

#: A write this short is an ack or a confirm frame, not an answer.
SMALLEST_ANSWER = 100
LEGS = ("request: client write -> service read", "service: read -> answer write",
        "answer: service write -> client read", "client: answer read -> next request")

Event = Tuple[int, str, int]


#: Set in the environment by :func:`main`: child processes install the recorder when
#: :mod:`bench.common` is imported, before any connection binds a socket's methods
#: (py-amqp keeps ``sock.sendall`` and ``sock.recv`` as bound methods).
ENVIRONMENT = "TAVRIDA_BENCH_TIMELINE"
_events: List[Event] = []
_on = [False]


def install() -> None:
    """Wrap ``socket.socket``'s ``sendall``, ``recv``, ``recv_into`` (once per process)."""
    cls: Any = socket.socket
    if getattr(cls, "_timeline_installed", False):
        return
    base: Any = cls.__mro__[1]  # _socket.socket: the methods the class inherits
    clock = time.perf_counter_ns
    events, on = _events, _on

    def sendall(sock: Any, data: Any, *args: Any) -> Any:
        if on[0]:
            events.append((clock(), "send", len(data)))
        return base.sendall(sock, data, *args)

    def recv(sock: Any, size: int, *args: Any) -> Any:
        data = base.recv(sock, size, *args)
        if on[0]:
            events.append((clock(), "recv", len(data)))
        return data

    def recv_into(sock: Any, buffer: Any, *args: Any) -> Any:
        count = base.recv_into(sock, buffer, *args)
        if on[0]:
            events.append((clock(), "recv", count))
        return count

    cls.sendall, cls.recv, cls.recv_into = sendall, recv, recv_into
    cls._timeline_installed = True


@contextlib.contextmanager
def recording(path: str) -> Iterator[None]:
    """Keep this process's socket writes and reads in the block; JSON to ``path``.

    Needs :func:`install` first (:data:`ENVIRONMENT` set when the process
    started); without it nothing is recorded.
    """
    _events.clear()
    _on[0] = True
    try:
        yield
    finally:
        _on[0] = False
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(_events, handle)
        _events.clear()


def legs(client: Sequence[Event], service: Sequence[Event]) -> Dict[str, List[float]]:
    """Each call's four legs (microseconds) from the two processes' events."""
    requests = [t for t, kind, _ in client if kind == "send"]
    client_reads = [t for t, kind, size in client if kind == "recv" and size > 0]
    service_reads = [t for t, kind, size in service if kind == "recv" and size > 0]
    answers = [t for t, kind, size in service if kind == "send" and size >= SMALLEST_ANSWER]
    found: Dict[str, List[float]] = {leg: [] for leg in LEGS}
    for sent, following in zip(requests, requests[1:]):
        i = bisect.bisect_left(service_reads, sent)
        if i == len(service_reads):
            break
        read = service_reads[i]
        j = bisect.bisect_left(answers, read)
        k = bisect.bisect_left(client_reads, following) - 1
        if j == len(answers) or k < 0:
            break
        answered, got = answers[j], client_reads[k]
        if not sent < read < answered < got < following:
            continue  # not one call after another (a warm-up, a retry): left out
        for leg, (start, end) in zip(LEGS, ((sent, read), (read, answered), (answered, got),
                                            (got, following))):
            found[leg].append((end - start) / 1000)
    return found


def run_side(setup: Any, side: str, n: int, directory: str) -> Dict[str, List[float]]:
    """Scenario 1 for ``side`` with both processes' socket I/O recorded."""
    from bench.profiling import profile_pair

    (_, client_file, _), (_, service_file, _) = profile_pair(
        setup, side, "call", n, directory, ext=".timeline.json")
    with open(client_file, encoding="utf-8") as handle:
        client = json.load(handle)
    with open(service_file, encoding="utf-8") as handle:
        service = json.load(handle)
    return legs(client, service)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from bench.common import Setup, median

    parser = argparse.ArgumentParser(prog="python -m bench.timeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672//")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--kombu-wire", action="store_true",
                        help="the kombu side sends tavrida's wire message (bench.kombu_wire)")
    args = parser.parse_args(argv)
    setup = Setup(url=args.url, kombu_wire=args.kombu_wire)
    os.environ[ENVIRONMENT] = "1"  # the children (spawned) install the recorder
    results = {}
    with tempfile.TemporaryDirectory(prefix="tavrida-timeline-") as directory:
        for side in ("tavrida", "kombu"):
            results[side] = run_side(setup, side, args.calls, directory)
    print(f"medians per call, microseconds ({args.calls} calls"
          f"{'; kombu sends tavrida’s wire message' if args.kombu_wire else ''})")
    print(f"{'leg':40s} {'tavrida':>9s} {'kombu':>9s}  calls counted")
    for leg in LEGS:
        mine, theirs = results["tavrida"][leg], results["kombu"][leg]
        print(f"{leg:40s} {median(mine):9.1f} {median(theirs):9.1f}  {len(mine)} / {len(theirs)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

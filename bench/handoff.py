"""The cost of a thread hand-off, without tavrida: what bounds scenario 4's default calls.

::

    python -m bench.handoff                 # the threads on whatever CPUs the OS picks
    taskset -c 0 python -m bench.handoff    # both threads on one CPU

Two threads of one process pass a message back and forth through
``queue.SimpleQueue`` (the lightest blocking hand-off of the standard
library), each doing ``--work`` microseconds of busy work before it answers,
as a caller and a server thread do. A blocking call on tavrida's
``memory://`` with a server thread is two such hand-offs (request, answer);
the opt-in ``inline_calls`` path has none. The figure printed is the time of
a round trip minus the work: the hand-offs alone.
"""

from __future__ import annotations

import argparse
import queue
import threading
import time
from typing import List, Optional, Sequence


def _busy(microseconds: float) -> None:
    end = time.perf_counter() + microseconds / 1e6
    while time.perf_counter() < end:
        pass


def round_trips(n: int, work_us: float) -> float:
    """Microseconds per round trip of ``n``, the ``2 * work_us`` of work taken out."""
    requests: "queue.SimpleQueue[int]" = queue.SimpleQueue()
    answers: "queue.SimpleQueue[int]" = queue.SimpleQueue()

    def serve() -> None:
        for _ in range(n):
            item = requests.get(timeout=10)
            _busy(work_us)
            answers.put(item)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    began = time.perf_counter()
    for i in range(n):
        _busy(work_us)
        requests.put(i)
        answers.get(timeout=10)
    elapsed = time.perf_counter() - began
    server.join(10)
    return elapsed / n * 1e6 - 2 * work_us


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.handoff", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--round-trips", type=int, default=5000)
    parser.add_argument("--work", type=float, nargs="*", default=[0.0, 20.0, 60.0],
                        metavar="US", help="busy work per side, microseconds (0 20 60)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    for work in args.work:
        runs: List[float] = sorted(round_trips(args.round_trips, work)
                                   for _ in range(args.repeat))
        print(f"work {work:5.1f} us a side: hand-offs {runs[len(runs) // 2]:6.1f} us per round "
              f"trip (median of {args.repeat}; runs {runs[0]:.1f}-{runs[-1]:.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Where a sequential call's CPU goes: client, service and broker, per call.

::

    python -m bench.cpu_split --url amqp://guest:guest@127.0.0.1// --calls 4000 --rounds 3
    python -m bench.cpu_split --url redis://127.0.0.1:6379/0

runs scenario 1 (sequential blocking calls) for tavrida and for the kombu
baseline, the sides back to back in each round, and reads the CPU time the
client, the service and the broker's process spent during the client's calls
(``/proc/PID/stat``; the broker is found by name, ``beam.smp`` or
``redis-server``, or given with ``--broker-pid``), with the machine's idle
share and the calls' latency distribution. Linux only. The broker is
shared: run it alone, as the benchmark.
"""

from __future__ import annotations

import argparse
import os
import subprocess
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

if TYPE_CHECKING:
    from bench.common import Setup

#: The broker's process name by URL scheme.
BROKER_PROCESS = {"amqp": "beam.smp", "pyamqp": "beam.smp", "redis": "redis-server"}


def process_cpu(stat: str, ticks: int) -> float:
    """Seconds of user and system CPU in a ``/proc/PID/stat`` line."""
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / ticks


def machine_times(line: str) -> Tuple[int, int]:
    """(idle, total) clock ticks of the ``cpu`` line of ``/proc/stat``."""
    values = [int(value) for value in line.split()[1:]]
    return values[3], sum(values)


def broker_pid(url: str) -> int:
    """The pid of the broker's process on this machine, found by name."""
    scheme = url.split(":", 1)[0]
    name = BROKER_PROCESS.get(scheme)
    if name is None:
        raise SystemExit(f"no broker process to find for {scheme}://: give --broker-pid")
    found = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True).stdout.split()
    if len(found) != 1:
        raise SystemExit(f"{len(found)} processes named {name}: give --broker-pid")
    return int(found[0])


class Meter:
    """CPU seconds of some processes and the machine's idle share, between two reads."""

    def __init__(self, pids: Dict[str, int]) -> None:
        self._pids = pids
        self._ticks = os.sysconf("SC_CLK_TCK")
        self._start = self._read()

    def _read(self) -> Tuple[Dict[str, float], Tuple[int, int]]:
        cpu = {}
        for role, pid in self._pids.items():
            with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
                cpu[role] = process_cpu(handle.read(), self._ticks)
        with open("/proc/stat", encoding="ascii") as handle:
            return cpu, machine_times(handle.readline())

    def since(self) -> Tuple[Dict[str, float], float]:
        """CPU seconds per process since the meter was made, and the idle share."""
        (cpu0, (idle0, total0)), (cpu1, (idle1, total1)) = self._start, self._read()
        return ({role: cpu1[role] - cpu0[role] for role in cpu0},
                (idle1 - idle0) / max(total1 - total0, 1))


def run_side(setup: Setup, side: str, n: int, broker: int) -> str:
    """One side's ``n`` calls: a line of calls/s, CPU per call and latencies."""
    from bench.common import median, percentile
    from bench.scenarios import Cluster, side_module

    module = side_module(side)
    with Cluster(setup) as cluster:
        names = cluster.names("cpusplit")
        service = cluster.spawn(module.serve, setup, names, "rpc", 0)
        service.expect("ready", setup.timeout)
        pid = service.process.pid
        assert pid is not None  # started
        meter = Meter({"service": pid, "broker": broker})
        result = cluster.spawn(module.call_client, setup, names, n).expect(
            "result", setup.timeout)
        cpu, idle = meter.since()
    latencies: List[float] = [value * 1e6 for value in result["latencies"]]
    per_call = {"client": result["cpu"] / n * 1e6,
                **{role: seconds / n * 1e6 for role, seconds in cpu.items()}}
    return (f"{side:8s} {n / result['elapsed']:8,.0f} {per_call['client']:7.0f} "
            f"{per_call['service']:8.0f} {per_call['broker']:7.0f} {idle * 100:5.1f}% "
            f"{sum(latencies) / n:7.0f} {median(latencies):7.0f} "
            f"{percentile(latencies, 99):7.0f} {max(latencies):8.0f}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    from bench.common import Setup

    parser = argparse.ArgumentParser(prog="python -m bench.cpu_split", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672//")
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--broker-pid", type=int, default=0,
                        help="the broker's process (default: found by name)")
    parser.add_argument("--kombu-wire", action="store_true",
                        help="the kombu side sends tavrida's wire message (bench.kombu_wire)")
    args = parser.parse_args(argv)
    setup = Setup(url=args.url, kombu_wire=args.kombu_wire)
    broker = args.broker_pid or broker_pid(args.url)
    print(f"per call, microseconds ({args.calls} calls a side and round"
          f"{'; kombu sends tavrida’s wire message' if args.kombu_wire else ''}); "
          "idle: the machine's, during the calls")
    print(f"{'side':8s} {'calls/s':>8s} {'client':>7s} {'service':>8s} {'broker':>7s} "
          f"{'idle':>6s} {'mean':>7s} {'median':>7s} {'p99':>7s} {'max':>8s}")
    for _ in range(args.rounds):
        for side in ("tavrida", "kombu"):
            print(run_side(setup, side, args.calls, broker), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

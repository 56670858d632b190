"""cProfile of tavrida's client and service sides, scenario by scenario.

::

    python -m bench.profiling --url amqp://guest:guest@127.0.0.1// --out bench/results/profile

runs the call and cast scenarios (``--scenarios`` adds bulk, fanout and
backlog) with cProfile in the client process and in the service process,
for tavrida and for the kombu baseline (so call counts per message can be
compared), plus tavrida's in-memory pipeline in one thread (cast then
drain, ``memory`` in ``--scenarios``); writes ``<out>/<name>.pstats`` and prints the
top functions by own time with their share of the busy time (the time not
spent waiting in a socket read or on a lock).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pstats
import sys
from typing import Any, Iterator, List, Optional, Sequence, Tuple

#: Own time of these built-ins is mostly waiting: blocking socket reads (a socket with a
#: timeout waits inside recv), poll/select, lock and condition waits.
WAITS = ("poll", "select", "epoll", "acquire", "wait", "sleep", "recv")


@contextlib.contextmanager
def maybe_profile(path: str) -> Iterator[None]:
    """Profile the block (this thread only) into ``path``; nothing if ``path`` is empty.

    A ``path`` ending in ``.timeline.json`` records the process's socket I/O
    instead (:func:`bench.timeline.recording`), one ending in ``.redis.json``
    its Redis commands (:func:`bench.redis_trips.recording`).
    """
    if not path:
        yield
        return
    if path.endswith(".timeline.json"):
        from bench.timeline import recording

        with recording(path):
            yield
        return
    if path.endswith(".redis.json"):
        from bench import redis_trips

        with redis_trips.recording(path):
            yield
        return
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        yield
    finally:
        profiler.disable()
        profiler.dump_stats(path)


def _is_wait(func: Tuple[str, int, str]) -> bool:
    filename, _, name = func
    return filename == "~" and any(word in name for word in WAITS)


def top(path: str, limit: int = 20) -> List[dict]:
    """The ``limit`` functions with most own time: share of all and of busy time."""
    stats: Any = pstats.Stats(path).stats
    total = sum(entry[2] for entry in stats.values()) or 1e-12
    busy = sum(entry[2] for func, entry in stats.items() if not _is_wait(func)) or 1e-12
    rows = []
    for func, (_, ncalls, tottime, cumtime, _) in sorted(
            stats.items(), key=lambda item: item[1][2], reverse=True)[:limit]:
        filename, line, name = func
        where = name if filename == "~" else f"{_short(filename)}:{line}:{name}"
        rows.append({"function": where, "calls": ncalls, "own_s": tottime, "cum_s": cumtime,
                     "share_total": tottime / total,
                     "share_busy": None if _is_wait(func) else tottime / busy})
    return rows


def per_message(path: str, n: int) -> Tuple[float, float]:
    """Function calls and busy microseconds per message of a profile of ``n`` messages.

    The call count does not depend on the machine's load, so it compares
    two profiles taken on a busy machine.
    """
    stats: Any = pstats.Stats(path).stats
    calls = sum(entry[1] for entry in stats.values())
    busy = sum(entry[2] for func, entry in stats.items() if not _is_wait(func))
    return calls / n, busy / n * 1e6


def _short(filename: str) -> str:
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return os.path.basename(filename)


def print_top(title: str, path: str, limit: int, out: Any = sys.stdout) -> None:
    """Print :func:`top` as a table."""
    print(f"\n== {title} ({path})", file=out)
    print(f"{'own s':>8} {'%all':>6} {'%busy':>6} {'calls':>9}  function", file=out)
    for row in top(path, limit):
        busy = "wait" if row["share_busy"] is None else f"{100 * row['share_busy']:.1f}"
        print(f"{row['own_s']:8.3f} {100 * row['share_total']:6.1f} {busy:>6} "
              f"{row['calls']:9d}  {row['function']}", file=out)


def _memory_pipeline(path: str, n: int) -> None:
    """tavrida's memory:// pipeline in one thread: ``n`` casts, then the server drains."""
    from bench.common import CLIENT, Names, Setup
    from bench.tavrida_side import make_config, make_discovery, make_server
    from tavrida import client

    names = Names.fresh("prof")
    setup = Setup(url=f"memory://{names.prefix}", prefetch=0)
    conf = make_config(setup)
    srv = make_server(conf, names, "rpc", prefetch=0)
    srv.start()
    with client.RPCClient(conf, make_discovery(names), source=CLIENT) as cli, \
            maybe_profile(path):
        for i in range(n):
            cli.bench_svc.sink(value=i).cast()
        while srv.handled < n and srv.drain(0.0):
            pass
    srv.close()


def profile_pair(setup: Any, side: str, scenario: str, n: int, out: str,
                 ext: str = ".pstats", batch: int = 500) -> List[Tuple[str, str, int]]:
    """Run ``scenario`` for ``side`` with its processes profiled.

    ``scenario``: "call", "cast" (client and service), "bulk" (the client's
    confirmed ``send_many`` of ``batch`` at a time), "fanout" (the publisher
    and the first of the two subscribers), "backlog" (the service draining
    ``n`` casts queued before it starts). Returns (title, file, messages)
    per profiled process; the files are ``<out>/<scenario>-<side>-<role><ext>``
    (``ext`` ``.timeline.json``: socket I/O, see :func:`maybe_profile`).
    """
    from bench.scenarios import Cluster, side_module

    module = side_module(side)
    service_file = f"{out}/{scenario}-{side}-service{ext}"
    client_file = f"{out}/{scenario}-{side}-client{ext}"
    client_title = f"{scenario}, {side}: client ({n} {scenario}s)"
    service_title = f"{scenario}, {side}: service ({n} {scenario}s)"
    with Cluster(setup) as cluster:
        names = cluster.names(f"prof{scenario}")
        if scenario == "bulk":
            cluster.spawn(module.bulk_client, setup, names, n, batch, client_file).expect(
                "result", setup.timeout)
            return [(f"bulk, {side}: client ({n} confirmed casts, {batch} a batch)",
                     client_file, n)]
        if scenario == "backlog":
            from bench import tavrida_side

            cluster.spawn(tavrida_side.fill, setup, names, n).expect("result", setup.timeout)
            service = cluster.spawn(module.serve, setup, names, "rpc", n, service_file)
            service.expect("ready", setup.timeout)
            service.expect("done", setup.timeout)
            return [(f"backlog, {side}: service draining {n} casts", service_file, n)]
        if scenario == "fanout":
            expected = setup.warmup + n
            subscribers = [cluster.spawn(module.serve, setup, names, f"sub{index}", expected,
                                         service_file if index == 0 else "")
                           for index in (0, 1)]
            for subscriber in subscribers:
                subscriber.expect("ready", setup.timeout)
            cluster.spawn(module.publish_client, setup, names, n, client_file).expect(
                "result", setup.timeout)
            for subscriber in subscribers:
                subscriber.expect("done", setup.timeout)
            return [(f"fanout, {side}: publisher ({n} notifications)", client_file, n),
                    (f"fanout, {side}: subscriber ({expected} notifications)", service_file,
                     expected)]
        expected = setup.warmup + n if scenario == "cast" else 0
        client_target = module.call_client if scenario == "call" else module.cast_client
        service = cluster.spawn(module.serve, setup, names, "rpc", expected, service_file)
        service.expect("ready", setup.timeout)
        cluster.spawn(client_target, setup, names, n, client_file).expect(
            "result", setup.timeout)
        if expected:
            service.expect("done", setup.timeout)
    return [(client_title, client_file, n), (service_title, service_file, n)]


#: What ``--scenarios`` may name; call and cast by default.
PROFILED = ("call", "cast", "bulk", "fanout", "backlog")


def main(argv: Optional[Sequence[str]] = None) -> int:
    from bench.common import Child, Setup

    parser = argparse.ArgumentParser(prog="python -m bench.profiling", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672//")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--casts", type=int, default=5000)
    parser.add_argument("--memory-casts", type=int, default=20000)
    parser.add_argument("--bulk", type=int, default=3000)
    parser.add_argument("--bulk-batch", type=int, default=500)
    parser.add_argument("--fanout", type=int, default=2000)
    parser.add_argument("--backlog", type=int, default=5000)
    parser.add_argument("--scenarios", default="call,cast,memory",
                        help=f"which to profile, of {','.join(PROFILED)},memory "
                             "(default: call,cast,memory)")
    parser.add_argument("--confirms", choices=("on", "off"), default="on")
    parser.add_argument("--sides", default="tavrida,kombu",
                        help="whose processes to profile (default: tavrida,kombu)")
    parser.add_argument("--kombu-wire", action="store_true",
                        help="the kombu side sends tavrida's wire message (bench.kombu_wire)")
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--out", default=os.path.join("bench", "results", "profile"))
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    out = os.path.abspath(args.out)
    setup = Setup(url=args.url, confirms=args.confirms == "on", kombu_wire=args.kombu_wire)
    scenarios = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    unknown = set(scenarios) - set(PROFILED) - {"memory"}
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    sizes = {"call": args.calls, "cast": args.casts, "bulk": args.bulk,
             "fanout": args.fanout, "backlog": args.backlog}
    files: List[Tuple[str, str, int]] = []
    for side in [name.strip() for name in args.sides.split(",") if name.strip()]:
        for scenario in PROFILED:
            if scenario in scenarios:
                files += profile_pair(setup, side, scenario, sizes[scenario], out,
                                      batch=args.bulk_batch)
    if "memory" in scenarios:
        memory_file = f"{out}/memory-pipeline-tavrida.pstats"
        child = Child(_memory_child, memory_file, args.memory_casts, lifetime=setup.timeout)
        try:
            child.expect("result", setup.timeout)
        finally:
            child.stop()
        files.append((f"memory:// cast pipeline, tavrida, one thread "
                      f"({args.memory_casts} casts)", memory_file, args.memory_casts))
    for title, path, _ in files:
        print_top(title, path, args.top)
    print("\n== per message (function calls: independent of the machine's load)")
    for title, path, n in files:
        calls, busy = per_message(path, n)
        print(f"{calls:8.0f} calls {busy:8.1f} us busy  {title}")
    return 0


def _memory_child(link: Any, path: str, n: int) -> None:
    _memory_pipeline(path, n)
    link.send("result", None)


if __name__ == "__main__":
    sys.exit(main())

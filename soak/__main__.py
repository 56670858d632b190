"""``python -m soak``: the reliability scenarios at soak sizes, with a table and a verdict.

    python -m soak --url amqp://guest:guest@127.0.0.1:5672//
    python -m soak --url redis://127.0.0.1:6379/0 --casts 50000 --calls 5000 --cuts 10
    python -m soak --url amqp://... --only faults,backlog --markdown
    python -m soak --only cluster                 # its own three-node RabbitMQ cluster

Runs every scenario that applies to the broker (hostile input and long
handlers need RabbitMQ), prints one figure line per scenario as it ends,
then a table and the verdict line. Exits 1 when any scenario lost a
message or failed a check, 2 on bad arguments. ``cluster`` (run only when
named in ``--only``, needing no ``--url``) starts the three-node test
cluster of tests/integration/cluster on ports leased for the run
(``TAVRIDA_CLUSTER_BASE_PORT`` fixes them) and kills a node under the
stream: classic queues on another node, quorum queues led by the node
killed, classic queues on the node killed (:mod:`soak.cluster`). ``--json PATH`` keeps the
figures. The CI versions of the same scenarios are in
tests/integration/reliability/; docs/reliability.md has the last figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from typing import Callable, Dict, List, Optional

from soak import scenarios
from soak.scenarios import Result, broker_kind

SCENARIOS = ("faults", "dedup", "shutdown", "long-handler", "backlog", "hostile", "secrets",
             "poison")
AMQP_ONLY = ("long-handler", "hostile")
#: Scenarios run only when ``--only`` names them.
ON_REQUEST = ("cluster",)
COLUMNS = ("scenario", "broker", "in", "out", "lost", "redelivered", "duplicates", "dead",
           "peak RSS MB", "seconds", "verdict")


def _row(result: Result) -> List[str]:
    f = result.figures
    inn = f.get("casts_in", f.get("messages_in"))
    out = f.get("casts_out", f.get("messages_out"))
    if "calls_in" in f:
        inn = f"{inn} + {f['calls_in']} calls"
        out = f"{out} + {f['answers']} answers"
        if f.get("call_errors"):
            out += f" + {f['call_errors']} errors"
    if f.get("casts_refused"):
        out = f"{out} ({f['casts_refused']} casts refused)"
    if result.scenario.startswith("long-handler"):
        inn, out = 1, "1 answer" if f.get("answer") else "no answer"
    if result.scenario == "secrets":
        inn, out = f"{f.get('log_lines', 0)} log lines", f"{f.get('leaks', '?')} leaks"
    duplicates = f.get("handler_duplicates", f.get("duplicates", ""))
    if f.get("skipped_duplicates"):
        duplicates = f"{duplicates} (skipped {f['skipped_duplicates']})"
    redelivered = f.get("redelivered", f.get("redelivered_to_second", ""))
    return [result.scenario, result.broker, str(inn if inn is not None else ""),
            str(out if out is not None else ""), str(f.get("lost", 0 if result.passed else "?")),
            str(redelivered), str(duplicates), str(f.get("dead_letters", "")),
            str(f.get("peak_rss_mb", "")), str(f.get("seconds", "")),
            "PASS" if result.passed else "FAIL"]


def table(results: List[Result], markdown: bool = False) -> str:
    rows = [list(COLUMNS)] + [_row(r) for r in results]
    if markdown:
        lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
                     for row in rows)


def verdict(results: List[Result]) -> str:
    lost = sum(int(r.figures.get("lost") or 0) for r in results)
    failed = [f"{r.scenario}[{r.broker}]" for r in results if not r.passed]
    if failed:
        return (f"VERDICT: FAIL - {len(failed)} of {len(results)} scenarios failed "
                f"({', '.join(failed)}); {lost} messages lost")
    return f"VERDICT: PASS - {len(results)} scenarios, no message lost"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m soak", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="",
                        help="broker URL (amqp://... or redis://...); not for cluster")
    parser.add_argument("--casts", type=int, default=100_000, help="casts in the fault stream")
    parser.add_argument("--calls", type=int, default=10_000, help="calls in the fault stream")
    parser.add_argument("--cuts", type=int, default=20, help="connection cuts in the stream")
    parser.add_argument("--call-timeout", type=float, default=30.0,
                        help="seconds a call waits (calls queue behind the casts sent before)")
    parser.add_argument("--shutdown", type=int, default=50_000,
                        help="backlog SIGTERM'd half-way (messages)")
    parser.add_argument("--backlog", type=int, default=300_000, help="backlog drained (messages)")
    parser.add_argument("--examples", type=int, default=3000, help="hostile messages generated")
    parser.add_argument("--poison", type=int, default=1000,
                        help="poison messages (as many flaky ones, 10x as many good ones)")
    parser.add_argument("--only", default=",".join(SCENARIOS),
                        help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument("--seed", type=int, default=None, help="seed of the cut moments")
    parser.add_argument("--json", default="", help="write the figures to this file")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--verbose", action="store_true", help="log warnings of the client side")
    args = parser.parse_args(argv)
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(only) - set(SCENARIOS + ON_REQUEST))
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    if not args.url and set(only) - set(ON_REQUEST):
        parser.error("--url is needed for every scenario but cluster")
    level = logging.WARNING if args.verbose else logging.CRITICAL
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for handler in logging.getLogger().handlers:
        handler.setLevel(level)  # the scenarios open loggers for their log files
    command = "python -m soak " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    url = args.url
    kind = broker_kind(url) if url else "amqp"
    runs: Dict[str, Callable[[], List[Result]]] = {
        "faults": lambda: [scenarios.faults(url, args.casts, args.calls, args.cuts,
                                            seed=args.seed, call_timeout=args.call_timeout,
                                            command=command)],
        "dedup": lambda: [scenarios.faults(url, args.casts, args.calls, args.cuts,
                                           idempotent=True, seed=args.seed,
                                           call_timeout=args.call_timeout, command=command)],
        "shutdown": lambda: [scenarios.shutdown(url, args.shutdown, workers=workers,
                                                command=command) for workers in (4, 0)],
        "long-handler": lambda: [scenarios.long_handler(url, beat, command=command)
                                 for beat in (False, True)],
        "backlog": lambda: [scenarios.backlog(url, args.backlog, command=command)],
        "hostile": lambda: [_hostile(url, args.examples, command)],
        "secrets": lambda: [_secrets(url, command)],
        "poison": lambda: [_poison(url, args.poison, command)],
        "cluster": lambda: _cluster(args.casts, args.calls, args.call_timeout, command),
    }
    results: List[Result] = []
    started = time.monotonic()
    print(f"# {command}", flush=True)
    for name in SCENARIOS + ON_REQUEST:
        if name not in only:
            continue
        if name in AMQP_ONLY and kind != "amqp":
            print(f"# {name}: RabbitMQ only, skipped on {kind}", flush=True)
            continue
        for result in runs[name]():
            results.append(result)
            print(result.line(), flush=True)
    print()
    print(table(results, args.markdown))
    print()
    line = verdict(results)
    print(f"{line} ({time.monotonic() - started:.0f} s)")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"command": command, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                       "verdict": line, "results": [r.to_dict() for r in results]}, out,
                      indent=1)
    return 0 if results and all(r.passed for r in results) else 1


def _hostile(url: str, examples: int, command: str) -> Result:
    try:
        from soak import hostile
    except ImportError as exc:  # hypothesis is a development dependency
        result = Result("hostile", url, command)
        result.problems.append(f"cannot run: {exc} (pip install hypothesis)")
        return result.done()
    return hostile.hostile(url, examples, command=command)


def _poison(url: str, count: int, command: str) -> Result:
    from soak import poison

    return poison.poison(url, count, count, 10 * count, command=command)


def _secrets(url: str, command: str) -> Result:
    from soak import secrets

    return secrets.secrets(url, command=command)


def _cluster(casts: int, calls: int, call_timeout: float, command: str) -> List[Result]:
    """Every variant of :func:`soak.cluster.failover` on a test cluster of its own."""
    import os

    from soak import cluster

    base_port = os.environ.get("TAVRIDA_CLUSTER_BASE_PORT")
    nodes = (cluster.RabbitCluster(int(base_port)) if base_port
             else cluster.RabbitCluster.on_free_ports())
    with nodes:
        print(f"# test cluster started in {nodes.start_seconds:.1f} s", flush=True)
        return [cluster.failover(nodes, variant, casts, calls, call_timeout=call_timeout,
                                 command=command) for variant in cluster.VARIANTS]


if __name__ == "__main__":
    sys.exit(main())

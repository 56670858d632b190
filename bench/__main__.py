"""``python -m bench``: tavrida 2 against raw kombu, same work, same durability.

Examples::

    python -m bench --url amqp://guest:guest@127.0.0.1//      # every scenario, ~1.5 min
    python -m bench --url memory:// --quick                    # in-memory only, seconds
    python -m bench --url memory:// --typed                    # and typed handlers' cost
    python -m bench --url amqp://guest:guest@127.0.0.1// --peers  # and nameko, FastStream
    python -m bench --url amqp://... --scenarios rss --backlog 100000
    python -m bench --url amqp://... --scenarios aio   # asyncio: tavrida, aio-pika, FastStream

Prints a table of medians over ``--repeat`` repetitions with the ratio
tavrida / kombu of each figure and writes it as JSON (``--json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

DEFAULT_URL = os.environ.get("TAVRIDA_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
DEFAULT_JSON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "latest.json")


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    from bench.common import KOMBU_LEVERS
    from bench.scenarios import OPT_IN, SCENARIOS, Sizes

    defaults = Sizes()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=DEFAULT_URL,
                        help="broker URL (amqp:// or redis://); memory:// runs the "
                             "in-memory scenario only (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (default: 3)")
    parser.add_argument("--confirms", choices=("on", "off"), default="on",
                        help="publisher confirms on both sides (default: on)")
    parser.add_argument("--scenarios", default="",
                        help=f"comma-separated subset of {','.join(SCENARIOS)} (default: all "
                             f"but {','.join(OPT_IN)}; 'aio', RabbitMQ only, is opt-in: one "
                             f"asyncio client, --aio-concurrency calls in flight, against "
                             f"aio-pika's RPC pattern and FastStream's broker.request)")
    parser.add_argument("--json", default=DEFAULT_JSON, metavar="PATH",
                        help="write the table as JSON here (default: bench/results/latest.json)")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes (smoke test); size flags given still apply")
    parser.add_argument("--prefetch", type=int, default=100, help="service prefetch (100)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed calls/casts (20)")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="longest wait for one step, seconds (120)")
    parser.add_argument("--kombu-wire", action="store_true",
                        help="the kombu side of scenarios 1, 2 and 7 sends tavrida's wire "
                             "message (same headers, envelope and answer routing): what is "
                             "left between the sides is the library, not the format")
    parser.add_argument("--kombu-lever", action="append", default=[], metavar="LEVER",
                        choices=sorted(KOMBU_LEVERS),
                        help="with --kombu-wire: one structural change to the kombu side's "
                             "calls (repeatable): " + "; ".join(
                                 f"{name}: {what}" for name, what in sorted(KOMBU_LEVERS.items())))
    parser.add_argument("--typed", action="store_true",
                        help="scenario 4 (memory) also times echo handlers with typed "
                             "parameters (value: int; item: a dataclass) against the "
                             "untyped echo, in alternating blocks on one server")
    parser.add_argument("--peers", nargs="?", const="nameko,faststream", default="",
                        metavar="NAMES",
                        help="also run scenario 1's calls with these peers (default with the "
                             "flag: nameko,faststream; RabbitMQ only; install: "
                             "pip install -e '.[bench]' or python -m bench.peers --make-venv)")
    parser.add_argument("--peers-python", default="", metavar="PATH",
                        help="interpreter the peers run in (default: bench/.venv-peers/bin/"
                             "python if it exists, else this one)")
    for field in dataclasses.fields(Sizes):
        flag = "--" + field.name.replace("_", "-")
        parser.add_argument(flag, type=int, default=None,
                            help=f"work size (default {getattr(defaults, field.name)})")
    return parser.parse_args(argv)


def choose_scenarios(text: str, url: str) -> List[str]:
    """The scenarios to run: all but the opt-in ones, or those named; only ``memory``
    without a broker; ``aio`` on RabbitMQ only."""
    from bench.scenarios import BROKER_SCENARIOS, OPT_IN, SCENARIOS

    memory_only = url.split(":", 1)[0].lower() == "memory"
    names = [name.strip() for name in text.split(",") if name.strip()] or \
        [name for name in SCENARIOS if name not in OPT_IN]
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario(s): {', '.join(unknown)}")
    if memory_only:
        if text and any(name in BROKER_SCENARIOS for name in names):
            raise SystemExit("memory:// has no broker: only the 'memory' scenario can run")
        names = ["memory"]
    elif not url.lower().startswith(("amqp", "pyamqp")):
        if "aio" in names:
            raise SystemExit("the 'aio' scenario needs RabbitMQ (an amqp:// URL): its "
                             "peers aio-pika and FastStream speak AMQP only")
        if "bulk" in names:
            names.remove("bulk")  # publisher confirms are a RabbitMQ feature
    return names


def choose_peers(text: str, python: str, setup: Any) -> Tuple[List[str], str, Dict[str, str]]:
    """The peers to run (those that import), their interpreter, and why others are skipped."""
    from bench import peers as peer_module

    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in peer_module.PEERS]
    if unknown:
        raise SystemExit(f"unknown peer(s): {', '.join(unknown)} "
                         f"(known: {', '.join(peer_module.PEERS)})")
    if names and not setup.is_amqp:
        raise SystemExit("--peers needs RabbitMQ (an amqp:// URL)")
    python = python or peer_module.default_python()
    skipped = {}
    for name in names:
        problem = peer_module.available(python, name)
        if problem is not None:
            skipped[name] = (f"does not import in {python}: {problem} (pip install -e "
                             f"'.[bench]' or python -m bench.peers --make-venv)")
    return [name for name in names if name not in skipped], python, skipped


def main(argv: Optional[Sequence[str]] = None) -> int:
    from bench import report, runner
    from bench.common import Setup
    from bench.scenarios import Sizes

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    sizes = Sizes.quick() if args.quick else Sizes()
    sizes = dataclasses.replace(sizes, **{field.name: getattr(args, field.name)
                                          for field in dataclasses.fields(Sizes)
                                          if getattr(args, field.name) is not None})
    if args.repeat < 1:
        raise SystemExit("--repeat must be >= 1")
    setup = Setup(url=args.url, confirms=args.confirms == "on", prefetch=args.prefetch,
                  warmup=args.warmup, timeout=args.timeout, kombu_wire=args.kombu_wire,
                  kombu_levers=tuple(args.kombu_lever), typed=args.typed)
    if args.kombu_lever and not args.kombu_wire:
        raise SystemExit("--kombu-lever needs --kombu-wire")
    scenarios = choose_scenarios(args.scenarios, args.url)
    peers, peers_python, skipped = choose_peers(args.peers, args.peers_python, setup)
    if peers and "call" not in scenarios:
        scenarios.insert(0, "call")  # the peers are compared with tavrida's scenario 1
    load_before = runner.load_average()
    began = time.monotonic()
    samples = runner.run(setup, sizes, scenarios, args.repeat, peers=peers,
                         peers_python=peers_python)
    rows = report.build_rows(samples, setup.effective_confirms, setup.is_amqp,
                             setup.kombu_wire)
    meta = runner.describe(setup, sizes, scenarios, args.repeat, argv,
                           time.monotonic() - began)
    meta["machine"]["load_average_at_start"] = load_before
    document: Dict[str, Any] = {**meta, "rows": rows}
    print("\n".join(runner.header(meta)))
    if rows or scenarios != ["aio"]:
        print(report.format_table(rows, markdown=args.markdown))
    if peers or skipped:
        failures = samples.get("peer_failures", {})
        document["peers"] = {"python": peers_python, "ran": list(peers), "skipped": skipped,
                             "failed_rounds": failures,
                             "versions": runner.peer_versions(peers_python, peers)}
        document["peer_rows"] = report.build_peer_rows(samples, setup.effective_confirms)
        print()
        print(f"peers ({peers_python}; {document['peers']['versions']}): ratio = peer / "
              f"tavrida's scenario 1 in the same run; target <= 0.6x")
        print(report.format_peer_table(document["peer_rows"], markdown=args.markdown))
        for name, reason in skipped.items():
            print(f"peer {name} skipped: {reason}")
        for name, reasons in failures.items():
            print(f"peer {name} failed {len(reasons)} round(s); first: "
                  f"{reasons[0].splitlines()[0]}")
    if "aio" in scenarios:
        from bench.scenarios import sides_of

        skipped_sides = sides_of("aio")[1]
        document["aio_rows"] = report.build_aio_rows(samples, setup.effective_confirms)
        document["aio"] = {"concurrency": sizes.aio_concurrency, "calls": sizes.aio_calls,
                           "skipped": skipped_sides,
                           "versions": runner.peer_versions(sys.executable, ["faststream"])}
        print()
        print(f"8 asyncio ({document['aio']['versions']}): one client, "
              f"{sizes.aio_concurrency} calls in flight, {sizes.aio_calls} calls; "
              f"ratio = tavrida / peer of the medians (per-round range); FastStream "
              f"confirms: its default (on)")
        print(report.format_aio_table(document["aio_rows"], markdown=args.markdown))
        for side, reason in skipped_sides.items():
            print(f"aio side {side} skipped: {reason}")
    report.write_json(args.json, document)
    print(f"JSON written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

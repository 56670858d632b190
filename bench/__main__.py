"""``python -m bench``: tavrida 2 against raw kombu, same work, same durability.

Examples::

    python -m bench --url amqp://guest:guest@127.0.0.1//      # every scenario, ~1.5 min
    python -m bench --url memory:// --quick                    # in-memory only, seconds
    python -m bench --url amqp://... --scenarios rss --backlog 100000

Prints a table of medians over ``--repeat`` repetitions with the ratio
tavrida / kombu of each figure and writes it as JSON (``--json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import List, Optional, Sequence

DEFAULT_URL = os.environ.get("TAVRIDA_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
DEFAULT_JSON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "latest.json")


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    from bench.scenarios import SCENARIOS, Sizes

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
                        help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument("--json", default=DEFAULT_JSON, metavar="PATH",
                        help="write the table as JSON here (default: bench/results/latest.json)")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes (smoke test); size flags given still apply")
    parser.add_argument("--prefetch", type=int, default=100, help="service prefetch (100)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed calls/casts (20)")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="longest wait for one step, seconds (120)")
    for field in dataclasses.fields(Sizes):
        flag = "--" + field.name.replace("_", "-")
        parser.add_argument(flag, type=int, default=None,
                            help=f"work size (default {getattr(defaults, field.name)})")
    return parser.parse_args(argv)


def choose_scenarios(text: str, url: str) -> List[str]:
    """The scenarios to run: all, or those named; only ``memory`` without a broker."""
    from bench.scenarios import BROKER_SCENARIOS, SCENARIOS

    memory_only = url.split(":", 1)[0].lower() == "memory"
    names = [name.strip() for name in text.split(",") if name.strip()] or list(SCENARIOS)
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario(s): {', '.join(unknown)}")
    if memory_only:
        if text and any(name in BROKER_SCENARIOS for name in names):
            raise SystemExit("memory:// has no broker: only the 'memory' scenario can run")
        names = ["memory"]
    elif not url.lower().startswith(("amqp", "pyamqp")) and "bulk" in names:
        names.remove("bulk")  # publisher confirms are a RabbitMQ feature
    return names


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
                  warmup=args.warmup, timeout=args.timeout)
    scenarios = choose_scenarios(args.scenarios, args.url)
    began = time.monotonic()
    samples = runner.run(setup, sizes, scenarios, args.repeat)
    rows = report.build_rows(samples, setup.effective_confirms, setup.is_amqp)
    meta = runner.describe(setup, sizes, scenarios, args.repeat, argv,
                           time.monotonic() - began)
    print("\n".join(runner.header(meta)))
    print(report.format_table(rows, markdown=args.markdown))
    report.write_json(args.json, {**meta, "rows": rows})
    print(f"JSON written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Figures, targets, medians and ratios; the table (text or Markdown) and the JSON."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Dict, List, Optional, Sequence

from bench.common import median

#: Samples: scenario -> side -> one dict of figures per repetition.
Samples = Dict[str, Dict[str, List[Dict[str, float]]]]


@dataclasses.dataclass(frozen=True)
class Target:
    """``ratio`` (tavrida / kombu) or ``tavrida`` (absolute value) compared with ``value``."""

    on: str
    op: str
    value: float

    def met(self, tavrida: float, ratio: float) -> Optional[bool]:
        measured = ratio if self.on == "ratio" else tavrida
        if math.isnan(measured):
            return None
        return measured >= self.value if self.op == ">=" else measured <= self.value

    def __str__(self) -> str:
        value = f"{self.value:g}"
        return f"{self.op} {value}x" if self.on == "ratio" else f"{self.op} {value}"


@dataclasses.dataclass(frozen=True)
class Figure:
    """One row of the table."""

    scenario: str
    key: str
    label: str
    unit: str
    #: "run": confirms as the run says; "on": always on; "n/a": no broker.
    confirms: str
    target: Optional[Target] = None
    #: No ratio when the kombu median is at most this (a ratio of two near-zeros is noise).
    min_base: float = 0.0


FIGURES = (
    Figure("call", "calls_per_s", "1 call (broker) sequential", "calls/s", "run",
           Target("ratio", ">=", 1.0)),
    Figure("call", "median_us", "1 call (broker) latency median", "us", "run"),
    Figure("call", "p99_us", "1 call (broker) latency p99", "us", "run"),
    Figure("call", "client_cpu_us", "1 call (broker) client CPU", "us/call", "run",
           Target("ratio", "<=", 1.15)),
    Figure("cast", "msgs_per_s", "2 cast end to end", "msgs/s", "run",
           Target("ratio", ">=", 1.0)),
    Figure("cast", "cpu_us_per_msg", "2 cast client CPU", "us/msg", "run",
           Target("ratio", "<=", 1.5)),
    Figure("cast", "service_cpu_us", "2 cast service CPU", "us/msg", "run",
           Target("ratio", "<=", 1.15)),
    Figure("fanout", "msgs_per_s", "3 fan-out to 2 subscribers", "msgs/s", "run"),
    Figure("memory", "calls_per_s", "4 memory call sequential", "calls/s", "n/a",
           Target("ratio", ">=", 3.0)),
    Figure("memory", "inline_calls_per_s", "4 memory call, inline_calls on", "calls/s", "n/a",
           Target("ratio", ">=", 3.0)),
    Figure("memory", "median_us", "4 memory call latency median", "us", "n/a"),
    Figure("memory", "p99_us", "4 memory call latency p99", "us", "n/a"),
    Figure("memory", "casts_per_s", "4 memory cast full pipeline", "msgs/s", "n/a",
           Target("tavrida", ">=", 40000.0)),
    # --typed (tavrida only): one server, untyped and typed echo in alternating blocks.
    Figure("memory", "untyped_calls_per_s", "4t memory inline call, untyped echo", "calls/s",
           "n/a"),
    Figure("memory", "typed_calls_per_s", "4t memory inline call, echo(value: int)", "calls/s",
           "n/a"),
    Figure("memory", "record_calls_per_s", "4t memory inline call, echo(item: dataclass)",
           "calls/s", "n/a"),
    Figure("memory", "typed_cost_us", "4t typed echo(value: int) CPU cost", "us/call", "n/a"),
    Figure("memory", "record_cost_us", "4t typed echo(item: dataclass) CPU cost", "us/call",
           "n/a"),
    Figure("memory", "arguments_untyped_us", "4t Handler.arguments CPU, untyped", "us/msg", "n/a"),
    Figure("memory", "arguments_typed_us", "4t Handler.arguments CPU, value: int", "us/msg",
           "n/a"),
    Figure("memory", "arguments_record_us", "4t Handler.arguments CPU, dataclass", "us/msg",
           "n/a"),
    Figure("rss", "peak_mib", "5 service peak RSS, backlog", "MiB", "run",
           Target("ratio", "<=", 1.5)),
    Figure("rss", "growth_mib", "5 RSS growth 10%->100% drained", "MiB", "run",
           Target("tavrida", "<=", 5.0), min_base=0.5),
    Figure("rss", "drain_msgs_per_s", "5 backlog drain rate", "msgs/s", "run"),
    Figure("bulk", "msgs_per_s", "6 bulk confirmed casts", "msgs/s", "on",
           Target("ratio", ">=", 5.0)),
    Figure("threads", "calls_per_s", "7 calls from threads, one client", "calls/s", "run",
           Target("ratio", ">=", 1.0)),
    Figure("threads", "median_us", "7 threaded call latency median", "us", "run"),
    Figure("threads", "p99_us", "7 threaded call latency p99", "us", "run"),
    Figure("threads", "client_cpu_us", "7 threaded call client CPU", "us/call", "run"),
)


#: The scenarios whose kombu side ``--kombu-wire`` changes.
WIRE_SCENARIOS = ("call", "cast", "threads")


def build_rows(samples: Samples, confirms: bool, is_amqp: bool,
               kombu_wire: bool = False) -> List[Dict[str, Any]]:
    """One row per figure of the scenarios that ran: medians, ratio, target, met.

    With ``kombu_wire`` the kombu side of :data:`WIRE_SCENARIOS` is not the
    baseline the targets name, so their ratio targets are left out.
    """
    rows = []
    for figure in FIGURES:
        by_side = samples.get(figure.scenario)
        if not by_side:
            continue
        values = {side: [run[figure.key] for run in by_side.get(side, []) if figure.key in run]
                  for side in ("tavrida", "kombu")}
        if not values["tavrida"] and not values["kombu"]:
            continue  # a figure of a flag this run did not give (--typed)
        tavrida, kombu = median(values["tavrida"]), median(values["kombu"])
        comparable = not math.isnan(kombu) and abs(kombu) > figure.min_base and kombu != 0
        ratio = tavrida / kombu if comparable else math.nan
        # Both sides of a repetition ran back to back: their ratio shows the run's noise.
        paired = [t / k for t, k in zip(values["tavrida"], values["kombu"])
                  if comparable and abs(k) > figure.min_base]
        if figure.confirms == "run":
            confirm_text = ("on" if confirms else "off") if is_amqp else "n/a"
        else:
            confirm_text = figure.confirms
        target = figure.target
        if kombu_wire and figure.scenario in WIRE_SCENARIOS and target and target.on == "ratio":
            target = None
        rows.append({
            "scenario": figure.scenario, "figure": figure.key, "label": figure.label,
            "unit": figure.unit, "confirms": confirm_text,
            "tavrida": tavrida, "kombu": kombu, "ratio": ratio, "paired_ratios": paired,
            "target": str(target) if target else "",
            "met": target.met(tavrida, ratio) if target else None,
            "samples": values,
        })
    return rows


#: The figures of scenario 1 a peer reports, with the target of its calls/s (peer / tavrida).
PEER_FIGURES = (
    ("calls_per_s", "sequential calls", "calls/s", Target("ratio", "<=", 0.6)),
    ("median_us", "call latency median", "us", None),
    ("p99_us", "call latency p99", "us", None),
    ("client_cpu_us", "client CPU", "us/call", None),
    ("unanswered", "calls unanswered in 10 s", "calls", None),
)


def build_peer_rows(samples: Samples, confirms: bool) -> List[Dict[str, Any]]:
    """One row per peer and figure: the peer's median against tavrida's scenario 1.

    ``samples["peers"]`` maps a peer to its repetitions; the ratio is
    peer / tavrida (so below 1 the peer is slower in calls/s), paired per round.
    """
    rows = []
    call = samples.get("call", {})
    for peer, runs in samples.get("peers", {}).items():
        for key, label, unit, target in PEER_FIGURES:
            values = {side: [run[key] for run in call.get(side, []) if key in run]
                      for side in ("tavrida", "kombu")}
            mine = [run[key] for run in runs if key in run]
            value, tavrida = median(mine), median(values["tavrida"])
            ratio = value / tavrida if tavrida and not math.isnan(tavrida) else math.nan
            if key == "unanswered":  # tavrida's calls either answer or fail the run
                tavrida, ratio = math.nan, math.nan
            rows.append({
                "peer": peer, "figure": key, "label": f"{peer} {label}", "unit": unit,
                "confirms": "on" if confirms else "off",
                "peer_value": value, "tavrida": tavrida,
                "kombu": math.nan if key == "unanswered" else median(values["kombu"]),
                "ratio": ratio,
                "paired_ratios": [] if math.isnan(ratio) else
                [p / t for p, t in zip(mine, values["tavrida"]) if t],
                "target": str(target) if target else "",
                "met": target.met(value, ratio) if target else None,
                "samples": {peer: mine, **values},
            })
    return rows


PEER_COLUMNS = ("figure", "unit", "confirms", "peer", "tavrida", "kombu", "peer / tavrida",
                "per-run ratios", "target", "met")


def format_peer_table(rows: Sequence[Dict[str, Any]], markdown: bool = False) -> str:
    """The peers' rows as a table (columns as :func:`format_table`, plus the peer)."""
    cells = []
    for row in rows:
        ratio = "-" if math.isnan(row["ratio"]) else f"{row['ratio']:.2f}x"
        paired = row["paired_ratios"]
        spread = f"{min(paired):.2f}-{max(paired):.2f}" if paired else "-"
        cells.append([row["label"], row["unit"], row["confirms"], _number(row["peer_value"]),
                      _number(row["tavrida"]), _number(row["kombu"]), ratio, spread,
                      row["target"], _met(row["met"])])
    return _layout(PEER_COLUMNS, cells, markdown, right={3, 4, 5, 6, 7})


#: Scenario 8's figures (``aio``): key, label, unit.
AIO_FIGURES = (
    ("calls_per_s", "8 asyncio calls, many in flight", "calls/s"),
    ("median_us", "8 asyncio call latency median", "us"),
    ("p99_us", "8 asyncio call latency p99", "us"),
    ("client_cpu_us", "8 asyncio client CPU", "us/call"),
)
#: The sides scenario 8's tavrida is compared with.
AIO_PEERS = ("aio-pika", "faststream")


def build_aio_rows(samples: Samples, confirms: bool) -> List[Dict[str, Any]]:
    """One row per figure of scenario 8: each side's median, tavrida / each peer.

    The ratios are of the medians; ``paired_ratios`` are per round (the
    sides of a round ran back to back).
    """
    by_side = samples.get("aio")
    if not by_side:
        return []
    rows = []
    for key, label, unit in AIO_FIGURES:
        values = {side: [run[key] for run in runs if key in run]
                  for side, runs in by_side.items()}
        medians = {side: median(mine) for side, mine in values.items()}
        tavrida = medians.get("tavrida", math.nan)
        row: Dict[str, Any] = {"scenario": "aio", "figure": key, "label": label, "unit": unit,
                               "confirms": "on" if confirms else "off", "samples": values}
        for peer in AIO_PEERS:
            theirs = medians.get(peer, math.nan)
            row[peer] = theirs
            row[f"ratio_{peer}"] = (tavrida / theirs if theirs and not math.isnan(theirs)
                                    else math.nan)
            row[f"paired_{peer}"] = [t / p for t, p in zip(values.get("tavrida", []),
                                                          values.get(peer, [])) if p]
        row["tavrida"] = tavrida
        rows.append(row)
    return rows


AIO_COLUMNS = ("figure", "unit", "confirms", "tavrida", "aio-pika", "faststream",
               "tavrida / aio-pika", "tavrida / faststream")


def format_aio_table(rows: Sequence[Dict[str, Any]], markdown: bool = False) -> str:
    """Scenario 8's rows; a ratio shows its per-round range in brackets."""
    def ratio(row: Dict[str, Any], peer: str) -> str:
        value, paired = row[f"ratio_{peer}"], row[f"paired_{peer}"]
        if math.isnan(value):
            return "-"
        spread = f" ({min(paired):.2f}-{max(paired):.2f})" if len(paired) > 1 else ""
        return f"{value:.2f}x{spread}"

    cells = [[row["label"], row["unit"], row["confirms"], _number(row["tavrida"]),
              _number(row["aio-pika"]), _number(row["faststream"]),
              ratio(row, "aio-pika"), ratio(row, "faststream")] for row in rows]
    return _layout(AIO_COLUMNS, cells, markdown, right={3, 4, 5, 6, 7})


def _number(value: float) -> str:
    if value is None or math.isnan(value):
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}"


def _met(value: Optional[bool]) -> str:
    return "" if value is None else ("yes" if value else "NO")


COLUMNS = ("figure", "unit", "confirms", "tavrida", "kombu", "ratio", "per-run ratios", "target",
           "met")


def _cells(row: Dict[str, Any]) -> List[str]:
    ratio = "-" if math.isnan(row["ratio"]) else f"{row['ratio']:.2f}x"
    paired = row["paired_ratios"]
    spread = f"{min(paired):.2f}-{max(paired):.2f}" if paired else "-"
    return [row["label"], row["unit"], row["confirms"], _number(row["tavrida"]),
            _number(row["kombu"]), ratio, spread, row["target"], _met(row["met"])]


def format_table(rows: Sequence[Dict[str, Any]], markdown: bool = False) -> str:
    """The rows as an aligned text table or a Markdown table."""
    return _layout(COLUMNS, [_cells(row) for row in rows], markdown, right={3, 4, 5, 6})


def _layout(columns: Sequence[str], cells: Sequence[Sequence[str]], markdown: bool,
            right: Any) -> str:
    if markdown:
        lines = ["| " + " | ".join(columns) + " |",
                 "|" + "|".join("---:" if index in right else "---"
                                for index in range(len(columns))) + "|"]
        lines += ["| " + " | ".join(line) + " |" for line in cells]
        return "\n".join(lines)
    widths = [max(len(text) for text in column) for column in zip(columns, *cells)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(value.rjust(width) if index in right else value.ljust(width)
                         for index, (value, width) in enumerate(zip(values, widths))).rstrip()

    return "\n".join([line(columns), line(["-" * width for width in widths])]
                     + [line(row) for row in cells])


def _clean(value: Any) -> Any:
    """NaN becomes null: the JSON stays standard."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _clean(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_clean(item) for item in value]
    return value


def write_json(path: str, document: Dict[str, Any]) -> None:
    """Write the run (meta and rows) as JSON, creating the directory."""
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(_clean(document), handle, indent=2, sort_keys=False)
        handle.write("\n")


def load(path: str) -> Dict[str, Any]:
    """A JSON written by :func:`write_json`, nulls back to NaN."""
    with open(path, encoding="utf-8") as handle:
        document = json.load(handle)
    for row in (document.get("rows", []) + document.get("peer_rows", [])
                + document.get("aio_rows", [])):
        for key in ("tavrida", "kombu", "ratio", "peer_value", *AIO_PEERS,
                    *(f"ratio_{peer}" for peer in AIO_PEERS)):
            if key in row and row[key] is None:
                row[key] = math.nan
    return document


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m bench.report [PATH] [--markdown]``: print the table of an earlier run."""
    import argparse

    from bench.runner import header

    parser = argparse.ArgumentParser(prog="python -m bench.report", description=main.__doc__)
    parser.add_argument("path", nargs="?",
                        default=os.path.join(os.path.dirname(__file__), "results", "latest.json"))
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    document = load(args.path)
    print("\n".join(header(document)))
    print(f"command: {document['command']}")
    print(format_table(document["rows"], markdown=args.markdown))
    if document.get("peer_rows"):
        print()
        print(format_peer_table(document["peer_rows"], markdown=args.markdown))
    if document.get("aio_rows"):
        print()
        print(format_aio_table(document["aio_rows"], markdown=args.markdown))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

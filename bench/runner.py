"""Run the scenarios repeatedly, alternating sides, and describe the run."""

from __future__ import annotations

import datetime
import platform
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, TextIO

from bench.common import BenchError, Setup, machine_info
from bench.report import Samples
from bench.scenarios import SCENARIOS, Sizes, sides_of


def run(setup: Setup, sizes: Sizes, scenarios: Sequence[str], repeat: int,
        log: Optional[TextIO] = sys.stderr, peers: Sequence[str] = (),
        peers_python: str = sys.executable) -> Samples:
    """``repeat`` rounds of every scenario for both sides; the order of sides alternates.

    ``peers`` (see :mod:`bench.peers`) each run scenario 1's calls once a
    round, after the scenarios, in an order that alternates too.
    """
    samples: Samples = {name: {side: [] for side in sides_of(name)[0]} for name in scenarios}
    failures: Dict[str, List[str]] = {}
    if peers:
        samples["peers"] = {peer: [] for peer in peers}
        samples["peer_failures"] = failures  # type: ignore[assignment]
    for round_index in range(repeat):
        for name in scenarios:
            sides = tuple(samples[name])
            for side in (sides if round_index % 2 == 0 else tuple(reversed(sides))):
                began = time.monotonic()
                figures = SCENARIOS[name](side, setup, sizes)
                samples[name][side].append(figures)
                if log is not None:
                    shown = ", ".join(f"{key}={value:,.1f}" for key, value in figures.items())
                    print(f"[{round_index + 1}/{repeat}] {name:<6} {side:<10} "
                          f"{time.monotonic() - began:5.1f}s  {shown}", file=log, flush=True)
        for peer in (peers if round_index % 2 == 0 else tuple(reversed(peers))):
            from bench.peers import run_peer

            began = time.monotonic()
            try:
                figures = run_peer(peer, setup.url, sizes.calls, setup.warmup, peers_python,
                                   setup.timeout)
            except BenchError as exc:  # a peer's failure is its figure, not the run's end
                failures.setdefault(peer, []).append(f"round {round_index + 1}: {exc}")
                if log is not None:
                    print(f"[{round_index + 1}/{repeat}] peer   {peer:<10} FAILED: {exc}",
                          file=log, flush=True)
                continue
            samples["peers"][peer].append(figures)
            if log is not None:
                shown = ", ".join(f"{key}={value:,.1f}" for key, value in figures.items())
                print(f"[{round_index + 1}/{repeat}] peer   {peer:<10} "
                      f"{time.monotonic() - began:5.1f}s  {shown}", file=log, flush=True)
    return samples


def broker_version(url: str) -> str:
    """The broker's product and version, as it announces itself."""
    if url.startswith("memory"):
        return "none (in-process)"
    import kombu

    with kombu.Connection(url) as conn:
        conn.ensure_connection(max_retries=1)
        raw = conn.connection
        properties: Dict[str, Any] = getattr(raw, "server_properties", None) or {}
        if properties:
            return f"{properties.get('product', '?')} {properties.get('version', '?')}"
        client = getattr(conn.default_channel, "client", None)
        if client is not None and hasattr(client, "info"):
            return f"Redis {client.info().get('redis_version', '?')}"
    return "unknown"


def safe_url(url: str) -> str:
    """``url`` with its password masked."""
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    auth, _, host = rest.rpartition("@")
    user = auth.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"


def peer_versions(python: str, peers: Sequence[str]) -> Dict[str, str]:
    """The installed version of each peer's package (and its AMQP client) in ``python``."""
    import subprocess

    packages = {"nameko": ["nameko", "eventlet"], "faststream": ["faststream", "aio-pika"]}
    wanted = [name for peer in peers for name in packages.get(peer, [peer])]
    if not wanted:
        return {}
    script = ("import importlib.metadata as m, json, sys; "
              "print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))")
    done = subprocess.run([python, "-c", script, *wanted], capture_output=True, text=True,
                          timeout=60)
    if done.returncode != 0:
        return {name: "?" for name in wanted}
    import json

    return json.loads(done.stdout)


def load_average() -> List[float]:
    """The 1, 5 and 15 minute load averages (the machine is shared)."""
    import os

    return [round(value, 2) for value in os.getloadavg()]


def describe(setup: Setup, sizes: Sizes, scenarios: Sequence[str], repeat: int,
             argv: Sequence[str], elapsed: float) -> Dict[str, Any]:
    """Everything about the run but the figures: command, date, machine, versions."""
    import amqp
    import kombu

    import tavrida

    return {
        "command": " ".join(["python -m bench", *argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "elapsed_s": round(elapsed, 1),
        "url": safe_url(setup.url),
        "machine": {**machine_info(), "load_average_at_end": load_average()},
        "versions": {"python": platform.python_version(), "tavrida": tavrida.__version__,
                     "kombu": kombu.__version__, "amqp": amqp.__version__,
                     "broker": broker_version(setup.url)},
        "settings": {"repeat": repeat, "scenarios": list(scenarios),
                     "confirms": setup.effective_confirms, "persistent": True,
                     "prefetch": setup.prefetch, "warmup": setup.warmup,
                     "kombu_wire": setup.kombu_wire,
                     "kombu_levers": list(setup.kombu_levers), "typed": setup.typed,
                     "kombu_memory_transport_options": {"polling_interval": 0}},
        "sizes": {key: getattr(sizes, key) for key in sizes.__dataclass_fields__},
    }


def header(meta: Dict[str, Any]) -> List[str]:
    """Lines printed above the table."""
    machine, versions = meta["machine"], meta["versions"]
    settings = meta["settings"]
    return [
        f"tavrida {versions['tavrida']} vs raw kombu {versions['kombu']} -- {meta['url']} "
        f"({versions['broker']}), {meta['date']}",
        f"medians of {settings['repeat']} repetitions; persistent messages; publisher confirms: "
        f"{'on' if settings['confirms'] else 'off'}, both sides (column 'confirms'); "
        f"prefetch {settings['prefetch']}; ratio = tavrida / kombu of the medians; per-run "
        f"ratios: lowest-highest of the repetitions (each ran both sides back to back)",
        f"machine: {machine['nproc']} cpus, {machine['cpu']}, {machine['ram_gib']} GiB RAM; "
        f"Python {versions['python']}; run took {meta['elapsed_s']}s",
    ] + ([
        "kombu side of scenarios 1, 2 and 7: tavrida's wire message (--kombu-wire); the "
        "targets are set against plain kombu, so 'met' is not shown for them"
        + (f"; kombu levers: {', '.join(settings['kombu_levers'])}"
           if settings.get("kombu_levers") else "")]
        if settings.get("kombu_wire") else [])

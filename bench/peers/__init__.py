"""Peers measured beside tavrida (``python -m bench --peers``): nameko and FastStream.

Each peer's service and client run as subprocesses of the peer's own
interpreter (``--peers-python``, default this one; the peers come with
``pip install -e '.[bench]'``, or live in a separate venv made by
``python -m bench.peers --make-venv``). A peer's module prints ``ready``
(service) or one JSON line of results (client); the service stops when its
standard input closes. Every wait has a deadline.

The work is the one of scenario 1: sequential blocking calls ``echo(value=i)``
answered with ``{"value": i}``, persistent messages, publisher confirms on
(each peer's defaults or flags, see its module), on the run's broker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from typing import Any, Callable, Dict, List, Optional

from bench.common import BenchError, median, percentile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: Where ``python -m bench.peers --make-venv`` puts the peers' own venv.
VENV = os.path.join(ROOT, "bench", ".venv-peers")
#: Peer name -> the module that runs its service and its client.
PEERS: Dict[str, str] = {
    "nameko": "bench.peers.nameko_side",
    "faststream": "bench.peers.faststream_side",
}
#: What ``--make-venv`` installs (the same pins as the ``bench`` extra of setup.py).
REQUIREMENTS = ["nameko>=2.14,<3", "faststream[rabbit]>=0.7,<0.8", "aio-pika>=9.4,<11"]


def default_python() -> str:
    """The peers' interpreter: bench/.venv-peers if it exists, else this one."""
    candidate = os.path.join(VENV, "bin", "python")
    return candidate if os.path.exists(candidate) else sys.executable


def available(python: str, name: str) -> Optional[str]:
    """None when ``name`` imports in ``python``; else why not (one line)."""
    module = {"nameko": "nameko.standalone.rpc", "faststream": "faststream.rabbit"}[name]
    done = subprocess.run([python, "-c", f"import {module}"], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    if done.returncode == 0:
        return None
    lines = done.stderr.strip().splitlines()
    return lines[-1] if lines else f"exit {done.returncode}"


def timed_calls(one: Callable[[int], Any], n: int, warmup: int) -> None:
    """``warmup`` then ``n`` timed blocking calls of ``one(i)``; prints the JSON result."""
    for i in range(warmup):
        one(i)
    latencies: List[float] = []
    cpu = time.process_time()
    start = time.perf_counter()
    for i in range(n):
        began = time.perf_counter()
        answer = one(i)
        latencies.append(time.perf_counter() - began)
        if answer["value"] != i:
            raise RuntimeError(f"call {i} got {answer!r}")
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    print(json.dumps({"latencies": latencies, "elapsed": elapsed, "cpu": cpu}), flush=True)


def _read_line(proc: "subprocess.Popen[str]", timeout: float, what: str,
               prefix: str, err_file: Any) -> str:
    """The first line of ``proc``'s stdout that starts with ``prefix``, within ``timeout``.

    Other lines (a peer's own logging) are skipped, and the rest of the output
    is read and dropped until the process ends: a full pipe would block it.
    """
    box: List[str] = []
    found = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            if not box and line.startswith(prefix):
                box.append(line)
                found.set()
        found.set()  # the process ended (without the line, if box is empty)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    found.wait(timeout)
    if not box:
        proc.kill()
        proc.wait(5)
        err_file.seek(0)
        err = err_file.read()
        raise BenchError(f"{what} did not report within {timeout:.0f}s "
                         f"(exit {proc.poll()}):\n{err[-3000:]}")
    return box[0]


def _stop(proc: "subprocess.Popen[str]") -> None:
    try:
        if proc.stdin is not None:
            proc.stdin.close()
    except OSError:
        pass
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _delete_queue(url: str, queue: str) -> None:
    import kombu

    with kombu.Connection(url) as conn:
        conn.channel().queue_delete(queue=queue)


def run_peer(name: str, url: str, calls: int, warmup: int, python: str,
             timeout: float = 120.0) -> Dict[str, float]:
    """One repetition of a peer's sequential calls: its figures, as scenario 1's."""
    module = PEERS[name]
    target = f"bench_peer_{uuid.uuid4().hex[:12]}"
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    # stderr to files, not pipes: a peer's warnings can never fill a pipe and block it.
    with tempfile.TemporaryFile("w+") as service_err, tempfile.TemporaryFile("w+") as client_err:
        return _run_peer(name, module, target, url, calls, warmup, python, timeout,
                         dict(cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE),
                         service_err, client_err)


def _run_peer(name: str, module: str, target: str, url: str, calls: int, warmup: int,
              python: str, timeout: float, popen: Dict[str, Any], service_err: Any,
              client_err: Any) -> Dict[str, float]:
    service = subprocess.Popen([python, "-m", module, "serve", url, target],
                               stdin=subprocess.PIPE, stderr=service_err, **popen)
    try:
        _read_line(service, timeout, f"{name} service", "ready", service_err)
        client = subprocess.Popen([python, "-m", module, "call", url, target, str(calls),
                                   str(warmup)], stdin=subprocess.DEVNULL, stderr=client_err,
                                  **popen)
        try:
            result = json.loads(_read_line(client, timeout, f"{name} client", "{", client_err))
        finally:
            _stop(client)
    except BenchError as exc:
        _stop(service)
        service_err.seek(0)
        raise BenchError(f"{exc}\n{name} service's stderr:\n{service_err.read()[-2000:]}") \
            from None
    finally:
        _stop(service)
        _delete_queue(url, f"rpc-{target}" if name == "nameko" else target)
    latencies = result["latencies"]
    return {"calls_per_s": calls / result["elapsed"],
            "median_us": median(latencies) * 1e6,
            "p99_us": percentile(latencies, 99) * 1e6,
            "client_cpu_us": result["cpu"] / calls * 1e6,
            "unanswered": float(result.get("unanswered", 0))}


def make_venv(path: str = VENV) -> str:
    """Create ``path`` with the peers installed; return its python."""
    subprocess.run([sys.executable, "-m", "venv", path], check=True)
    python = os.path.join(path, "bin", "python")
    subprocess.run([python, "-m", "pip", "install", "-q", *REQUIREMENTS], check=True)
    return python


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m bench.peers --make-venv``: the peers in bench/.venv-peers."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.peers", description=main.__doc__)
    parser.add_argument("--make-venv", action="store_true",
                        help=f"create {os.path.relpath(VENV, ROOT)} with {REQUIREMENTS}")
    args = parser.parse_args(argv)
    if args.make_venv:
        print(make_venv())
    for name in PEERS:
        problem = available(default_python(), name)
        print(f"{name}: {'ok' if problem is None else problem} ({default_python()})")
    return 0

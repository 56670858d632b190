"""The soak service: a tavrida server in a process of its own that counts what it handles.

Run by the scenarios (``python -m soak.service --url ... --queue ... --status FILE``),
never by hand. The service ``soak`` has two handlers:

* ``work(seq)``: a cast; ``seq`` is its number in ``0 .. casts - 1``;
* ``ask(seq)``: a call, answered with ``{"seq": seq}``.

Every handler invocation is counted per ``seq`` in preallocated byte arrays
(so that counting does not grow memory while a backlog drains), next to the
deliveries the server took and how many of them the broker flagged
*redelivered*. A thread rewrites ``--status`` (JSON) every 0.2 s with the
counters and the process's resident memory; the final status, written after
``Server.run`` returned (SIGTERM or SIGINT), adds the per-``seq`` counts.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import signal
import sys
import threading
import time
import zlib
from typing import Any, Dict, List, Optional

from tavrida import config, discovery, dispatcher, idempotency, server, service

SERVICE = "soak"
CLIENT = "client"
#: Longest list of memory samples kept (one per 0.25 s: over 15 minutes).
MAX_SAMPLES = 4000


def memory_kb(pid: Optional[int] = None) -> Dict[str, int]:
    """Resident memory (``VmRSS``) and its peak (``VmHWM``) of a process, in KiB (Linux)."""
    path = f"/proc/{pid or 'self'}/status"
    result = {"rss_kb": 0, "hwm_kb": 0}
    try:
        with open(path) as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    result["rss_kb"] = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    result["hwm_kb"] = int(line.split()[1])
    except OSError:
        pass
    return result


def pack(counts: bytearray) -> str:
    return base64.b64encode(zlib.compress(bytes(counts))).decode("ascii")


def unpack(text: str) -> bytes:
    return zlib.decompress(base64.b64decode(text))


class Tally:
    """What the process saw; every counter under one lock (handlers may run in threads)."""

    def __init__(self, casts: int, calls: int) -> None:
        self.lock = threading.Lock()
        self.casts = bytearray(casts)
        self.calls = bytearray(calls)
        self.taken = 0            # deliveries the server took from the transport
        self.deliveries = 0       # deliveries that entered Server.handle
        self.redelivered = 0      # ... flagged redelivered by the broker
        self.settled = 0          # ... that left Server.handle
        self.started = 0          # handler invocations begun
        self.finished = 0         # handler invocations ended
        self.cast_distinct = 0
        self.call_distinct = 0
        self.out_of_range = 0
        self.stop_at: Optional[Dict[str, Any]] = None
        self.middleware: Optional[idempotency.IdempotencyMiddleware] = None

    def count(self, table: bytearray, seq: Any) -> None:
        with self.lock:
            self.started += 1
            if not isinstance(seq, int) or not 0 <= seq < len(table):
                self.out_of_range += 1
                return
            if table[seq] == 0:
                if table is self.casts:
                    self.cast_distinct += 1
                else:
                    self.call_distinct += 1
            if table[seq] < 255:
                table[seq] += 1

    def figures(self) -> Dict[str, Any]:
        with self.lock:
            return {
                "taken": self.taken, "deliveries": self.deliveries,
                "redelivered": self.redelivered, "settled": self.settled,
                "started": self.started, "finished": self.finished,
                "cast_distinct": self.cast_distinct, "call_distinct": self.call_distinct,
                "cast_invocations": sum(self.casts), "call_invocations": sum(self.calls),
                "out_of_range": self.out_of_range, "stop_at": self.stop_at,
                "skipped_duplicates": self.middleware.duplicates if self.middleware else 0,
            }


TALLY = Tally(0, 0)
OPTIONS: Dict[str, Any] = {"sleep": 0.0, "beat": False, "idempotent": False}


@dispatcher.rpc_service(SERVICE)
class Soak(service.ServiceController):
    """Counts every invocation; may sleep (a slow or long handler) and send heartbeats."""

    def __init__(self, postprocessor: Any) -> None:
        super().__init__(postprocessor)
        self.idempotency: Optional[idempotency.IdempotencyMiddleware] = None
        if OPTIONS["idempotent"]:
            self.idempotency = idempotency.IdempotencyMiddleware(max_entries=1_000_000)
            self.add_incoming_middleware(self.idempotency)
            TALLY.middleware = self.idempotency

    def _work(self) -> None:
        seconds = OPTIONS["sleep"]
        if seconds <= 0:
            return
        if not OPTIONS["beat"]:
            time.sleep(seconds)
            return
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(min(0.25, max(end - time.monotonic(), 0)))
            self.send_heartbeat()

    @dispatcher.rpc_method(service=SERVICE, method="work")
    def work(self, request: Any, proxy: Any, seq: int) -> None:
        TALLY.count(TALLY.casts, seq)
        try:
            self._work()
        finally:
            with TALLY.lock:
                TALLY.finished += 1

    @dispatcher.rpc_method(service=SERVICE, method="ask")
    def ask(self, request: Any, proxy: Any, seq: int) -> Dict[str, Any]:
        TALLY.count(TALLY.calls, seq)
        try:
            self._work()
        finally:
            with TALLY.lock:
                TALLY.finished += 1
        return {"seq": seq}


class CountingServer(server.Server):
    """A Server that counts deliveries, redeliveries and what it holds when asked to stop."""

    def _submit(self, delivery: Any) -> None:
        with TALLY.lock:
            TALLY.taken += 1
        super()._submit(delivery)

    def handle(self, delivery: Any) -> None:
        with TALLY.lock:
            if not self.workers:
                TALLY.taken += 1
            TALLY.deliveries += 1
            if delivery.redelivered:
                TALLY.redelivered += 1
        try:
            super().handle(delivery)
        finally:
            with TALLY.lock:
                TALLY.settled += 1

    def stop(self) -> None:
        with TALLY.lock:
            if TALLY.stop_at is None:
                # In hand: taken from the broker, not yet settled (running or queued for a worker).
                TALLY.stop_at = {"taken": TALLY.taken, "settled": TALLY.settled,
                                 "in_hand": TALLY.taken - TALLY.settled,
                                 "time": time.time()}
        super().stop()


class StatusWriter(threading.Thread):
    """Rewrites the status file every 0.2 s and keeps memory samples."""

    def __init__(self, path: str) -> None:
        super().__init__(daemon=True, name="soak-status")
        self.path = path
        self.state = "starting"
        self.error = ""
        self.samples: List[List[float]] = []
        self.started_at = time.monotonic()
        self._done = threading.Event()
        self._last_sample = 0.0

    def snapshot(self, final: bool = False) -> Dict[str, Any]:
        figures = TALLY.figures()
        memory = memory_kb()
        now = time.monotonic()
        if now - self._last_sample >= 0.25 and len(self.samples) < MAX_SAMPLES:
            self._last_sample = now
            self.samples.append([round(now - self.started_at, 3), figures["settled"],
                                 memory["rss_kb"]])
        status = {"pid": os.getpid(), "state": self.state, "error": self.error,
                  "elapsed": round(now - self.started_at, 3), **figures, **memory}
        if final:
            status["samples"] = self.samples
            status["casts"] = pack(TALLY.casts)
            status["calls"] = pack(TALLY.calls)
        return status

    def write(self, final: bool = False) -> None:
        tmp = f"{self.path}.tmp"
        with open(tmp, "w") as out:
            json.dump(self.snapshot(final), out)
        os.replace(tmp, self.path)

    def run(self) -> None:
        while not self._done.wait(0.2):
            self.write()

    def finish(self) -> None:
        self._done.set()
        self.join(2)
        self.write(final=True)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m soak.service")
    parser.add_argument("--url", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--exchange", required=True)
    parser.add_argument("--client-exchange", required=True)
    parser.add_argument("--status", required=True)
    parser.add_argument("--log", default="")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--casts", type=int, default=0)
    parser.add_argument("--calls", type=int, default=0)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--prefetch", type=int, default=100)
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds per handler")
    parser.add_argument("--beat", action="store_true", help="send_heartbeat() while sleeping")
    parser.add_argument("--heartbeat", type=float, default=0.0)
    parser.add_argument("--idempotent", action="store_true")
    parser.add_argument("--queue-type", default="classic", help="classic or quorum")
    parser.add_argument("--stop-timeout", type=float, default=None,
                        help="the server's grace period of a stop (default: the server's)")
    args = parser.parse_args(argv)

    logging.basicConfig(filename=args.log or None, level=args.log_level,
                        format="%(asctime)s %(process)d %(threadName)s %(name)s "
                               "%(levelname)s %(message)s")
    global TALLY
    TALLY = Tally(args.casts, args.calls)
    OPTIONS.update(sleep=args.sleep, beat=args.beat, idempotent=args.idempotent)
    disc = discovery.LocalDiscovery()
    disc.register_remote_service(SERVICE, args.exchange)
    disc.register_remote_service(CLIENT, args.client_exchange)
    Soak.set_discovery(disc)
    conf = config.ConnectionConfig.from_url(
        args.url, heartbeat_interval=args.heartbeat or None, prefetch_count=args.prefetch)
    extra: Dict[str, Any] = {}
    if args.stop_timeout is not None:
        extra["stop_timeout"] = args.stop_timeout
    srv = CountingServer(conf, args.queue, args.exchange, [Soak], workers=args.workers,
                         queue_type=args.queue_type, **extra)
    status = StatusWriter(args.status)
    status.write()
    status.start()
    # Until run() installs its own (the same), a SIGTERM must already stop gracefully.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: srv.stop())
    code = 0
    try:
        srv.start()
        status.state = "running"
        srv.run()
        status.state = "stopped"
    except Exception as exc:  # noqa: BLE001 - reported through the status file
        logging.getLogger("soak").exception("the soak service failed")
        status.state, status.error = "failed", f"{type(exc).__name__}: {exc}"
        code = 1
    finally:
        status.finish()
    return code


if __name__ == "__main__":
    sys.exit(main())

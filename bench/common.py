"""Shared helpers: spawned children linked by pipes, broker names, /proc, statistics.

Synchronisation is by messages on pipes only: a child reports ``ready``,
``done``, ``result`` or ``error``; the parent answers with ``stop``. Every
wait has a deadline, so a dead or stuck process fails the run instead of
hanging it.
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import os
import statistics
import threading
import time
import traceback
import uuid
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from bench import timeline  # (stdlib only at import: no cycle with this module)

#: Every process of a run is spawned (never forked): a child's RSS is its own.
CTX = multiprocessing.get_context("spawn")

if os.environ.get(timeline.ENVIRONMENT):  # python -m bench.timeline's children
    timeline.install()

#: Clock shared by all processes of the machine (CLOCK_MONOTONIC on Linux).
now = time.perf_counter

#: Service name of the RPC service (requests: ``bench_svc.echo``, ``bench_svc.sink``).
SERVICE = "bench_svc"
#: Service name (the client's ``source``) that answers go to.
CLIENT = "bench_client"
#: Entry point the notifications of the fan-out scenario come from.
PUBLISHER, EVENT = "bench_pub", "event"
#: Routing keys (tavrida's: ``service.method``), shared by the kombu baseline.
ECHO_KEY = f"{SERVICE}.echo"
SINK_KEY = f"{SERVICE}.sink"
EVENT_KEY = f"{PUBLISHER}.{EVENT}"
#: Binding keys of the service queue and of the subscriber queues.
SERVICE_BINDING = f"{SERVICE}.#"
EVENT_BINDING = f"{EVENT_KEY}.#"


#: Levers of issue 22, each tried on the ``--kombu-wire`` client and service alone
#: (``--kombu-lever``): same library, same message, one change to the broker legs.
KOMBU_LEVERS = {
    "two-connections": "the client publishes on a connection of its own and reads its "
                       "answers on another (as tavrida's transport does)",
    "direct-reply-to": "answers go to RabbitMQ's amq.rabbitmq.reply-to pseudo-queue, consumed "
                       "on the client's publishing channel (no reply queue, no routing)",
    "default-exchange-answer": "answers go through the default exchange to the reply queue "
                               "by its name (no topic routing)",
    "no-expiration": "calls carry no per-message TTL (expiration)",
}


class BenchError(RuntimeError):
    """A scenario could not run to the end (a child failed, died or timed out)."""


@dataclasses.dataclass(frozen=True)
class Setup:
    """What every scenario of a run shares."""

    url: str
    #: Publisher confirms on both sides (RabbitMQ only; ignored elsewhere).
    confirms: bool = True
    #: Un-acked messages a service holds, on both sides.
    prefetch: int = 100
    #: Untimed calls or casts before the timed ones (connections, reply queue).
    warmup: int = 20
    #: Longest wait for any one step (seconds).
    timeout: float = 120.0
    #: The kombu side of scenarios 1, 2 and 7 sends tavrida's wire message (bench.kombu_wire).
    kombu_wire: bool = False
    #: With ``kombu_wire``: structural levers tried on the kombu side alone (:data:`KOMBU_LEVERS`).
    kombu_levers: Tuple[str, ...] = ()
    #: Scenario 4's tavrida side also measures typed echo handlers against the untyped one.
    typed: bool = False

    @property
    def is_amqp(self) -> bool:
        return self.url.split(":", 1)[0].lower() in ("amqp", "amqps", "pyamqp")

    @property
    def effective_confirms(self) -> bool:
        """Whether publishes wait for confirms (only RabbitMQ has them)."""
        return self.confirms and self.is_amqp


@dataclasses.dataclass(frozen=True)
class Names:
    """Broker object names of one repetition, unique thanks to a uuid prefix."""

    prefix: str

    @classmethod
    def fresh(cls, tag: str) -> "Names":
        return cls(f"bench-{tag}-{uuid.uuid4().hex[:12]}")

    @property
    def exchange(self) -> str:
        """The service's exchange (requests)."""
        return f"{self.prefix}.svc"

    @property
    def queue(self) -> str:
        """The service's queue."""
        return f"{self.prefix}.svc.q"

    @property
    def reply_exchange(self) -> str:
        """Where tavrida services send answers for ``bench_client``."""
        return f"{self.prefix}.client"

    @property
    def events_exchange(self) -> str:
        """The publisher's notification exchange."""
        return f"{self.prefix}.events"

    def subscriber_queue(self, index: int) -> str:
        return f"{self.prefix}.sub{index}.q"

    def subscriber_exchange(self, index: int) -> str:
        """The (unused) RPC exchange of a subscriber server."""
        return f"{self.prefix}.sub{index}"

    def exchanges(self) -> List[str]:
        """Every exchange a repetition may declare."""
        return [self.exchange, self.reply_exchange, self.events_exchange,
                self.subscriber_exchange(0), self.subscriber_exchange(1)]

    def queues(self) -> List[str]:
        """Every durable queue a repetition may declare (dead-letter and retry delay queues too)."""
        # Imported here: the kombu baseline's processes import this module, not tavrida.
        from tavrida.retries import RetryPolicy
        from tavrida.transports.base import DelayQueue

        names = [self.queue, self.subscriber_queue(0), self.subscriber_queue(1)]
        delays = [DelayQueue(name, ms).name for name in names for ms in RetryPolicy().delays_ms()]
        return names + [f"{name}.dead" for name in names] + delays


# --- /proc ---------------------------------------------------------------------------------------

def proc_status(pid: Optional[int] = None) -> Dict[str, int]:
    """VmRSS and VmHWM (bytes) of a process, from /proc/<pid>/status; {} if gone."""
    path = f"/proc/{pid or 'self'}/status"
    result: Dict[str, int] = {}
    try:
        with open(path, encoding="ascii") as handle:
            for line in handle:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    result[key] = int(value.split()[0]) * 1024
    except OSError:
        return {}
    return result


def machine_info() -> Dict[str, Any]:
    """nproc, CPU model and RAM of this machine."""
    info: Dict[str, Any] = {"nproc": os.cpu_count(), "cpu": "unknown", "ram_gib": None}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    info["ram_gib"] = round(int(line.split()[1]) / 1024 ** 2, 1)
                    break
    except OSError:
        pass
    return info


# --- statistics ----------------------------------------------------------------------------------

def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (``pct`` in 0..100)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(math.ceil(pct / 100.0 * len(ordered)), 1)
    return float(ordered[rank - 1])


# --- counting handled messages -------------------------------------------------------------------

class Progress:
    """Counts handled messages of a service; reports once ``expected`` are done.

    Records the time of the first and last message, the process CPU time
    per message in between (all threads), and the service's RSS
    when 10 % and 100 % were handled (to tell whether memory stays flat).
    Both sides call :meth:`tick` once per acked message.
    """

    def __init__(self, expected: int, on_done: Callable[[Dict[str, Any]], None]) -> None:
        self.expected = expected
        self.count = 0
        self._mark = max(expected // 10, 1)
        self._on_done = on_done
        self._t_first = 0.0
        self._cpu_first = 0.0
        self._rss_mark = 0

    def tick(self) -> None:
        self.count += 1
        count = self.count
        if count == 1:
            self._t_first = now()
            self._cpu_first = time.process_time()
        if count == self._mark:
            self._rss_mark = proc_status().get("VmRSS", 0)
        if count == self.expected:
            t_last = now()
            cpu = time.process_time() - self._cpu_first
            status = proc_status()
            self._on_done({"t_first": self._t_first, "t_last": t_last, "count": count,
                           "cpu_per_msg": cpu / max(count - 1, 1),
                           "rss_mark": self._rss_mark, "rss_end": status.get("VmRSS", 0),
                           "hwm": status.get("VmHWM", 0)})


# --- child processes -----------------------------------------------------------------------------

class Link:
    """A child's end of its pipes: :meth:`send` results, :attr:`stop` when asked to end.

    A watcher thread sets :attr:`stop` when the parent says ``stop``, when
    the parent goes away, or when the child's lifetime is over.
    """

    def __init__(self, ctrl: Any, results: Any, lifetime: float) -> None:
        self._results = results
        self._send_lock = threading.Lock()
        self.stop = threading.Event()
        deadline = time.monotonic() + lifetime
        thread = threading.Thread(target=self._watch, args=(ctrl, deadline), daemon=True,
                                  name="bench-link")
        thread.start()

    def _watch(self, ctrl: Any, deadline: float) -> None:
        try:
            while time.monotonic() < deadline:
                if ctrl.poll(0.5):
                    ctrl.recv()  # "stop" (EOFError: the parent is gone)
                    break
        except (EOFError, OSError):
            pass
        self.stop.set()

    def send(self, kind: str, payload: Any = None) -> None:
        """Report to the parent (thread-safe)."""
        with self._send_lock:
            self._results.send((kind, payload))


def _child_main(target: Callable[..., None], args: Tuple[Any, ...], ctrl: Any, results: Any,
                lifetime: float) -> None:
    link = Link(ctrl, results, lifetime)
    try:
        target(link, *args)
    except BaseException:  # noqa: B036 - every failure goes back to the parent
        link.send("error", traceback.format_exc())
    finally:
        results.close()


class Child:
    """A spawned process running ``target(link, *args)``, with bounded waits."""

    def __init__(self, target: Callable[..., None], *args: Any, lifetime: float = 600.0,
                 name: str = "") -> None:
        self.name = name or getattr(target, "__qualname__", "child")
        ctrl_r, self._ctrl = CTX.Pipe(duplex=False)
        self._results, results_w = CTX.Pipe(duplex=False)
        self.process = CTX.Process(target=_child_main,
                                   args=(target, args, ctrl_r, results_w, lifetime),
                                   name=self.name, daemon=True)
        self.process.start()
        ctrl_r.close()
        results_w.close()

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def poll(self, timeout: float) -> bool:
        """True when a report is waiting (or the child is gone)."""
        return self._results.poll(timeout)

    def expect(self, kind: str, timeout: float) -> Any:
        """The payload of the next report, which must be ``kind``; raise BenchError otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if self._results.poll(max(min(remaining, 0.5), 0.0)):
                try:
                    got, payload = self._results.recv()
                except EOFError:
                    raise BenchError(f"{self.name} exited (code {self.process.exitcode}) "
                                     f"before reporting {kind!r}") from None
                if got == "error":
                    raise BenchError(f"{self.name} failed:\n{payload}")
                if got != kind:
                    raise BenchError(f"{self.name} reported {got!r}, expected {kind!r}")
                return payload
            if remaining <= 0:
                raise BenchError(f"{self.name} did not report {kind!r} within {timeout:.0f}s")

    def stop(self, timeout: float = 15.0) -> None:
        """Ask the child to end, wait for it, terminate it if it does not."""
        try:
            self._ctrl.send("stop")
        except (OSError, ValueError):
            pass
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5.0)
        self._ctrl.close()
        self._results.close()


# --- many threads calling at once ----------------------------------------------------------------

def threaded_calls(make_caller: Callable[[int], Callable[[int], Any]], threads: int, n: int,
                   timeout: float) -> Dict[str, Any]:
    """``n`` blocking calls shared by ``threads`` threads, all started together.

    ``make_caller(index)`` runs in thread ``index`` before the start (so a
    side can open that thread's connection there) and returns ``call(i)``,
    which must answer ``{"value": i}``. Reports every call's latency, the
    time from the start to the last answer and the process CPU in between.
    """
    per_thread = [n // threads + (1 if index < n % threads else 0) for index in range(threads)]
    start = threading.Barrier(threads + 1)
    latencies: List[List[float]] = [[] for _ in range(threads)]
    errors: List[str] = []

    def work(index: int) -> None:
        try:
            call = make_caller(index)
        except BaseException:  # noqa: B036 - reported to the caller below
            errors.append(traceback.format_exc())
            start.abort()
            return
        try:
            start.wait(timeout)
            first = sum(per_thread[:index])
            mine = latencies[index]
            for i in range(first, first + per_thread[index]):
                began = now()
                answer = call(i)
                mine.append(now() - began)
                if answer["value"] != i:
                    raise BenchError(f"call {i} got {answer!r}")
        except threading.BrokenBarrierError:
            pass
        except BaseException:  # noqa: B036 - reported to the caller below
            errors.append(traceback.format_exc())

    workers = [threading.Thread(target=work, args=(index,), daemon=True,
                                name=f"bench-caller-{index}") for index in range(threads)]
    for worker in workers:
        worker.start()
    try:
        start.wait(timeout)
    except threading.BrokenBarrierError:
        raise BenchError("a caller thread failed to start:\n" + "\n".join(errors)) from None
    cpu = time.process_time()
    began = now()
    deadline = time.monotonic() + timeout
    for worker in workers:
        worker.join(max(deadline - time.monotonic(), 0.0))
    elapsed = now() - began
    cpu = time.process_time() - cpu
    if errors:
        raise BenchError(f"{len(errors)} caller thread(s) failed:\n{errors[0]}")
    if any(worker.is_alive() for worker in workers):
        raise BenchError(f"the {threads} caller threads did not finish within {timeout:.0f}s")
    return {"latencies": [value for mine in latencies for value in mine], "elapsed": elapsed,
            "cpu": cpu}

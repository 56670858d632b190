"""One repetition of each scenario, for either side (``"tavrida"`` or ``"kombu"``).

Each function spawns the processes of its scenario, waits for their
reports (bounded by ``setup.timeout``), stops them, deletes what it
declared and returns its figures (a dict: figure key -> value).
"""

from __future__ import annotations

import dataclasses
import time
from types import ModuleType
from typing import Any, Callable, Dict, List, Tuple

import kombu

from bench.common import BenchError, Child, Names, Setup, median, percentile, proc_status

SIDES = ("tavrida", "kombu")
MIB = 1024.0 * 1024.0


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Work sizes of one repetition (the flags of ``python -m bench``)."""

    calls: int = 2000
    casts: int = 3000
    fanout: int = 2000
    memory_calls: int = 3000
    memory_casts: int = 20000
    backlog: int = 20000
    bulk: int = 3000
    bulk_batch: int = 500
    threads: int = 16
    threaded_calls: int = 4000
    aio_calls: int = 20000
    aio_concurrency: int = 100

    @classmethod
    def quick(cls) -> "Sizes":
        """Tiny sizes for smoke tests: every figure, no meaning."""
        return cls(calls=30, casts=60, fanout=60, memory_calls=50, memory_casts=200,
                   backlog=300, bulk=60, bulk_batch=20, threads=4, threaded_calls=40,
                   aio_calls=200, aio_concurrency=10)


def side_module(side: str) -> ModuleType:
    """The module that does a side's work (imported on demand)."""
    if side == "tavrida":
        from bench import tavrida_side
        return tavrida_side
    if side == "kombu":
        from bench import baseline_kombu
        return baseline_kombu
    raise ValueError(f"unknown side {side!r}")


def delete_names(url: str, names: Names) -> None:
    """Delete every queue and exchange a repetition may have declared."""
    with kombu.Connection(url) as conn:
        channel = conn.channel()
        for queue in names.queues():
            channel.queue_delete(queue=queue)
            if hasattr(channel, "get_table"):
                _delete_delays(channel, queue)
        for exchange in names.exchanges():
            if hasattr(channel, "get_table"):
                _unbind_virtual(channel, exchange)
            channel.exchange_delete(exchange=exchange)


def _delete_delays(channel: Any, queue: str) -> None:
    """The keys tavrida keeps beside a queue on Redis for its delays (kombu knows none)."""
    from tavrida.transports.kombu.compat.redis_delays import delays_key, held_key

    client = getattr(channel, "client", None)
    if client is not None:
        client.delete(delays_key(queue), held_key(queue))


def _unbind_virtual(channel: Any, exchange: str) -> None:
    """Remove the bindings a virtual transport (Redis) keeps for ``exchange``.

    Its own queue_delete only forgets the bindings this process declared;
    the children declared them, so the broker's binding table is read here.
    """
    try:
        table = channel.get_table(exchange)
    except KeyError:
        return
    for routing_key, pattern, queue in table:
        channel._delete(queue, exchange, routing_key, pattern)


class Cluster:
    """The children and broker names of one repetition; all gone when the block ends."""

    def __init__(self, setup: Setup, broker: bool = True) -> None:
        self.setup = setup
        self.broker = broker
        self.children: List[Child] = []
        self.all_names: List[Names] = []

    def names(self, tag: str) -> Names:
        names = Names.fresh(tag)
        self.all_names.append(names)
        return names

    def spawn(self, target: Callable[..., None], *args: Any, lifetime: float = 0.0) -> Child:
        child = Child(target, *args, lifetime=lifetime or self.setup.timeout * 3)
        self.children.append(child)
        return child

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for child in reversed(self.children):
            child.stop()
        if self.broker:
            for names in self.all_names:
                delete_names(self.setup.url, names)


def call(side: str, setup: Setup, sizes: Sizes) -> Dict[str, float]:
    """1: sequential blocking calls to a service process."""
    module = side_module(side)
    with Cluster(setup) as cluster:
        names = cluster.names("call")
        cluster.spawn(module.serve, setup, names, "rpc", 0).expect("ready", setup.timeout)
        result = cluster.spawn(module.call_client, setup, names, sizes.calls).expect(
            "result", setup.timeout)
    latencies = result["latencies"]
    return {"calls_per_s": sizes.calls / result["elapsed"],
            "median_us": median(latencies) * 1e6,
            "p99_us": percentile(latencies, 99) * 1e6,
            "client_cpu_us": result["cpu"] / sizes.calls * 1e6}


def cast(side: str, setup: Setup, sizes: Sizes) -> Dict[str, float]:
    """2: casts from a client process, first publish to last ack in the service process."""
    module = side_module(side)
    with Cluster(setup) as cluster:
        names = cluster.names("cast")
        service = cluster.spawn(module.serve, setup, names, "rpc", setup.warmup + sizes.casts)
        service.expect("ready", setup.timeout)
        sent = cluster.spawn(module.cast_client, setup, names, sizes.casts).expect(
            "result", setup.timeout)
        done = service.expect("done", setup.timeout)
    return {"msgs_per_s": sizes.casts / (done["t_last"] - sent["t_first"]),
            "cpu_us_per_msg": sent["cpu"] / sizes.casts * 1e6,
            "service_cpu_us": done["cpu_per_msg"] * 1e6}


def fanout(side: str, setup: Setup, sizes: Sizes) -> Dict[str, float]:
    """3: notifications delivered to two subscriber processes."""
    module = side_module(side)
    expected = setup.warmup + sizes.fanout
    with Cluster(setup) as cluster:
        names = cluster.names("fanout")
        subscribers = [cluster.spawn(module.serve, setup, names, f"sub{index}", expected)
                       for index in (0, 1)]
        for subscriber in subscribers:
            subscriber.expect("ready", setup.timeout)
        sent = cluster.spawn(module.publish_client, setup, names, sizes.fanout).expect(
            "result", setup.timeout)
        t_last = max(subscriber.expect("done", setup.timeout)["t_last"]
                     for subscriber in subscribers)
    return {"msgs_per_s": 2 * sizes.fanout / (t_last - sent["t_first"])}


def memory(side: str, setup: Setup, sizes: Sizes) -> Dict[str, float]:
    """4: calls and casts on the in-memory transport, in one process."""
    module = side_module(side)
    with Cluster(setup, broker=False) as cluster:
        return cluster.spawn(module.memory_run, setup, sizes.memory_calls,
                             sizes.memory_casts).expect("result", setup.timeout)


def rss(side: str, setup: Setup, sizes: Sizes) -> Dict[str, float]:
    """5: RSS of a service process draining a backlog of ``sizes.backlog`` casts."""
    from bench import tavrida_side

    module = side_module(side)
    with Cluster(setup) as cluster:
        names = cluster.names("rss")
        # The same bytes in both queues: tavrida casts, published in confirmed batches.
        cluster.spawn(tavrida_side.fill, setup, names, sizes.backlog).expect(
            "result", setup.timeout)
        service = cluster.spawn(module.serve, setup, names, "rpc", sizes.backlog)
        service.expect("ready", setup.timeout)
        peak = samples = 0
        deadline = time.monotonic() + setup.timeout
        while not service.poll(0.02):  # sample /proc every 20 ms while it drains
            peak = max(peak, proc_status(service.pid).get("VmHWM", 0))
            samples += 1
            if time.monotonic() > deadline:
                raise BenchError(f"{side} service did not drain {sizes.backlog} messages "
                                 f"within {setup.timeout:.0f}s")
        done = service.expect("done", setup.timeout)
    return {"peak_mib": max(peak, done["hwm"]) / MIB,
            "growth_mib": (done["rss_end"] - done["rss_mark"]) / MIB,
            "drain_msgs_per_s": sizes.backlog / (done["t_last"] - done["t_first"]),
            "rss_samples": float(samples)}


def bulk(side: str, setup: Setup, sizes: Sizes) -> Dict[str, float]:
    """6: confirmed persistent casts in bulk (tavrida pipelines, kombu one at a time)."""
    module = side_module(side)
    with Cluster(setup) as cluster:
        names = cluster.names("bulk")
        result = cluster.spawn(module.bulk_client, setup, names, sizes.bulk,
                               sizes.bulk_batch).expect("result", setup.timeout)
    return {"msgs_per_s": sizes.bulk / result["elapsed"]}


def threads(side: str, setup: Setup, sizes: Sizes) -> Dict[str, float]:
    """7: blocking calls from ``sizes.threads`` threads of one client process."""
    module = side_module(side)
    with Cluster(setup) as cluster:
        names = cluster.names("threads")
        cluster.spawn(module.serve, setup, names, "rpc", 0).expect("ready", setup.timeout)
        result = cluster.spawn(module.threaded_client, setup, names, sizes.threads,
                               sizes.threaded_calls).expect("result", setup.timeout * 2)
    return threaded_figures(result, sizes.threaded_calls)


def threaded_figures(result: Dict[str, Any], n: int) -> Dict[str, float]:
    """Scenario 7's figures from a ``threaded_run`` result."""
    latencies = result["latencies"]
    return {"calls_per_s": n / result["elapsed"],
            "median_us": median(latencies) * 1e6,
            "p99_us": percentile(latencies, 99) * 1e6,
            "client_cpu_us": result["cpu"] / n * 1e6}


def aio(side: str, setup: Setup, sizes: Sizes) -> Dict[str, float]:
    """8: one asyncio client, ``sizes.aio_concurrency`` calls in flight (see bench.aio_side)."""
    from bench import aio_side

    with Cluster(setup) as cluster:
        names = cluster.names("aio")
        deadline = aio_side.deadline(setup, sizes.aio_calls)
        cluster.spawn(aio_side.serve, side, setup, names, lifetime=deadline * 2).expect(
            "ready", setup.timeout)
        result = cluster.spawn(aio_side.call_client, side, setup, names, sizes.aio_calls,
                               sizes.aio_concurrency, lifetime=deadline * 2).expect(
            "result", deadline)
    return threaded_figures(result, sizes.aio_calls)


def sides_of(name: str) -> Tuple[Tuple[str, ...], Dict[str, str]]:
    """The sides scenario ``name`` runs here, and why the others cannot (side -> reason)."""
    if name != "aio":
        return SIDES, {}
    from bench import aio_side

    skipped = {side: aio_side.missing(side) for side in aio_side.AIO_SIDES}
    return (tuple(side for side, reason in skipped.items() if not reason),
            {side: reason for side, reason in skipped.items() if reason})


#: Scenario name -> function, in the order a run goes through them.
SCENARIOS: Dict[str, Callable[[str, Setup, Sizes], Dict[str, float]]] = {
    "call": call, "cast": cast, "fanout": fanout, "memory": memory, "rss": rss, "bulk": bulk,
    "threads": threads, "aio": aio,
}
#: Scenarios that need a broker (all but ``memory``).
BROKER_SCENARIOS = ("call", "cast", "fanout", "rss", "bulk", "threads", "aio")
#: Scenarios a run has only when named in ``--scenarios`` (each adds minutes).
OPT_IN = ("aio",)

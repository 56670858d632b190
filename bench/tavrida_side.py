"""tavrida's side of every scenario: the services, the clients, the in-process runs.

Each ``serve`` / ``*_client`` / ``memory_run`` function is the body of a
spawned child (see :class:`bench.common.Child`); :mod:`bench.baseline_kombu`
has the same functions doing the same work with raw kombu.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from typing import Any, Dict, Iterator, List, Optional

from bench.common import (
    CLIENT,
    EVENT,
    EVENT_KEY,
    PUBLISHER,
    SERVICE,
    SERVICE_BINDING,
    SINK_KEY,
    BenchError,
    Link,
    Names,
    Progress,
    Setup,
    median,
    now,
    percentile,
    threaded_calls,
)
from bench.profiling import maybe_profile
from tavrida import client, config, discovery, dispatcher, messages, server, service
from tavrida.transports.base import Binding, Delivery, Topology
from tavrida.transports.memory import MemoryBroker

#: Seconds a single blocking call may take before the run fails.
CALL_TIMEOUT = 10.0


@dataclasses.dataclass
class EchoItem:
    """The payload of the typed ``echo_item`` (``--typed``)."""

    id: int
    name: str
    tags: List[str]
    note: Optional[str] = None


@dispatcher.rpc_service(SERVICE)
class BenchService(service.ServiceController):
    """``echo`` answers the value back; ``sink`` takes a cast and does nothing.

    ``echo_int`` and ``echo_item`` are ``echo`` with typed parameters
    (checked and converted before they run; see ``--typed``).
    """

    @dispatcher.rpc_method(service=SERVICE, method="echo")
    def echo(self, request: Any, proxy: Any, value: Any) -> Dict[str, Any]:
        return {"value": value}

    @dispatcher.rpc_method(service=SERVICE, method="echo_int")
    def echo_int(self, request: Any, proxy: Any, value: int) -> Dict[str, Any]:
        return {"value": value}

    @dispatcher.rpc_method(service=SERVICE, method="echo_item")
    def echo_item(self, request: Any, proxy: Any, value: EchoItem) -> Dict[str, Any]:
        return {"value": value}

    @dispatcher.rpc_method(service=SERVICE, method="sink")
    def sink(self, request: Any, proxy: Any, value: Any) -> None:
        return None


@dispatcher.rpc_service("bench_subscriber")
class Subscriber(service.ServiceController):
    """Takes the notifications of ``bench_pub.event``."""

    @dispatcher.subscription_method(service=PUBLISHER, method=EVENT)
    def on_event(self, notification: Any, proxy: Any, value: Any) -> None:
        return None


class CountingServer(server.Server):
    """A :class:`~tavrida.server.Server` that ticks :attr:`progress` after each message.

    ``handle`` returns once the message was handled and acked, so the tick
    counts acked messages, as the kombu baseline does.
    """

    progress: Any = None

    def handle(self, delivery: Delivery) -> None:
        super().handle(delivery)
        if self.progress is not None:
            self.progress.tick()


def make_discovery(names: Names) -> discovery.LocalDiscovery:
    """Discovery shared by the service, the subscribers and the clients."""
    disc = discovery.LocalDiscovery()
    disc.register_remote_service(SERVICE, names.exchange)
    disc.register_remote_service(CLIENT, names.reply_exchange)
    disc.register_local_publisher(PUBLISHER, names.events_exchange)
    disc.register_remote_publisher(PUBLISHER, names.events_exchange)
    return disc


def make_config(setup: Setup, url: str = "", confirms: Any = None) -> config.ConnectionConfig:
    """Persistent messages; confirms as the run says unless ``confirms`` is given."""
    return config.ConnectionConfig.from_url(
        url or setup.url, persistent=True, prefetch_count=setup.prefetch,
        publisher_confirms=setup.confirms if confirms is None else confirms)


def service_topology(names: Names) -> Topology:
    """The service queue bound to its exchange (what the kombu baseline declares too)."""
    return Topology.build([names.exchange], [names.queue],
                          [Binding(names.queue, names.exchange, SERVICE_BINDING)])


def make_server(conf: config.ConnectionConfig, names: Names, role: str,
                prefetch: int) -> CountingServer:
    """``role`` "rpc": the bench service; "sub0" / "sub1": a subscriber."""
    disc = make_discovery(names)
    if role == "rpc":
        BenchService.set_discovery(disc)
        return CountingServer(conf, names.queue, names.exchange, [BenchService],
                              prefetch_count=prefetch)
    index = int(role[-1])
    Subscriber.set_discovery(disc)
    return CountingServer(conf, names.subscriber_queue(index), names.subscriber_exchange(index),
                          [Subscriber], prefetch_count=prefetch)


# --- child processes -----------------------------------------------------------------------------

def serve(link: Link, setup: Setup, names: Names, role: str, expected: int,
          profile_to: str = "") -> None:
    """A service process; reports ``ready``, then ``done`` after ``expected`` acks."""
    srv = make_server(make_config(setup), names, role, setup.prefetch)
    if expected:
        srv.progress = Progress(expected, lambda report: link.send("done", report))
    srv.start()
    link.send("ready", os.getpid())
    threading.Thread(target=lambda: (link.stop.wait(), srv.stop()), daemon=True).start()
    with maybe_profile(profile_to):
        srv.run()


def call_client(link: Link, setup: Setup, names: Names, n: int, profile_to: str = "") -> None:
    """``n`` sequential blocking calls; reports each one's latency."""
    with client.RPCClient(make_config(setup), make_discovery(names), source=CLIENT) as cli:
        for i in range(setup.warmup):
            cli.bench_svc.echo(value=i).call(timeout=CALL_TIMEOUT)
        latencies: List[float] = []
        with maybe_profile(profile_to):
            cpu = time.process_time()
            start = now()
            for i in range(n):
                began = now()
                answer = cli.bench_svc.echo(value=i).call(timeout=CALL_TIMEOUT)
                latencies.append(now() - began)
                if answer["value"] != i:
                    raise BenchError(f"call {i} got {answer!r}")
            elapsed = now() - start
            cpu = time.process_time() - cpu
    link.send("result", {"latencies": latencies, "elapsed": elapsed, "cpu": cpu})


def threaded_run(setup: Setup, names: Names, threads: int, n: int) -> Dict[str, Any]:
    """``n`` blocking calls from ``threads`` threads sharing one ``RPCClient``."""
    with client.RPCClient(make_config(setup), make_discovery(names), source=CLIENT) as cli:
        for i in range(setup.warmup):
            cli.bench_svc.echo(value=i).call(timeout=CALL_TIMEOUT)

        def make_caller(index: int) -> Any:
            return lambda i: cli.bench_svc.echo(value=i).call(timeout=CALL_TIMEOUT)

        return threaded_calls(make_caller, threads, n, setup.timeout)


def threaded_client(link: Link, setup: Setup, names: Names, threads: int, n: int) -> None:
    """Scenario 7's client process: one client, ``threads`` calling threads."""
    link.send("result", threaded_run(setup, names, threads, n))


def cast_client(link: Link, setup: Setup, names: Names, n: int, profile_to: str = "") -> None:
    """``setup.warmup`` then ``n`` timed casts; reports the first's time and the CPU used."""
    with client.RPCClient(make_config(setup), make_discovery(names), source=CLIENT) as cli:
        for i in range(setup.warmup):
            cli.bench_svc.sink(value=i).cast()
        with maybe_profile(profile_to):
            cpu = time.process_time()
            t_first = now()
            for i in range(n):
                cli.bench_svc.sink(value=i).cast()
            elapsed = now() - t_first
            cpu = time.process_time() - cpu
    link.send("result", {"t_first": t_first, "elapsed": elapsed, "cpu": cpu})


def publish_client(link: Link, setup: Setup, names: Names, n: int,
                   profile_to: str = "") -> None:
    """``setup.warmup`` then ``n`` timed notifications of ``bench_pub.event``."""
    with client.RPCClient(make_config(setup), make_discovery(names), source=EVENT_KEY) as cli:
        for i in range(setup.warmup):
            cli.publish(value=i)
        with maybe_profile(profile_to):
            t_first = now()
            for i in range(n):
                cli.publish(value=i)
            elapsed = now() - t_first
    link.send("result", {"t_first": t_first, "elapsed": elapsed})


def _requests(start: int, stop: int) -> Iterator[messages.Request]:
    headers = {"source": CLIENT, "destination": SINK_KEY}
    return (messages.Request(headers, None, {"value": i}) for i in range(start, stop))


def bulk_client(link: Link, setup: Setup, names: Names, n: int, batch: int,
                profile_to: str = "") -> None:
    """``n`` confirmed persistent casts through ``Sender.send_many``, ``batch`` at a time."""
    conf = make_config(setup, confirms=True)
    with client.RPCClient(conf, make_discovery(names), source=CLIENT) as cli:
        cli.transport.declare(service_topology(names))
        sender = cli.sender
        sender.send_many(_requests(0, setup.warmup))
        with maybe_profile(profile_to):
            start = now()
            for first in range(0, n, batch):
                sender.send_many(_requests(first, min(first + batch, n)))
            elapsed = now() - start
    link.send("result", {"elapsed": elapsed})


def fill(link: Link, setup: Setup, names: Names, n: int, batch: int = 1000) -> None:
    """Put ``n`` casts (tavrida's wire format) in the service queue, confirmed."""
    conf = make_config(setup, confirms=True)
    with client.RPCClient(conf, make_discovery(names), source=CLIENT) as cli:
        cli.transport.declare(service_topology(names))
        for first in range(0, n, batch):
            cli.sender.send_many(_requests(first, min(first + batch, n)))
    link.send("result", {"count": n})


# --- in-memory transport -------------------------------------------------------------------------

@contextlib.contextmanager
def running(srv: server.Server) -> Iterator[server.Server]:
    """``srv`` serving in a thread until the block ends."""
    srv.start()
    thread = threading.Thread(target=srv.run, daemon=True, name="bench-server")
    thread.start()
    try:
        yield srv
    finally:
        srv.stop()
        thread.join(10.0)


def memory_run(link: Link, setup: Setup, n_calls: int, n_casts: int,
               profile_to: str = "") -> None:
    """Blocking calls, then casts, through a Server thread on tavrida's ``memory://``."""
    names = Names.fresh("mem")
    conf = make_config(setup, url=f"memory://{names.prefix}")
    disc = make_discovery(names)
    figures: Dict[str, float] = {}
    with maybe_profile(profile_to):
        with running(make_server(conf, names, "rpc", setup.prefetch)), \
                client.RPCClient(conf, disc, source=CLIENT) as cli:
            for i in range(setup.warmup):
                cli.bench_svc.echo(value=i).call(timeout=CALL_TIMEOUT)
            latencies = []
            start = now()
            for i in range(n_calls):
                began = now()
                cli.bench_svc.echo(value=i).call(timeout=CALL_TIMEOUT)
                latencies.append(now() - began)
            figures["calls_per_s"] = n_calls / (now() - start)
        figures["median_us"] = median(latencies) * 1e6
        figures["p99_us"] = percentile(latencies, 99) * 1e6
        # The same calls with the opt-in in-thread path (MemoryBroker.inline_calls).
        broker = MemoryBroker.get(names.prefix)
        broker.inline_calls = True
        try:
            with running(make_server(conf, names, "rpc", setup.prefetch)), \
                    client.RPCClient(conf, disc, source=CLIENT) as cli:
                for i in range(setup.warmup):
                    cli.bench_svc.echo(value=i).call(timeout=CALL_TIMEOUT)
                start = now()
                for i in range(n_calls):
                    cli.bench_svc.echo(value=i).call(timeout=CALL_TIMEOUT)
                figures["inline_calls_per_s"] = n_calls / (now() - start)
        finally:
            broker.inline_calls = False

        done = threading.Event()
        report: Dict[str, Any] = {}
        srv = make_server(conf, names, "rpc", setup.prefetch)
        srv.progress = Progress(setup.warmup + n_casts,
                                lambda result: (report.update(result), done.set()))
        with running(srv), client.RPCClient(conf, disc, source=CLIENT) as cli:
            for i in range(setup.warmup):
                cli.bench_svc.sink(value=i).cast()
            t_first = now()
            for i in range(n_casts):
                cli.bench_svc.sink(value=i).cast()
            if not done.wait(setup.timeout):
                raise BenchError(f"memory casts: {srv.progress.count} of "
                                 f"{setup.warmup + n_casts} handled in {setup.timeout}s")
        figures["casts_per_s"] = n_casts / (report["t_last"] - t_first)
        if setup.typed:
            # In the calling thread (inline_calls): no thread hand-off to blur the difference.
            broker.inline_calls = True
            try:
                with running(make_server(conf, names, "rpc", setup.prefetch)), \
                        client.RPCClient(conf, disc, source=CLIENT) as cli:
                    figures.update(typed_figures(cli, setup.warmup, n_calls))
            finally:
                broker.inline_calls = False
            figures.update(arguments_figures(n_calls * 10))
    link.send("result", figures)


#: The echoes ``--typed`` compares: (figure name, handler, value); each typed one is
#: compared with the untyped ``echo`` of the same value.
ITEM = {"id": 7, "name": "seven", "tags": ["a", "b"], "note": None}
TYPED_ECHOES = (("untyped", "echo", 7), ("typed", "echo_int", 7),
                ("untyped_item", "echo", ITEM), ("record", "echo_item", ITEM))


def typed_figures(cli: Any, warmup: int, n_calls: int) -> Dict[str, float]:
    """Calls/s of the untyped and typed echoes, and the CPU cost per call of each typed one.

    One server, calls in the calling thread (``inline_calls``): the echoes
    take turns in blocks (the first of each round changes); calls/s is the
    median over the rounds, and a cost the difference of the median CPU time
    of this thread per call (other processes on the machine do not count).
    """
    echoes = [(name, getattr(cli.bench_svc, method), value)
              for name, method, value in TYPED_ECHOES]
    for _, echo, value in echoes:
        for _ in range(warmup):
            echo(value=value).call(timeout=CALL_TIMEOUT)
    rounds = 20
    per_block = max(1, n_calls // rounds)
    blocks: Dict[str, List[float]] = {name: [] for name, _, _ in echoes}
    cpu: Dict[str, List[float]] = {name: [] for name, _, _ in echoes}
    for index in range(rounds):
        shift = index % len(echoes)
        for name, echo, value in echoes[shift:] + echoes[:shift]:
            taken = cpu[name]
            start = now()
            for _ in range(per_block):
                began = time.thread_time()
                echo(value=value).call(timeout=CALL_TIMEOUT)
                taken.append(time.thread_time() - began)
            blocks[name].append(now() - start)
    return {"untyped_calls_per_s": per_block / median(blocks["untyped"]),
            "typed_calls_per_s": per_block / median(blocks["typed"]),
            "record_calls_per_s": per_block / median(blocks["record"]),
            "typed_cost_us": (median(cpu["typed"]) - median(cpu["untyped"])) * 1e6,
            "record_cost_us": (median(cpu["record"]) - median(cpu["untyped_item"])) * 1e6}


def arguments_figures(n: int) -> Dict[str, float]:
    """CPU microseconds of ``Handler.arguments`` (what a server runs per message) per echo."""
    handlers = {h.method_name: h for h in BenchService.get_dispatcher().handlers.values()}
    figures = {}
    for name, method, value in TYPED_ECHOES:
        if name == "untyped_item":
            continue
        arguments, payload = handlers[method].arguments, {"value": value}
        best = float("inf")
        for _ in range(7):  # the best of seven: the least disturbed
            start = time.thread_time()
            for _ in range(n):
                arguments(payload)
            best = min(best, time.thread_time() - start)
        figures[f"arguments_{name}_us"] = best / n * 1e6
    return figures

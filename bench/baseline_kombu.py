"""The raw kombu baseline: the same services and clients as :mod:`bench.tavrida_side`.

Idiomatic kombu: JSON bodies through kombu's serializer, persistent
messages (``delivery_mode=2``), ``confirm_publish`` as the run says, a
``Consumer`` with the same prefetch, manual acks on the service. Blocking
calls are the classic kombu RPC pattern: the client publishes with
``reply_to`` / ``correlation_id`` and drains its own exclusive reply queue;
the service answers through the default exchange. Nothing here imports
tavrida, so the RSS of :func:`serve` is that of a plain kombu consumer.

With ``Setup.kombu_wire`` (``--kombu-wire``), scenarios 1, 2 and 7 send
tavrida's wire message instead (:mod:`bench.kombu_wire`): same headers,
properties, envelope and answer routing as tavrida, through the same kombu
calls.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, Tuple

import kombu

from bench import kombu_wire
from bench.common import (
    CLIENT,
    ECHO_KEY,
    EVENT_KEY,
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

#: Seconds a single blocking call may take before the run fails.
CALL_TIMEOUT = 10.0
#: kombu's memory:// as the issue asks: no sleep between polls.
MEMORY_OPTIONS = {"polling_interval": 0}


def connect(setup: Setup, url: str = "", confirms: Optional[bool] = None,
            options: Optional[Dict[str, Any]] = None) -> kombu.Connection:
    """A connection with ``confirm_publish`` on RabbitMQ as the run says (or ``confirms``)."""
    transport_options = dict(options or {})
    if setup.is_amqp and not url:
        transport_options["confirm_publish"] = (setup.effective_confirms if confirms is None
                                                else confirms)
    conn = kombu.Connection(url or setup.url, transport_options=transport_options)
    conn.ensure_connection(max_retries=3)
    return conn


def topic(name: str) -> kombu.Exchange:
    """A durable topic exchange, declared as tavrida declares its exchanges."""
    return kombu.Exchange(name, "topic", durable=True, auto_delete=False)


def service_queue(names: Names) -> kombu.Queue:
    return kombu.Queue(names.queue, topic(names.exchange), routing_key=SERVICE_BINDING,
                       durable=True, auto_delete=False)


def subscriber_queue(names: Names, index: int) -> kombu.Queue:
    # The exact key: kombu's virtual topic exchanges need a word where RabbitMQ's '#' needs none.
    return kombu.Queue(names.subscriber_queue(index), topic(names.events_exchange),
                       routing_key=EVENT_KEY, durable=True, auto_delete=False)


def service_loop(conn: kombu.Connection, queue: kombu.Queue, setup: Setup,
                 progress: Optional[Progress], stopped: Callable[[], bool],
                 on_ready: Callable[[], None]) -> None:
    """Consume ``queue``: answer requests that have ``reply_to``, ack everything.

    Requests are answered after ``drain_events`` returns, not inside the
    callback: with ``confirm_publish`` a publish waits for its confirm, and a
    request delivered during that wait would otherwise publish (and wait) from
    a nested callback, where RabbitMQ's multiple-acks can leave one of the
    waits hanging; with several callers at once (scenario 7) it does.
    """
    channel = conn.channel()
    producer = kombu.Producer(channel)
    requests: List[Any] = []

    def done(message: Any) -> None:
        message.ack()
        if progress is not None:
            progress.tick()

    def on_message(body: Any, message: Any) -> None:
        if (message.headers if setup.kombu_wire else message.properties).get("reply_to"):
            requests.append((body, message))
        else:
            done(message)

    def answer(body: Any, message: Any) -> None:
        if setup.kombu_wire:
            reply, headers, exchange, key = kombu_wire.answer(
                body, message.headers, {"value": body["payload"]["value"]},
                message.properties.get("reply_to") or "")
            kombu_wire.publish(producer, reply, headers, exchange, key)
        else:
            properties = message.properties
            producer.publish({"value": body["value"]}, exchange="",
                             routing_key=properties["reply_to"],
                             correlation_id=properties.get("correlation_id"),
                             delivery_mode=2, serializer="json")
        done(message)

    consumer = kombu.Consumer(channel, [queue], callbacks=[on_message],
                              prefetch_count=setup.prefetch, accept=["json"])
    consumer.consume()
    on_ready()
    while not stopped():
        try:
            conn.drain_events(timeout=0.1)
        except socket.timeout:
            pass
        while requests:
            answer(*requests.pop(0))
    consumer.cancel()


class RPCClient:
    """The classic kombu RPC client: publish with ``reply_to``, drain the reply queue.

    ``wire``: tavrida's messages (:mod:`bench.kombu_wire`), answered through
    the client's topic exchange by its service name ``source``, as a tavrida
    client is (clients that run at once need names of their own: answers
    are routed by name). ``levers``: those of
    :data:`~bench.common.KOMBU_LEVERS` to apply (with ``wire`` only).
    """

    def __init__(self, conn: kombu.Connection, names: Names, exclusive: bool,
                 wire: bool = False, source: str = CLIENT, levers: Tuple[str, ...] = ()) -> None:
        self.conn = conn
        self.names = names
        self.wire = wire
        self.source = source
        self.levers = levers
        channel = conn.channel()
        name = f"{names.prefix}.reply.{uuid.uuid4().hex[:8]}"
        if wire:
            self.reply_queue = kombu.Queue(name, topic(names.reply_exchange), routing_key=source,
                                           exclusive=exclusive, auto_delete=True, durable=False)
        else:
            self.reply_queue = kombu.Queue(name, exclusive=exclusive, auto_delete=True,
                                           durable=False)
        self.answers: Dict[str, Any] = {}
        self.consumer = kombu.Consumer(channel, [self.reply_queue], on_message=self._on_reply,
                                       no_ack=True, accept=["json"])
        #: The connection the publishes go out on, and the one the answers come in on.
        self.publishing = self.answering = conn
        if "two-connections" in levers:
            self.publishing = kombu.Connection(conn.as_uri(include_password=True),
                                               transport_options=conn.transport_options)
            channel = self.publishing.channel()
        if "direct-reply-to" in levers:
            # Consumed on the publishing channel, as RabbitMQ requires; no reply queue.
            channel.basic_consume(kombu_wire.DIRECT_REPLY_TO, no_ack=True,
                                  callback=lambda raw: self._on_reply(
                                      channel.message_to_python(raw)))
            self.answering = self.publishing
        else:
            self.consumer.consume()
        # Declares the topic exchange (virtual transports route by the type they know).
        self.producer = kombu.Producer(channel, exchange=topic(names.exchange))

    def _on_reply(self, message: Any) -> None:
        if self.wire:
            self.answers[message.headers["correlation_id"]] = message.decode()["payload"]
        else:
            self.answers[message.properties["correlation_id"]] = message.decode()

    def call(self, value: Any) -> Any:
        if self.wire:
            body, headers, extra = kombu_wire.call(value, self.names.reply_exchange,
                                                   CALL_TIMEOUT, self.source)
            correlation_id = headers["correlation_id"]
            if "no-expiration" in self.levers:
                del extra["expiration"]
            if "default-exchange-answer" in self.levers:
                headers[kombu_wire.REPLY_QUEUE] = self.reply_queue.name
            if "direct-reply-to" in self.levers:
                extra["reply_to"] = kombu_wire.DIRECT_REPLY_TO
            kombu_wire.publish(self.producer, body, headers, self.names.exchange, ECHO_KEY,
                               **extra)
        else:
            correlation_id = uuid.uuid4().hex
            self.producer.publish({"value": value}, exchange=self.names.exchange,
                                  routing_key=ECHO_KEY, reply_to=self.reply_queue.name,
                                  correlation_id=correlation_id, delivery_mode=2,
                                  serializer="json")
        deadline = time.monotonic() + CALL_TIMEOUT
        while correlation_id not in self.answers:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError(f"no answer to call {value!r} in {CALL_TIMEOUT}s")
            try:
                self.answering.drain_events(timeout=remaining)
            except socket.timeout:
                pass
        return self.answers.pop(correlation_id)

    def close(self) -> None:
        if "direct-reply-to" not in self.levers:
            self.consumer.cancel()
        self.reply_queue(self.consumer.channel).delete()
        if self.publishing is not self.conn:
            self.publishing.release()


# --- child processes -----------------------------------------------------------------------------

def serve(link: Link, setup: Setup, names: Names, role: str, expected: int,
          profile_to: str = "") -> None:
    """A consumer process; reports ``ready``, then ``done`` after ``expected`` acks."""
    with connect(setup) as conn:
        queue = service_queue(names) if role == "rpc" else subscriber_queue(names, int(role[-1]))
        progress = Progress(expected, lambda report: link.send("done", report)) if expected \
            else None
        with maybe_profile(profile_to):
            service_loop(conn, queue, setup, progress, link.stop.is_set,
                         lambda: link.send("ready", os.getpid()))


def call_client(link: Link, setup: Setup, names: Names, n: int, profile_to: str = "") -> None:
    """``n`` sequential blocking calls; reports each one's latency."""
    with connect(setup) as conn:
        rpc = RPCClient(conn, names, exclusive=setup.is_amqp, wire=setup.kombu_wire,
                        levers=setup.kombu_levers)
        for i in range(setup.warmup):
            rpc.call(i)
        latencies: List[float] = []
        with maybe_profile(profile_to):
            cpu = time.process_time()
            start = now()
            for i in range(n):
                began = now()
                answer = rpc.call(i)
                latencies.append(now() - began)
                if answer["value"] != i:
                    raise BenchError(f"call {i} got {answer!r}")
            elapsed = now() - start
            cpu = time.process_time() - cpu
        rpc.close()
    link.send("result", {"latencies": latencies, "elapsed": elapsed, "cpu": cpu})


def threaded_run(setup: Setup, names: Names, threads: int, n: int) -> Dict[str, Any]:
    """``n`` blocking calls from ``threads`` threads, each with its own connection.

    A kombu connection (and its channels) must not be shared by threads, so
    the common kombu pattern is one connection and one reply queue per thread.
    """
    options = MEMORY_OPTIONS if setup.url.startswith("memory") else None
    opened: List[Any] = []
    lock = threading.Lock()

    def make_caller(index: int) -> Callable[[int], Any]:
        conn = connect(setup, options=options)
        rpc = RPCClient(conn, names, exclusive=setup.is_amqp, wire=setup.kombu_wire,
                        source=f"{CLIENT}{index:02d}", levers=setup.kombu_levers)
        with lock:
            opened.append((conn, rpc))
        for i in range(max(setup.warmup // threads, 1)):
            rpc.call(i)
        return rpc.call

    try:
        return threaded_calls(make_caller, threads, n, setup.timeout)
    finally:
        for conn, rpc in opened:
            rpc.close()
            conn.release()


def threaded_client(link: Link, setup: Setup, names: Names, threads: int, n: int) -> None:
    """Scenario 7's client process: ``threads`` threads, one connection each."""
    link.send("result", threaded_run(setup, names, threads, n))


def _publish_loop(conn: kombu.Connection, setup: Setup, n: int, exchange: str,
                  routing_key: str, wire: bool = False) -> Dict[str, float]:
    """``setup.warmup`` then ``n`` timed publishes; ``wire``: tavrida's casts."""
    producer = kombu.Producer(conn.channel(), exchange=topic(exchange))  # declares it

    def publish(i: int) -> None:
        if wire:
            body, headers, _ = kombu_wire.request(i, routing_key)
            kombu_wire.publish(producer, body, headers, exchange, routing_key)
        else:
            producer.publish({"value": i}, exchange=exchange, routing_key=routing_key,
                             delivery_mode=2, serializer="json")

    for i in range(setup.warmup):
        publish(i)
    cpu = time.process_time()
    t_first = now()
    for i in range(n):
        publish(i)
    elapsed = now() - t_first
    return {"t_first": t_first, "elapsed": elapsed, "cpu": time.process_time() - cpu}


def cast_client(link: Link, setup: Setup, names: Names, n: int, profile_to: str = "") -> None:
    """``setup.warmup`` then ``n`` timed publishes; reports the first's time and the CPU used."""
    with connect(setup) as conn, maybe_profile(profile_to):
        result = _publish_loop(conn, setup, n, names.exchange, SINK_KEY, setup.kombu_wire)
    link.send("result", result)


def publish_client(link: Link, setup: Setup, names: Names, n: int,
                   profile_to: str = "") -> None:
    """``setup.warmup`` then ``n`` timed notifications to the events exchange."""
    with connect(setup) as conn, maybe_profile(profile_to):
        result = _publish_loop(conn, setup, n, names.events_exchange, EVENT_KEY)
    link.send("result", result)


def bulk_client(link: Link, setup: Setup, names: Names, n: int, batch: int,
                profile_to: str = "") -> None:
    """``n`` persistent publishes, each waiting for its confirm (kombu's ``confirm_publish``)."""
    with connect(setup, confirms=True) as conn:
        service_queue(names)(conn.channel()).declare()
        with maybe_profile(profile_to):
            result = _publish_loop(conn, setup, n, names.exchange, SINK_KEY)
    link.send("result", {"elapsed": result["elapsed"]})


# --- kombu's memory:// ---------------------------------------------------------------------------

class _MemoryService:
    """A kombu consumer thread on ``memory://`` (kombu's memory broker is per process)."""

    def __init__(self, setup: Setup, names: Names, progress: Optional[Progress]) -> None:
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: List[BaseException] = []
        self._thread = threading.Thread(target=self._run, args=(setup, names, progress),
                                        daemon=True, name="bench-kombu-memory")

    def _run(self, setup: Setup, names: Names, progress: Optional[Progress]) -> None:
        try:
            with connect(setup, url="memory://", options=MEMORY_OPTIONS) as conn:
                service_loop(conn, service_queue(names), setup, progress, self._stop.is_set,
                             self._ready.set)
        except BaseException as exc:  # noqa: B036 - reported by __enter__/__exit__
            self._error.append(exc)
            self._ready.set()

    def __enter__(self) -> "_MemoryService":
        self._thread.start()
        if not self._ready.wait(30.0) or self._error:
            raise BenchError(f"kombu memory service did not start: {self._error}")
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._stop.set()
        self._thread.join(10.0)
        if self._error:
            raise BenchError(f"kombu memory service failed: {self._error[0]!r}")


def memory_run(link: Link, setup: Setup, n_calls: int, n_casts: int,
               profile_to: str = "") -> None:
    """Blocking calls, then casts, through a consumer thread on kombu's ``memory://``."""
    names = Names.fresh("kmem")
    figures: Dict[str, float] = {}
    with _MemoryService(setup, names, None), \
            connect(setup, url="memory://", options=MEMORY_OPTIONS) as conn:
        rpc = RPCClient(conn, names, exclusive=False)
        for i in range(setup.warmup):
            rpc.call(i)
        latencies = []
        start = now()
        for i in range(n_calls):
            began = now()
            rpc.call(i)
            latencies.append(now() - began)
        figures["calls_per_s"] = n_calls / (now() - start)
        # kombu has no in-thread path: tavrida's inline calls are compared with these calls.
        figures["inline_calls_per_s"] = figures["calls_per_s"]
        rpc.close()
    figures["median_us"] = median(latencies) * 1e6
    figures["p99_us"] = percentile(latencies, 99) * 1e6

    done = threading.Event()
    report: Dict[str, Any] = {}
    progress = Progress(setup.warmup + n_casts, lambda result: (report.update(result), done.set()))
    with _MemoryService(setup, names, progress), \
            connect(setup, url="memory://", options=MEMORY_OPTIONS) as conn:
        result = _publish_loop(conn, setup, n_casts, names.exchange, SINK_KEY)
        if not done.wait(setup.timeout):
            raise BenchError(f"kombu memory casts: {progress.count} of "
                             f"{setup.warmup + n_casts} handled in {setup.timeout}s")
    figures["casts_per_s"] = n_casts / (report["t_last"] - result["t_first"])
    link.send("result", figures)

"""Poison messages and abandoned calls, on RabbitMQ and on Redis.

* A handler that always asks for a retry (``NackableException``) used to run
  without end: 46,023 times in 10 s, never reaching ``<queue>.dead``. Now it
  runs ``max_attempts`` times, with a growing delay, and is dead-lettered
  with its reason and attempt count.
* A request whose blocking caller had given up was run when the service came
  back. Now RabbitMQ drops it by its ``expiration``, and on both brokers the
  server drops what is left by its ``x-tavrida-expires-at`` header.
* A retry waits for its delay on the broker (a delay queue on RabbitMQ, a
  sorted set on Redis), not in the server: with ``prefetch_count=1`` the
  next message runs meanwhile, and neither a stop nor a SIGKILL of the
  service loses it: a new instance runs it when it is due.

Servers run in threads of this process on the real brokers.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Dict, Iterator, List

import pytest

from tavrida import client, config, discovery, dispatcher, exceptions, server, service
from tavrida.transports.base import Binding, Topology
from tavrida.transports.kombu import KombuTransport

WAIT = 30.0
MAX_ATTEMPTS = 5


class Again(exceptions.BaseNackableException):
    message_template = "not yet"


@pytest.fixture(params=["amqp", "redis"])
def url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue(f"{request.param}_url")


class World:
    """Names, discovery and a service class of one test; servers it started are stopped."""

    def __init__(self, url: str, unique: Any) -> None:
        self.url = url
        self.unique = unique
        self.queue = unique("queue")
        self.exchange = unique("svc")
        self.client_exchange = unique("client")
        self.service = f"svc{id(self)}"
        self.runs: List[Any] = []
        self.fail_until = 10 ** 9  # runs before the handler stops raising
        self.disc = discovery.LocalDiscovery()
        self.disc.register_remote_service(self.service, self.exchange)
        self.disc.register_remote_service("client", self.client_exchange)
        world = self

        @dispatcher.rpc_service(self.service)
        class Svc(service.ServiceController):
            @dispatcher.rpc_method(service=self.service, method="do")
            def do(self, request, proxy, value):
                world.runs.append((value, request.headers.get("x-tavrida-attempts")))
                if len(world.runs) < world.fail_until:
                    raise Again()
                return {"value": value}

        Svc.set_discovery(self.disc)
        self.cls = Svc
        self.threads: List[threading.Thread] = []
        self.servers: List[server.Server] = []
        self.transports: List[KombuTransport] = []
        self._admin = self.transport()

    def transport(self) -> KombuTransport:
        transport = KombuTransport(config.ConnectionConfig.from_url(self.url, retry_delay=0.2))
        self.transports.append(transport)
        return transport

    def declare(self) -> None:
        """The service's queue and bindings, without a consumer."""
        self._admin.declare(Topology.build(
            [self.exchange, self.client_exchange], [self.queue, self.queue + ".dead"],
            [Binding(self.queue, self.exchange, f"{self.service}.#")]))

    def serve(self, **kwargs: Any) -> server.Server:
        srv = server.Server(self.url, self.queue, self.exchange, [self.cls], **kwargs)
        for delay in srv.topology().delays:
            self.unique.track(delay.name)  # deleted after the test
        srv.start()
        thread = threading.Thread(target=srv.run, daemon=True)
        thread.start()
        self.servers.append(srv)
        self.threads.append(thread)
        return srv

    def stop(self, srv: server.Server) -> float:
        """Stop ``srv`` and wait for its run() to return; seconds it took."""
        began = time.monotonic()
        srv.stop()
        thread = self.threads[self.servers.index(srv)]
        thread.join(WAIT)
        assert not thread.is_alive(), "run() did not return"
        return time.monotonic() - began

    def client(self) -> client.RPCClient:
        return client.RPCClient(self.url, self.disc, source="client")

    def size(self, queue: str) -> int:
        return self._admin.queue_size(queue) or 0

    def wait_for(self, condition, what: str, timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.05)

    def dead_letters(self) -> List[Dict[str, Any]]:
        """Headers of what is in the dead-letter queue (taken from it)."""
        got: List[Dict[str, Any]] = []
        transport = self.transport()
        transport.consume(self.queue + ".dead", lambda d: (got.append(dict(d.headers)),
                                                           d.ack()), 10)
        deadline = time.monotonic() + WAIT
        while not got and time.monotonic() < deadline:
            transport.drain(0.2)
        transport.drain(0.3)  # and nothing more
        return got

    def close(self) -> None:
        for srv in self.servers:
            if not srv._stopping.is_set():
                self.stop(srv)
        for transport in self.transports:
            transport.close()


@pytest.fixture
def world(url: str, unique: Any) -> Iterator[World]:
    made = World(url, unique)
    try:
        yield made
    finally:
        made.close()


def test_a_poison_message_runs_max_attempts_times_then_is_dead_lettered(world, caplog):
    caplog.set_level(logging.WARNING, logger="tavrida")
    began = time.monotonic()
    world.serve(max_attempts=MAX_ATTEMPTS, retry_backoff=0.05, workers=2)
    with world.client() as cli:
        getattr(cli, world.service).do(value=1).cast()
    world.wait_for(lambda: world.size(world.queue + ".dead") == 1, "the dead letter")
    took = time.monotonic() - began
    time.sleep(0.5)  # a spinning message would show more runs by now
    runs = len(world.runs)
    print(f"\npoison[{world.url.split(':')[0]}]: {runs} runs, then dead-lettered "
          f"after {took:.1f} s")
    assert [attempts for _, attempts in world.runs] == [None, 1, 2, 3, 4]
    assert world.size(world.queue) == 0
    (headers,) = world.dead_letters()
    assert headers["x-tavrida-attempts"] == MAX_ATTEMPTS
    assert "gave up after 5 attempts" in headers["x-tavrida-dead-reason"]
    assert headers["x-tavrida-original-exchange"] == world.exchange
    assert headers["x-tavrida-original-routing-key"] == f"{world.service}.do"
    lines = [r for r in caplog.records if r.name == "tavrida.server"
             and r.levelno >= logging.WARNING]
    assert len(lines) == MAX_ATTEMPTS  # one per run, never one per spin


def test_a_call_whose_caller_gave_up_is_never_run(world, caplog):
    caplog.set_level(logging.WARNING, logger="tavrida.server")
    world.fail_until = 0  # the handler answers
    world.declare()
    with world.client() as cli:
        proxy = getattr(cli, world.service)
        with pytest.raises(exceptions.CallTimeout):
            proxy.do(value="abandoned").call(timeout=1)  # no service is running
        if world.url.startswith("amqp"):
            # RabbitMQ drops it by itself: the request carries its expiration
            world.wait_for(lambda: world.size(world.queue) == 0, "RabbitMQ to expire it")
        else:
            assert world.size(world.queue) == 1  # Redis keeps it: the server must drop it
        world.serve()
        assert proxy.do(value="awaited").call(timeout=WAIT) == {"value": "awaited"}
    assert world.runs == [("awaited", None)]
    if world.url.startswith("redis"):
        assert any("caller gave up" in r.getMessage() for r in caplog.records)
    assert world.size(world.queue) == 0 and world.size(world.queue + ".dead") == 0


def test_a_stop_neither_waits_for_a_pending_retry_nor_loses_it(world):
    srv = world.serve(max_attempts=MAX_ATTEMPTS, retry_backoff=2)
    with world.client() as cli:
        getattr(cli, world.service).do(value=2).cast()
    world.wait_for(lambda: len(world.runs) == 1, "the first run")
    assert srv.pending_retries == 0  # the broker holds the wait, not the server
    assert world.stop(srv) < 10
    world.fail_until = 2
    world.serve(max_attempts=MAX_ATTEMPTS, retry_backoff=2)
    world.wait_for(lambda: len(world.runs) == 2, "the retry")
    world.wait_for(lambda: world.size(world.queue) == 0, "the ack")
    assert world.runs == [(2, None), (2, 1)]  # the retry, counted: not lost, not doubled
    assert world.size(world.queue + ".dead") == 0


def _runs(path) -> List[str]:
    return path.read_text().splitlines() if path.exists() else []


def _held(url: str, queue: str, delay_ms: int) -> int:
    """Messages the broker holds in ``queue``'s delay queue of ``delay_ms``."""
    if url.startswith("redis"):
        import redis

        conn = redis.Redis.from_url(url)
        try:
            return int(conn.zcard(f"{queue}.tavrida-delayed"))
        finally:
            conn.close()
    transport = KombuTransport(config.ConnectionConfig.from_url(url))
    try:
        return transport.queue_size(f"{queue}.retry.{delay_ms}") or 0
    finally:
        transport.close()


def test_a_retry_waits_on_the_broker_and_outlives_a_killed_service(url, unique, tmp_path):
    """prefetch_count=1, a 10 s backoff: the next message runs at once; SIGKILL loses nothing."""
    import svc_retry
    from svc_support import Proc, subprocess_env

    prefix = str(unique)
    names = {what: unique.track(name) for what, name in svc_retry.names(prefix).items()}
    for delay in ("retry.10000", "retry.20000"):
        unique.track(f"{names['queue']}.{delay}")
    runs = tmp_path / "runs"
    env = subprocess_env(TVT_URL=url, TVT_PREFIX=prefix, TVT_RUNS=str(runs), TVT_BACKOFF="10")
    procs = []

    def start(name: str) -> Proc:
        proc = Proc.python(["-m", "svc_retry"], tmp_path, name, env)
        procs.append(proc)
        proc.wait_for_output("started with services")
        return proc

    def wait_for(condition, what: str) -> None:
        deadline = time.monotonic() + WAIT
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {_runs(runs)}"
            time.sleep(0.05)

    try:
        first = start("first")
        disc = discovery.LocalDiscovery()
        disc.register_remote_service("tvt_retry", names["exchange"])
        with client.RPCClient(url, disc, source="client") as cli:
            cli.tvt_retry.do(value="retry-me").cast()
            cli.tvt_retry.do(value="next").cast()
        wait_for(lambda: "next None" in _runs(runs), "the next message")
        wait_for(lambda: _held(url, names["queue"], 10000) == 1, "the held retry")
        first.popen.kill()  # SIGKILL during the wait
        first.wait()
        assert _runs(runs) == ["retry-me None", "next None"]
        start("second")
        wait_for(lambda: len(_runs(runs)) == 3, "the retry, run by the new instance")
        assert _runs(runs) == ["retry-me None", "next None", "retry-me 1"]
        wait_for(lambda: _held(url, names["queue"], 10000) == 0, "the delay queue to empty")
    finally:
        for proc in procs:
            proc.stop()
            print(proc.describe())
    assert _held(url, names["queue"], 10000) == 0
    admin = KombuTransport(config.ConnectionConfig.from_url(url))
    try:
        assert admin.queue_size(names["queue"]) == 0
        assert (admin.queue_size(names["queue"] + ".dead") or 0) == 0
    finally:
        admin.close()


def test_poison_scenario_among_healthy_traffic(url, report):
    """``python -m soak --only poison`` at CI size: 20 poison, 20 flaky and 200 good casts."""
    from soak import poison

    report(poison.poison(url, poisoned=20, flaky=20, good=200))
